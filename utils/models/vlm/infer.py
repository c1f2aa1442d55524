"""Chat VLM answers: batched greedy generation (left padding, stop at the turn's end), cut answers counted, OOM
halving the batch, the merged model loaded from an adapter folder (or the base model zero-shot)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from utils.models.finetune.device import describe_device, float_dtype, free_memory, is_oom
from utils.models.finetune.generation import (  # noqa: F401  (re-exported for the backend, train and tests)
    FP16_REMEDY,
    GENERATION_FILE,
    MAX_NEW_TOKENS_LIMIT,
    GenerationStats,
    NonFiniteError,
    saved_max_new_tokens,
)
from utils.models.vlm.data import encode_prompts, stop_token_ids
from utils.models.vlm.load import (
    QUANTIZATIONS,
    VlmModelConfig,
    is_adapter_dir,
    load_for_inference,
    load_processor,
    read_settings,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 24  # zero-shot chat models write a little more than the label ("The width is ...")


@dataclass
class VlmInferConfig:
    """Generation settings. Field names are ``**settings`` of the vlm backend's predict (with VlmModelConfig's)."""

    batch_size: int = field(default=8, metadata={"help": "Rows per generate() call; halved on GPU OOM."})
    max_new_tokens: int = field(default=0, metadata={
        "help": "Answer length cap in tokens; 0 = the length saved by the fit (the longest training answer + a "
                f"margin), else {DEFAULT_MAX_NEW_TOKENS}. Generations that hit it are counted and reported."})
    merge_adapter: bool = field(default=True, metadata={
        "help": "Merge LoRA into fp16 weights (fp32 on CPU) for answering: faster than a separate adapter."})
    infer_quantization: str = field(default="none", metadata={
        "help": "Base weights when not merging (or zero-shot): 'none', '4bit' or '8bit'."})
    max_side: int | None = field(default=1280, metadata={"help": "Downscale images to this longest side on load."})
    progress: bool = field(default=False, metadata={"help": "Own progress bar; the pipeline has one."})

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise ValueError(f"max_new_tokens must be in [0, {MAX_NEW_TOKENS_LIMIT}], got {self.max_new_tokens}")
        if self.infer_quantization not in QUANTIZATIONS:
            raise ValueError(f"infer_quantization must be one of {QUANTIZATIONS}, got {self.infer_quantization!r}")


@torch.inference_mode()
def generate(model: Any, processor: Any, images: list[Any], prompts: list[str], max_new_tokens: int,
             check_finite: bool = False) -> tuple[list[str], list[bool]]:
    """Greedy answers (decoded, stripped, not cleaned) for one batch, and per row whether it was cut."""
    if not images:
        return [], []
    batch = encode_prompts(processor, images, prompts)
    device = model.device if isinstance(getattr(model, "device", None), torch.device) else \
        next(model.parameters()).device
    inputs = {k: v.to(device) for k, v in batch.items() if torch.is_tensor(v)}
    if "pixel_values" in inputs:
        inputs["pixel_values"] = inputs["pixel_values"].to(float_dtype(model))
    stops = stop_token_ids(processor)
    out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1, use_cache=True,
                         eos_token_id=stops, pad_token_id=processor.tokenizer.pad_token_id,
                         return_dict_in_generate=True, output_logits=check_finite)
    if check_finite and not all(bool(torch.isfinite(step).all()) for step in out.logits):
        raise NonFiniteError(f"the model's logits hold NaN/inf on the first batch: {FP16_REMEDY}")
    new = out.sequences[:, inputs["input_ids"].shape[1]:]
    cut = [new.shape[1] >= max_new_tokens and not set(stops) & set(row.tolist()) for row in new]
    return [s.strip() for s in processor.tokenizer.batch_decode(new, skip_special_tokens=True)], cut


def predict_batches(model: Any, processor: Any, rows: pd.DataFrame, image_dir: str | Path, cfg: VlmInferConfig,
                    stats: GenerationStats | None = None, check_finite: bool = False
                    ) -> Iterator[list[tuple[int, str]]]:
    """``(index, raw answer)`` per batch of ``rows``; missing images answer ``""``; OOM halves the batch."""
    from utils.data.images import cached_image, load_image
    from utils.data.tables import make_prompt

    stats = stats if stats is not None else GenerationStats()
    max_new = cfg.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
    stats.max_new_tokens = max_new
    indices = [int(i) for i in rows["index"]]
    links, prompts = list(rows["image_link"]), [make_prompt(e) for e in rows["entity_name"]]
    size, pos, first = cfg.batch_size, 0, check_finite
    while pos < len(indices):
        span = range(pos, min(pos + size, len(indices)))
        images = {}
        for k in span:
            path = cached_image(image_dir, links[k])
            image = None if path is None else load_image(path, cfg.max_side)
            if image is not None:
                images[k] = image
        try:
            answers, cut = generate(model, processor, list(images.values()), [prompts[k] for k in images], max_new,
                                    check_finite=first)
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not is_oom(err) or size == 1:
                raise
            size = max(1, size // 2)
            free_memory()
            log.warning("out of memory: batch size halved to %d", size)
            continue
        first = False
        stats.rows += len(answers)
        stats.truncated += sum(cut)
        by_pos = dict(zip(images, answers))
        yield [(indices[k], by_pos.get(k, "")) for k in span]
        pos = span.stop


def load_predictor(artifact_dir: str | Path, cfg: VlmInferConfig, **model_settings: Any) -> tuple[Any, Any]:
    """(model, processor) from a fit's artifact folder: its adapter merged into the base model it names, or the base
    model alone (a zero-shot fit wrote no adapter). ``model_settings`` override what the fit saved; device and
    dtype are chosen for this machine unless given."""
    artifact = Path(artifact_dir)
    saved = read_settings(artifact)
    saved.pop("device", None)
    saved.pop("dtype", None)
    model_cfg = VlmModelConfig(**{**saved, **model_settings})
    adapter = artifact if is_adapter_dir(artifact) else None
    model = load_for_inference(model_cfg, adapter, merge=cfg.merge_adapter, quantization=cfg.infer_quantization)
    how = "zero-shot" if adapter is None else ("merged adapter" if cfg.merge_adapter else "with the adapter")
    print(f"vlm {model_cfg.model_id} ({how}) on {describe_device(model_cfg.torch_device)} in "
          f"{str(model_cfg.torch_dtype).removeprefix('torch.')}")
    return model, load_processor(model_cfg.model_id, model_cfg.min_pixels, model_cfg.max_pixels)


def generated_f1(model: Any, processor: Any, rows: pd.DataFrame, image_dir: str | Path, cfg: VlmInferConfig,
                 stats: GenerationStats | None = None) -> float:
    """The competition F1 of the cleaned greedy answers for labelled ``rows``."""
    from utils.core.metrics import score
    from utils.core.units import normalize_prediction

    rows = rows.reset_index(drop=True).assign(index=lambda d: range(len(d)))
    was_training = model.training
    model.eval()
    try:
        raw = dict(p for b in predict_batches(model, processor, rows, image_dir, cfg, stats) for p in b)
    finally:
        if was_training:
            model.train()
    preds = pd.DataFrame({"index": rows["index"], "prediction": [
        normalize_prediction(e, raw.get(i, "")) for i, e in zip(rows["index"], rows["entity_name"])]})
    labels = rows[["index", "entity_name", "entity_value"]].assign(
        entity_value=lambda d: d["entity_value"].fillna("").astype(str))
    return float(score(preds, labels).f1)
