"""Tiny chat-VLM memorisation bench: the chat template, the answer-only labels, generation and cleaning fit together.

``utils.models.vlm.memorise`` fine-tunes a tiny chat VLM of one family (random weights, built locally: Qwen2-VL or
Idefics3) with the ``vlm`` backend's own ``fit`` on 16 rendered images, then answers them through the backend's
``predict`` and the cleaning step. It prints the misses, the times and ``N/16`` (exact matches); the target is >= 15.
``tests/test_memorise.py`` runs the Idefics3 one in the default suite.

    nice python bench/tiny_overfit_vlm.py [--family qwen2_vl|idefics3] [--steps 300]

Measured on 2 loaded CPU cores: Qwen2-VL 15/16 (300 steps, 185 s), Idefics3 16/16 (300 steps, 104 s).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")


def main(argv: list[str] | None = None) -> int:
    """Run the bench; exit status 0 when at least ``--target`` answers are right."""
    parser = argparse.ArgumentParser(description="tiny chat-VLM memorisation bench (prints N/16)")
    parser.add_argument("--family", default="qwen2_vl", choices=("qwen2_vl", "idefics3"))
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--target", type=int, default=15)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args(argv)

    import torch

    from utils.models.vlm.memorise import memorise

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    with tempfile.TemporaryDirectory(prefix="tiny_overfit_vlm_") as tmp:
        result = memorise(args.work or Path(tmp), args.family, rows=16, steps=args.steps, learning_rate=args.lr)
    print("\n".join(line for line in result.lines if line.startswith("MISS")))
    print(f"train {result.train_s:.0f} s, predict {result.predict_s:.1f} s")
    print(result.summary())
    return 0 if result.right >= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
