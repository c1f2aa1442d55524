"""The ``paligemma`` backend of ``utils.models.backend``: ``fit`` fine-tunes (``train``), ``predict`` generates
(``infer``). Kept apart from both so that neither imports the other's caller."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from utils.models.paligemma.infer import (
    DEFAULT_MAX_NEW_TOKENS,
    GenerationStats,
    InferConfig,
    load_predictor,
    predict_batches,
    saved_max_new_tokens,
)
from utils.models.paligemma.load import ModelConfig
from utils.models.paligemma.train import TrainConfig, fit
from utils.models.settings import split

log = logging.getLogger(__name__)


class PaliGemmaBackend:
    """The ``paligemma`` backend of ``utils.models.backend``: LoRA fine-tuning and batched generation."""

    name = "paligemma"
    uses_gpu = True  # run_all.sh gives each shard its own GPU
    fit_settings = (ModelConfig, TrainConfig, InferConfig)  # InferConfig: the final merged-model F1's generation
    infer_settings = (ModelConfig, InferConfig)
    speed_settings = frozenset({"batch_size", "progress"})  # how fast, not which answers

    def __init__(self) -> None:
        self._loaded: tuple[Any, Any, Any, ModelConfig] | None = None  # (key, model, processor, config): one load
        self.stats = GenerationStats()

    def fit(self, train: pd.DataFrame, val: pd.DataFrame, image_dir: Path, out_dir: Path, **settings: Any) -> Path:
        """Fine-tune and return the adapter folder (see ``utils.models.paligemma.train.fit``)."""
        return fit(train, val, image_dir, out_dir, **settings)

    def predict(self, rows: pd.DataFrame, image_dir: Path, artifact_dir: Path, **settings: Any
                ) -> Iterator[list[tuple[int, str]]]:
        """Yield ``(index, raw answer)`` per batch; ``settings`` are ModelConfig and InferConfig field names.

        ``max_new_tokens`` 0 (the default) takes the answer length saved with the adapter. The first batch after a
        load is checked for NaN/inf logits (``NonFiniteError`` names the remedies); at the end a warning says how
        many generations hit ``max_new_tokens`` (``self.stats``)."""
        model_kw, infer_kw = split(settings, ModelConfig, InferConfig)
        cfg = InferConfig(**infer_kw)
        if not cfg.max_new_tokens:
            cfg.max_new_tokens = saved_max_new_tokens(artifact_dir) or DEFAULT_MAX_NEW_TOKENS
        key = (str(Path(artifact_dir).resolve()), cfg.merge_adapter, cfg.infer_quantization,
               tuple(sorted((k, repr(v)) for k, v in model_kw.items())))
        fresh = self._loaded is None or self._loaded[0] != key
        if fresh:
            self._loaded = None  # free the previous model before loading another
            self._loaded = (key, *load_predictor(artifact_dir, cfg, **model_kw))
        _, model, processor, model_cfg = self._loaded
        yield from predict_batches(model, processor, rows, image_dir, cfg, self.stats, check_finite=fresh,
                                   prompt_format=model_cfg.prompt_format)
        note = self.stats.note()
        if note:
            log.warning(note)
            print(f"warning: {note}")
