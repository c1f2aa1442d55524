"""Tiny chat-VLM overfit check: the chat template, the answer-only labels, generation and cleaning fit together.

A tiny chat VLM of one family (random weights, built locally by ``utils.models.vlm.tiny``: Qwen2-VL or Idefics3) is
fine-tuned with the ``vlm`` backend's own ``fit`` (LoRA, loss on the assistant's answer only, the one prompt in the
model's chat template) on 16 rendered images, then answers them through the backend's ``predict`` and every answer
is cleaned by ``utils.core.units.normalize_prediction``. It prints ``N/16`` (exact matches); the target is >= 15.

    nice python bench/tiny_overfit_vlm.py [--family qwen2_vl|idefics3] [--steps 300]

Measured on 2 loaded CPU cores: Qwen2-VL 15/16 (300 steps, 185 s), Idefics3 16/16 (300 steps, 104 s).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="tiny chat-VLM overfit check (prints N/16)")
    parser.add_argument("--family", default="qwen2_vl", choices=("qwen2_vl", "idefics3"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--target", type=int, default=15)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    from utils.core.units import normalize_prediction
    from utils.models.paligemma.tiny import make_synthetic_set
    from utils.models.vlm.backend import VlmBackend
    from utils.models.vlm.tiny import build_tiny_vlm

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory(prefix="tiny_overfit_vlm_") as tmp:
        work = args.work or Path(tmp)
        start = time.perf_counter()
        model_dir = build_tiny_vlm(work / "model", args.family)
        rows = make_synthetic_set(work / "data", size=96)
        image_dir = work / "data" / "images"
        adapter = VlmBackend().fit(
            rows, None, image_dir, work / "run", model_id=str(model_dir), max_steps=args.steps, train_batch_size=8,
            grad_accum=1, learning_rate=args.lr, lr_scheduler="constant", warmup_ratio=0.0, lora_dropout=0.0,
            gradient_checkpointing=False, logging_steps=50, save_steps=args.steps, resume=False,
            min_pixels=56 * 56, max_pixels=64 * 64, time_budget_hours=0)
        trained = time.perf_counter()
        answers: dict[int, str] = {}
        for batch in VlmBackend().predict(rows, image_dir, adapter, batch_size=16):
            answers.update(batch)
        right = 0
        for index, entity, label in zip(rows["index"], rows["entity_name"], rows["entity_value"]):
            pred = normalize_prediction(entity, answers[index])
            ok = pred != "" and pred == normalize_prediction(entity, label)
            right += ok
            print(f"{'ok  ' if ok else 'MISS'} {entity:30s} raw={answers[index]!r:24s} -> {pred!r} (label {label!r})")
        print(f"train {trained - start:.0f} s, predict {time.perf_counter() - trained:.1f} s")
        print(f"{right}/{len(rows)}")
    return 0 if right >= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
