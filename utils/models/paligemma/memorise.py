"""The memorisation check: the one honest proof, without real weights, that the fine-tune learns and answers.

A tiny PaliGemma (random weights, built locally by ``utils.models.paligemma.tiny``) is fine-tuned with the project's
own ``train.fit`` (LoRA, answer-only loss, the one prompt, the default LoRA targets and learning-rate rules) on rendered
labels ("500 g", "12 V", "30 cm", ...), then answers them through the ``paligemma`` backend's ``predict`` (greedy
generation from the merged model, as stage 03 runs it) and every answer is cleaned by
``utils.core.units.normalize_prediction``. "The loss went down" does not prove this: a label off by one token, a mask
that hides the answer, a prompt that differs between training and inference, or an image the answer no longer sees
all still lower the loss but fail here.

``tests/test_memorise.py`` runs a short version in the default suite (CI); ``bench/tiny_overfit.py`` the longer one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: Narrower attention than the tiny model's default (4 heads of 16 instead of 2 of 32, a 32-wide vision tower):
#: memorises faster; the default's widths exist for bitsandbytes' CPU 4-bit kernels (quantization "4bit").
MEMORISE_DIMS = {"text_heads": 4, "text_head_dim": 16, "vision_hidden": 32, "vision_intermediate": 64}
#: What a random tiny model needs to memorise in a minute; every other setting is the product's default.
MEMORISE_SETTINGS = {"quantization": "none", "train_batch_size": 8, "grad_accum": 1, "learning_rate": 5e-3,
                     "lr_scheduler": "constant", "warmup_ratio": 0.0, "lora_r": 16, "lora_alpha": 32,
                     "gradient_checkpointing": False, "logging_steps": 100, "resume": False}


@dataclass
class Memorised:
    """What the check found: exact matches among the rows, one line per row, and the times."""

    right: int
    rows: int
    lines: list[str] = field(default_factory=list)
    train_s: float = 0.0
    predict_s: float = 0.0

    def summary(self) -> str:
        """``right/rows`` as the bench prints it."""
        return f"{self.right}/{self.rows}"


def memorise(work: str | Path, rows: int = 16, steps: int = 1200, image_size: int = 64, **settings: Any) -> Memorised:
    """Build the tiny model in ``work``, fine-tune it on the first ``rows`` rendered labels for ``steps`` optimizer
    steps, answer the same rows and count exact matches after cleaning. ``settings`` override ``MEMORISE_SETTINGS``
    (any setting of ``train.fit``); quantization "4bit" keeps the tiny model's default widths."""
    from utils.core.units import normalize_prediction
    from utils.models.paligemma.backend import PaliGemmaBackend
    from utils.models.paligemma.tiny import SYNTHETIC_ANSWERS, TinyConfig, build_tiny_paligemma, make_synthetic_set
    from utils.models.paligemma.train import fit

    work = Path(work)
    chosen = {**MEMORISE_SETTINGS, "max_steps": steps, "save_steps": steps, **settings}
    dims = {} if chosen["quantization"] == "4bit" else MEMORISE_DIMS
    start = time.perf_counter()
    model_dir = build_tiny_paligemma(work / "model", TinyConfig(image_size=image_size, patch_size=8, **dims))
    table = make_synthetic_set(work / "data", answers=SYNTHETIC_ANSWERS[:rows], size=96)
    image_dir = work / "data" / "images"
    adapter = fit(table, None, image_dir, work / "run", model_id=str(model_dir), **chosen)
    trained = time.perf_counter()
    answers: dict[int, str] = {}
    for batch in PaliGemmaBackend().predict(table, image_dir, adapter, batch_size=16):
        answers.update(batch)
    result = Memorised(right=0, rows=len(table), train_s=trained - start, predict_s=time.perf_counter() - trained)
    for index, entity, label in zip(table["index"], table["entity_name"], table["entity_value"]):
        pred = normalize_prediction(entity, answers[index])
        ok = pred != "" and pred == normalize_prediction(entity, label)
        result.right += ok
        result.lines.append(f"{'ok  ' if ok else 'MISS'} {entity:30s} raw={answers[index]!r:24s} -> {pred!r} "
                            f"(label {label!r})")
    return result
