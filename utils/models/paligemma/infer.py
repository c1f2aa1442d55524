"""PaliGemma inference: batched greedy generation, OOM-halving batches, and the ``paligemma`` backend.

``predict`` yields raw answers batch by batch as ``(index, raw)`` pairs; ``utils.pipeline.predict`` cleans them with
``utils.core.units.normalize_prediction`` and writes them through the shard writer (resume, done marker). A row whose
image is missing or undecodable answers ``""`` without running the model. When the GPU runs out of memory the
batch is halved and the same rows are tried again, down to one row per batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from utils.core.metrics import score
from utils.core.units import normalize_prediction
from utils.models.finetune.device import float_dtype
from utils.models.finetune.generation import (  # noqa: F401  (re-exported for the backend, train and tests)
    FP16_REMEDY,
    GENERATION_FILE,
    MAX_NEW_TOKENS_LIMIT,
    GenerationStats,
    NonFiniteError,
    saved_max_new_tokens,
)
from utils.models.paligemma.data import IMAGE_TOKEN
from utils.models.paligemma.load import (
    QUANTIZATIONS,
    ModelConfig,
    describe_device,
    is_adapter_dir,
    load_for_inference,
    load_processor,
    model_source,
    read_settings,
)

log = logging.getLogger(__name__)

DEFAULT_MAX_NEW_TOKENS = 16  # for a model with no answer length saved beside it (zero-shot)


@dataclass
class InferConfig:
    """Generation settings. Field names are ``**settings`` of ``predict`` (with ModelConfig's)."""

    batch_size: int = field(default=16, metadata={"help": "Rows per generate() call; halved on GPU OOM."})
    max_new_tokens: int = field(
        default=0, metadata={"help": "Answer length cap in tokens; 0 = the length saved with the adapter (the longest "
                                     f"training answer + a margin), else {DEFAULT_MAX_NEW_TOKENS}. Generations that "
                                     "hit it are counted and reported."})
    merge_adapter: bool = field(
        default=True, metadata={"help": "Merge LoRA into fp16 weights (fp32 on CPU): faster, fits a T4."}
    )
    infer_quantization: str = field(
        default="none", metadata={"help": "Base weights when not merging: 'none', '4bit' or '8bit'."}
    )
    max_side: int | None = field(default=896, metadata={"help": "Downscale images to this longest side on load."})
    progress: bool = field(default=False, metadata={"help": "Own progress bar (images/s); the pipeline has one."})

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise ValueError(
                f"max_new_tokens must be in [0, {MAX_NEW_TOKENS_LIMIT}] (0 = saved with the adapter), got "
                f"{self.max_new_tokens}"
            )
        if self.infer_quantization not in QUANTIZATIONS:
            raise ValueError(f"infer_quantization must be one of {QUANTIZATIONS}, got {self.infer_quantization!r}")
        if self.max_side is not None and self.max_side < 1:
            raise ValueError(f"max_side must be a positive int or None, got {self.max_side}")


def _device(model: Any) -> torch.device:
    """Where the model's inputs go."""
    dev = getattr(model, "device", None)
    return dev if isinstance(dev, torch.device) else next(model.parameters()).device


@torch.inference_mode()
def generate(model: Any, processor: Any, images: list[Any], prompts: list[str], max_new_tokens: int = 16,
             check_finite: bool = False) -> tuple[list[str], list[bool]]:
    """Greedy answers (decoded, stripped, not yet cleaned) for one batch, and per row whether generation was cut at
    ``max_new_tokens`` before its end-of-sequence token. ``check_finite`` also checks every logit for NaN/inf
    (float16 overflow) and raises ``NonFiniteError`` instead of returning garbage."""
    if len(images) != len(prompts):
        raise ValueError(f"{len(images)} images for {len(prompts)} prompts")
    if not images:
        return [], []
    batch = processor(
        images=images, text=[IMAGE_TOKEN + p for p in prompts], return_tensors="pt", padding="longest"
    )
    device = _device(model)
    inputs = {k: v.to(device) for k, v in batch.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    inputs["pixel_values"] = batch["pixel_values"].to(device, float_dtype(model))
    tok = processor.tokenizer
    out = model.generate(
        **inputs,
        max_new_tokens=max_new_tokens,
        do_sample=False,
        num_beams=1,
        use_cache=True,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        return_dict_in_generate=True,
        output_logits=check_finite,
    )
    if check_finite and not all(bool(torch.isfinite(step).all()) for step in out.logits):
        raise NonFiniteError(f"the model's logits hold NaN/inf on the first batch: {FP16_REMEDY}")
    new_tokens = out.sequences[:, inputs["input_ids"].shape[1]:]
    truncated = [new_tokens.shape[1] >= max_new_tokens and tok.eos_token_id not in row.tolist()
                 for row in new_tokens]
    return [s.strip() for s in tok.batch_decode(new_tokens, skip_special_tokens=True)], truncated


def generate_answers(model: Any, processor: Any, images: list[Any], prompts: list[str], max_new_tokens: int = 16
                     ) -> list[str]:
    """Greedy answers (decoded, stripped, not yet cleaned) for one batch of images and prompts."""
    return generate(model, processor, images, prompts, max_new_tokens)[0]


def _is_oom(err: BaseException) -> bool:
    """Whether ``err`` is an out-of-memory error from the accelerator."""
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def iter_answers(
    rows: pd.DataFrame,
    image_dir: str | Path,
    answer_fn: Callable[[list[Any], list[str]], list[str]],
    batch_size: int = 16,
    max_side: int | None = None,
    progress: bool = False,
    prompt_format: str = "question",
) -> Iterator[list[tuple[int, str]]]:
    """Yield ``(index, raw answer)`` per batch of ``rows`` asked in ``prompt_format``; missing images answer ``""``;
    OOM halves the batch."""
    from utils.data.images import cached_image, load_image
    from utils.data.tables import make_prompt

    missing = {"index", "image_link", "entity_name"} - set(rows.columns)
    if missing:
        raise ValueError(f"rows lack column(s) {sorted(missing)}")
    indices = [int(i) for i in rows["index"]]
    links = list(rows["image_link"])
    prompts = [make_prompt(e, prompt_format) for e in rows["entity_name"]]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(indices), unit="img", desc="paligemma")
    cache: dict[int, Any] = {}

    def image_at(k: int) -> Any:
        if k not in cache:
            path = cached_image(image_dir, links[k])  # None: a link naming no usable file, as a missing image
            cache[k] = None if path is None else load_image(path, max_side)
        return cache[k]

    size, pos, done, start = batch_size, 0, 0, time.perf_counter()
    while pos < len(indices):
        span = range(pos, min(pos + size, len(indices)))
        have = [k for k in span if image_at(k) is not None]
        try:
            answers = answer_fn([image_at(k) for k in have], [prompts[k] for k in have]) if have else []
        except (torch.OutOfMemoryError, RuntimeError) as err:
            if not _is_oom(err) or size == 1:
                raise
            size = max(1, size // 2)
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            log.warning("out of memory: batch size halved to %d", size)
            continue
        if len(answers) != len(have):
            raise RuntimeError(f"answer function returned {len(answers)} answers for {len(have)} images")
        by_pos = dict(zip(have, answers))
        yield [(indices[k], by_pos.get(k, "")) for k in span]
        for k in span:
            cache.pop(k, None)
        pos = span.stop
        done += len(span)
        if bar is not None:
            bar.update(len(span))
            bar.set_postfix(img_s=f"{done / max(time.perf_counter() - start, 1e-9):.2f}", batch=size)
    if bar is not None:
        bar.close()


def predict_batches(model: Any, processor: Any, rows: pd.DataFrame, image_dir: str | Path, cfg: InferConfig,
                    stats: GenerationStats | None = None, check_finite: bool = False, prompt_format: str = "question"
                    ) -> Iterator[list[tuple[int, str]]]:
    """Greedy generation over ``rows`` with ``model``, batch by batch (see ``iter_answers``), asked in the
    ``prompt_format`` the model was trained with (``ModelConfig.prompt_format``); ``stats`` counts rows and
    generations cut at ``cfg.max_new_tokens``; ``check_finite`` checks the first batch's logits."""
    stats = stats if stats is not None else GenerationStats()
    max_new = cfg.max_new_tokens or DEFAULT_MAX_NEW_TOKENS
    stats.max_new_tokens = max_new
    first = [check_finite]

    def answer_fn(images: list[Any], prompts: list[str]) -> list[str]:
        answers, cut = generate(model, processor, images, prompts, max_new, check_finite=first[0])
        first[0] = False
        stats.rows += len(answers)
        stats.truncated += sum(cut)
        return answers

    yield from iter_answers(rows, image_dir, answer_fn, cfg.batch_size, cfg.max_side, cfg.progress, prompt_format)


def load_predictor(artifact_dir: str | Path, infer_cfg: InferConfig, **model_settings: Any
                   ) -> tuple[Any, Any, ModelConfig]:
    """(model, processor, its ModelConfig) from an adapter folder written by ``fit``, or from a plain PaliGemma model
    folder/id. The config's ``prompt_format`` is the one the adapter was trained with: ask in it.

    For an adapter, the base model and LoRA settings saved beside it are used; device and dtype are chosen for
    this machine unless given in ``model_settings``, which override anything saved. Prints where the base weights
    come from and how the model runs (device, dtype, merged or not).
    """
    artifact = Path(artifact_dir)
    if is_adapter_dir(artifact):
        saved = read_settings(artifact)
        saved.pop("device", None)
        saved.pop("dtype", None)
        cfg = ModelConfig(**{**saved, **model_settings})
        print(model_source(cfg))
        model = load_for_inference(cfg, artifact, merge=infer_cfg.merge_adapter,
                                   quantization=infer_cfg.infer_quantization)
        processor_src, revision = (artifact, None) if (artifact / "processor_config.json").is_file() \
            else (cfg.model_id, cfg.hub_revision)
    else:  # zero-shot: the base (or an already merged) model itself
        model_id = str(artifact) if (artifact / "config.json").is_file() else model_settings.get("model_id")
        if not model_id:
            raise FileNotFoundError(f"{artifact} holds neither a peft adapter nor a model (config.json)")
        cfg = ModelConfig(**{**model_settings, "model_id": model_id})
        print(model_source(cfg))
        model = load_for_inference(cfg, None, quantization=infer_cfg.infer_quantization)
        processor_src, revision = model_id, cfg.hub_revision
    dtype = str(cfg.torch_dtype).removeprefix("torch.")
    how = f" ({'merged into' if infer_cfg.merge_adapter else 'with'} the adapter)" if is_adapter_dir(artifact) else ""
    print(f"inference on {describe_device(cfg.torch_device)} in {dtype}{how}")
    return model, load_processor(processor_src, revision), cfg


def generated_f1(model: Any, processor: Any, rows: pd.DataFrame, image_dir: str | Path, infer_cfg: InferConfig,
                 stats: GenerationStats | None = None, prompt_format: str = "question", check_finite: bool = False
                 ) -> float:
    """The competition F1 of answers generated (greedy, cleaned by ``utils.core.units``) for labelled ``rows``;
    ``check_finite``: NaN/inf logits on the first batch raise ``NonFiniteError`` (as stage 03 does) instead of
    scoring garbage as F1 ~ 0."""
    rows = rows.reset_index(drop=True).copy()
    rows["index"] = range(len(rows))
    was_training = model.training
    model.eval()
    try:
        raw = dict(pair for batch in predict_batches(model, processor, rows, image_dir, infer_cfg, stats,
                                                     check_finite, prompt_format)
                   for pair in batch)
    finally:
        if was_training:
            model.train()
    preds = pd.DataFrame(
        {
            "index": rows["index"],
            "prediction": [normalize_prediction(e, raw.get(i, "")) for i, e in zip(rows["index"], rows["entity_name"])],
        }
    )
    labels = rows[["index", "entity_name", "entity_value"]].copy()
    labels["entity_value"] = labels["entity_value"].fillna("").astype(str)
    return float(score(preds, labels).f1)


def eval_sample(val: pd.DataFrame | None, max_rows: int, seed: int) -> pd.DataFrame:
    """The evaluation sample: up to ``max_rows`` validation rows drawn with ``seed`` (shuffled), drawn once."""
    if val is None or not len(val) or max_rows <= 0:
        return pd.DataFrame()
    return val.sample(n=min(max_rows, len(val)), random_state=seed).reset_index(drop=True)
