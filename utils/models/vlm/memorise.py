"""The memorisation check for the vlm backend (``utils.models.finetune.memorise``): a tiny random chat VLM of one
family (Qwen2-VL or Idefics3, built locally by ``utils.models.vlm.tiny``) fine-tuned with the backend's own ``fit``
(LoRA, loss on the assistant's answer only, the one prompt in the model's chat template) memorises rendered labels
and answers them through the backend's ``predict`` and the cleaning step.

``tests/test_memorise.py`` runs it in the default suite (CI); ``bench/tiny_overfit_vlm.py`` per family.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from utils.models.finetune.memorise import Memorised
from utils.models.finetune.memorise import memorise as check

#: What a random tiny model needs to memorise in a minute or two; every other setting is the backend's default.
MEMORISE_SETTINGS = {"train_batch_size": 8, "grad_accum": 1, "learning_rate": 5e-3, "lr_scheduler": "constant",
                     "warmup_ratio": 0.0, "lora_dropout": 0.0, "gradient_checkpointing": False, "logging_steps": 50,
                     "resume": False, "min_pixels": 56 * 56, "max_pixels": 64 * 64, "time_budget_hours": 0}


def memorise(work: str | Path, family: str = "idefics3", rows: int = 16, steps: int = 300,
             **settings: Any) -> Memorised:
    """Build the tiny ``family`` model in ``work``, fine-tune it on the first ``rows`` rendered labels for ``steps``
    optimizer steps, answer the same rows and count exact matches after cleaning. ``settings`` override
    ``MEMORISE_SETTINGS`` (any fit setting of the vlm backend)."""
    from utils.models.vlm.backend import VlmBackend
    from utils.models.vlm.tiny import build_tiny_vlm

    work = Path(work)
    model_dir = build_tiny_vlm(work / "model", family)
    chosen = {**MEMORISE_SETTINGS, "max_steps": steps, "save_steps": steps, **settings}
    return check(VlmBackend(), model_dir, work, rows=rows, **chosen)
