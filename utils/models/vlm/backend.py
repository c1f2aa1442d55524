"""The ``vlm`` backend of ``utils.models.backend``: any chat VLM through transformers' image-text-to-text interface;
``fit`` fine-tunes with LoRA (or, with ``num_train_epochs=0``, records the base model for zero-shot answers),
``predict`` answers in batches with the merged model."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

from utils.models.settings import split
from utils.models.vlm.infer import (
    DEFAULT_MAX_NEW_TOKENS,
    GenerationStats,
    VlmInferConfig,
    load_predictor,
    predict_batches,
    saved_max_new_tokens,
)
from utils.models.vlm.load import VlmModelConfig
from utils.models.vlm.train import VlmTrainConfig, fit

log = logging.getLogger(__name__)


class VlmBackend:
    """A chat VLM (Qwen2-VL family, SmolVLM/Idefics3, ...) fine-tuned with LoRA, answering through its chat template."""

    name = "vlm"
    uses_gpu = True  # run_all.sh gives each shard its own GPU
    fit_settings = (VlmModelConfig, VlmTrainConfig, VlmInferConfig)  # VlmInferConfig: the final F1's generation
    infer_settings = (VlmModelConfig, VlmInferConfig)
    speed_settings = frozenset({"batch_size", "progress"})

    def __init__(self) -> None:
        self._loaded: tuple[Any, Any, Any] | None = None  # (key, model, processor): one load per process
        self.stats = GenerationStats()

    def fit(self, train: pd.DataFrame, val: pd.DataFrame, image_dir: Path, out_dir: Path, **settings: Any) -> Path:
        """Fine-tune and return the artifact folder (see ``utils.models.vlm.train.fit``)."""
        return fit(train, val, image_dir, out_dir, **settings)

    def predict(self, rows: pd.DataFrame, image_dir: Path, artifact_dir: Path, **settings: Any
                ) -> Iterator[list[tuple[int, str]]]:
        """Yield ``(index, raw answer)`` per batch; ``settings`` are VlmModelConfig and VlmInferConfig names."""
        model_kw, infer_kw = split(settings, VlmModelConfig, VlmInferConfig)
        cfg = VlmInferConfig(**infer_kw)
        if not cfg.max_new_tokens:
            cfg.max_new_tokens = saved_max_new_tokens(artifact_dir) or DEFAULT_MAX_NEW_TOKENS
        key = (str(Path(artifact_dir).resolve()), cfg.merge_adapter, cfg.infer_quantization,
               tuple(sorted((k, repr(v)) for k, v in model_kw.items())))
        fresh = self._loaded is None or self._loaded[0] != key
        if fresh:
            self._loaded = None
            model, processor = load_predictor(artifact_dir, cfg, **model_kw)
            self._loaded = (key, model, processor)
        _, model, processor = self._loaded
        yield from predict_batches(model, processor, rows, image_dir, cfg, self.stats, check_finite=fresh)
        note = self.stats.note()
        if note:
            log.warning(note)
            print(f"warning: {note}")
