"""Tiny-model overfit check: labels, masks, generation and cleaning fit together.

A tiny PaliGemma (random weights, built locally by ``utils.models.paligemma.tiny``) is fine-tuned with the project's own
``utils.models.paligemma.train.fit`` (LoRA, answer-only loss, the one prompt) on 16 rendered images ("500 g", "12 V", "30 cm", ...),
then answers them through the ``paligemma`` backend's ``predict`` (greedy generation) and every answer is cleaned by
``utils.core.units.normalize_prediction``. It prints ``N/16`` (exact matches against the labels); the target is >= 15.
"The loss went down" does not prove this: a label off by one token, a mask that hides the answer or a prompt that
differs between training and inference all still lower the loss but fail here.

    nice python bench/tiny_overfit.py [--steps 1500] [--quantization none|4bit] [--work DIR]

About a minute of training on 2 CPU cores (the limit is 15 minutes).
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


OVERFIT_DIMS = {"text_heads": 4, "text_head_dim": 16, "vision_hidden": 32, "vision_intermediate": 64}


def main(argv: list[str] | None = None) -> int:
    """Run the overfit check; exit status 0 when at least ``--target`` answers are right."""
    parser = argparse.ArgumentParser(description="tiny PaliGemma overfit check (prints N/16)")
    parser.add_argument("--steps", type=int, default=1200, help="optimizer steps")
    parser.add_argument("--lr", type=float, default=5e-3, help="learning rate (a random tiny model needs a high one)")
    parser.add_argument("--lora-r", type=int, default=16)
    parser.add_argument("--lora-alpha", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=64, help="tiny model's input resolution")
    parser.add_argument("--quantization", default="none", choices=("none", "4bit"))
    parser.add_argument("--target", type=int, default=15)
    parser.add_argument("--work", type=Path, default=None, help="work folder (default: a temporary one)")
    args = parser.parse_args(argv)

    import torch

    from utils.models.paligemma.backend import PaliGemmaBackend
    from utils.models.paligemma.tiny import TinyConfig, build_tiny_paligemma, make_synthetic_set
    from utils.models.paligemma.train import fit
    from utils.core.units import normalize_prediction

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory(prefix="tiny_overfit_") as tmp:
        work = args.work or Path(tmp)
        start = time.perf_counter()
        # Narrower attention than the test default (4 heads of 16 instead of 2 of 32, a 32-wide vision tower):
        # memorises faster; the default's widths exist for bitsandbytes' CPU 4-bit kernels (--quantization 4bit).
        dims = {} if args.quantization == "4bit" else OVERFIT_DIMS
        model_dir = build_tiny_paligemma(
            work / "model", TinyConfig(image_size=args.image_size, patch_size=8, **dims)
        )
        rows = make_synthetic_set(work / "data", size=96)
        image_dir = work / "data" / "images"
        adapter = fit(
            rows,
            None,
            image_dir,
            work / "run",
            model_id=str(model_dir),
            quantization=args.quantization,
            max_steps=args.steps,
            train_batch_size=8,
            grad_accum=1,
            learning_rate=args.lr,
            lr_scheduler="constant",
            warmup_ratio=0.0,
            lora_r=args.lora_r,
            lora_alpha=args.lora_alpha,
            gradient_checkpointing=False,
            logging_steps=100,
            save_steps=args.steps,
            resume=False,
        )
        trained = time.perf_counter()
        answers: dict[int, str] = {}
        for batch in PaliGemmaBackend().predict(rows, image_dir, adapter, batch_size=16):
            answers.update(batch)
        right = 0
        for index, entity, label in zip(rows["index"], rows["entity_name"], rows["entity_value"]):
            pred = normalize_prediction(entity, answers[index])
            ok = pred != "" and pred == normalize_prediction(entity, label)
            right += ok
            print(f"{'ok  ' if ok else 'MISS'} {entity:30s} raw={answers[index]!r:24s} -> {pred!r} (label {label!r})")
        done = time.perf_counter()
        print(f"train {trained - start:.0f} s, predict {done - trained:.1f} s")
        print(f"{right}/{len(rows)}")
    return 0 if right >= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
