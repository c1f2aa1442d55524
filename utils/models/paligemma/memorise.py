"""The memorisation check for PaliGemma (``utils.models.finetune.memorise``): a tiny random PaliGemma fine-tuned with
the project's own ``train.fit`` (LoRA, answer-only loss, the one prompt, the default LoRA targets and learning-rate
rules) memorises rendered labels and answers them through the ``paligemma`` backend's ``predict`` and the cleaning.

``tests/test_memorise.py`` runs a short version in the default suite (CI); ``bench/tiny_overfit.py`` the longer one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from utils.models.finetune.memorise import Memorised
from utils.models.finetune.memorise import memorise as check

#: Narrower attention than the tiny model's default (4 heads of 16 instead of 2 of 32, a 32-wide vision tower):
#: memorises faster; the default's widths exist for bitsandbytes' CPU 4-bit kernels (quantization "4bit").
MEMORISE_DIMS = {"text_heads": 4, "text_head_dim": 16, "vision_hidden": 32, "vision_intermediate": 64}
#: What a random tiny model needs to memorise in a minute; every other setting is the product's default.
MEMORISE_SETTINGS = {"quantization": "none", "train_batch_size": 8, "grad_accum": 1, "learning_rate": 5e-3,
                     "lr_scheduler": "constant", "warmup_ratio": 0.0, "lora_r": 16, "lora_alpha": 32,
                     "gradient_checkpointing": False, "logging_steps": 100, "resume": False}


def memorise(work: str | Path, rows: int = 16, steps: int = 1200, image_size: int = 64, **settings: Any) -> Memorised:
    """Build the tiny PaliGemma in ``work``, fine-tune it on the first ``rows`` rendered labels for ``steps`` optimizer
    steps, answer the same rows and count exact matches after cleaning (``utils.models.finetune.memorise``).
    ``settings`` override ``MEMORISE_SETTINGS`` (any setting of ``train.fit``); quantization "4bit" keeps the tiny
    model's default widths."""
    from utils.models.paligemma.backend import PaliGemmaBackend
    from utils.models.paligemma.tiny import TinyConfig, build_tiny_paligemma

    work = Path(work)
    chosen = {**MEMORISE_SETTINGS, "max_steps": steps, "save_steps": steps, **settings}
    dims = {} if chosen["quantization"] == "4bit" else MEMORISE_DIMS
    model_dir = build_tiny_paligemma(work / "model", TinyConfig(image_size=image_size, patch_size=8, **dims))
    return check(PaliGemmaBackend(), model_dir, work, rows=rows, **chosen)
