"""PaliGemma LoRA fine-tuning: settings, a time budget, resume across sessions and the final F1.

- ``TrainConfig``: the fine-tune's settings (``**settings`` of ``fit``, with ``ModelConfig``'s and ``InferConfig``'s).
- the HF ``Trainer`` and its arguments (``utils.models.paligemma.trainer``): logits only over the answer window,
  a NaN/inf loss stops the run, ETA and plan in every log, the vision tower's LoRA at a lower LR, one device.
- ``train_model`` / ``fit``: seed, then model and LoRA; checkpoints of other data or settings moved aside
  (``checkpoints``); a time budget that plans the steps and stops with a saved adapter (``budget``); the adapter
  saved *before* the final evaluation, which scores the merged fp16 model (the one stage 03 runs) on a capped,
  shuffled validation sample; ``max_new_tokens`` derived from the longest training answer and saved.
"""

from __future__ import annotations

import logging
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from utils.env.console import say
from utils.models.backend import FIT_STATUS, FIT_SUMMARY
from utils.models.finetune.checkpoints import WANDB_FILE, fingerprint, prepare_checkpoints, read_json, write_json
from utils.models.finetune.device import free_memory
from utils.models.finetune.hub import offline, resolve_model_source
from utils.models.paligemma.data import AnswerDataset, PaliGemmaCollator
from utils.models.paligemma.infer import (
    GENERATION_FILE,
    MAX_NEW_TOKENS_LIMIT,
    GenerationStats,
    InferConfig,
    eval_sample,
    generated_f1,
    load_predictor,
)
from utils.models.paligemma.load import (
    ModelConfig,
    describe_device,
    load_base_model,
    load_processor,
    model_source,
    prepare_for_training,
    save_adapter,
)
from utils.models.settings import split

log = logging.getLogger(__name__)

CHECKPOINT_DIR = "checkpoints"
ADAPTER_DIR = "adapter"
SUMMARY_FILE = "train_summary.json"


@dataclass
class TrainConfig:
    """Fine-tuning settings. Field names are the ``**settings`` accepted by ``fit`` (with ModelConfig's)."""

    num_train_epochs: float = field(default=2.0, metadata={"help": "Passes over the training rows."})
    max_steps: int = field(default=-1, metadata={"help": "Optimizer steps; overrides epochs when > 0."})
    train_batch_size: int = field(default=4, metadata={"help": "Rows per forward pass (4 fits a T4 in 4-bit)."})
    grad_accum: int = field(default=4, metadata={"help": "Forward passes per optimizer step."})
    learning_rate: float = field(
        default=2e-4, metadata={"help": "Peak LR; LoRA wants ~1e-4..1e-3 (the reference's 5e-6 barely moves)."}
    )
    vision_lr_scale: float = field(
        default=0.1, metadata={"help": "The vision tower's LoRA learns at learning_rate times this (with lora_vision "
                                       "on): the image encoder is the part a high LR breaks first; 1 = one LR."})
    warmup_ratio: float = field(default=0.03, metadata={"help": "Fraction of steps of linear warm-up, in [0, 1)."})
    lr_scheduler: str = field(default="linear", metadata={"help": "HF scheduler name: linear, cosine, constant..."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    logging_steps: int = field(default=10, metadata={"help": "Log the loss every N optimizer steps."})
    save_steps: int = field(default=100, metadata={"help": "Checkpoint every N optimizer steps (sessions die)."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept on disk (oldest deleted)."})
    eval_steps: int = field(
        default=0, metadata={"help": "Every N steps: loss and generated-answer F1 of the training model on the "
                                     "evaluation sample; 0 = none during training (the final F1 is always measured)."})
    eval_max_rows: int = field(
        default=200, metadata={"help": "Size of the evaluation sample: validation rows drawn (seeded) once; the final "
                                       "F1 is measured on it with the merged model stage 03 uses."})
    max_side: int | None = field(default=896, metadata={"help": "Downscale images to this longest side on load."})
    seed: int = field(default=0, metadata={"help": "Seed for data order, LoRA init and dropout."})
    resume: bool = field(
        default=True, metadata={"help": "Resume from the last checkpoint in out_dir when it was written with the same "
                                        "rows and settings (others are moved aside); False: always start fresh."})
    resume_from: str = field(
        default="", metadata={"help": "A checkpoint folder of an earlier session (e.g. a Kaggle dataset made from its "
                                      "output; read-only is fine): copied into out_dir/checkpoints and resumed."})
    time_budget_hours: float = field(
        default=9.0, metadata={"help": "Wall-clock hours this fit may take in one session (model loading included; "
                                       "0 = no limit). The step count is planned from the measured step time so "
                                       "training ends with a saved adapter in time; default: one 12-hour Kaggle "
                                       "session minus data preparation and inference set-up."})
    save_margin_minutes: float = field(
        default=20.0, metadata={"help": "Minutes of the budget kept for saving and the final merged-model F1."})
    calibration_steps: int = field(
        default=5, metadata={"help": "Optimizer steps timed (after the first) before the step count is planned."})
    answer_margin_tokens: int = field(
        default=4, metadata={"help": "Tokens added to the longest tokenised training answer to get the inference "
                                     "max_new_tokens saved with the adapter."})
    check_finite: bool = field(
        default=True, metadata={"help": "Stop with a clear message when the loss becomes NaN/inf (fp16 overflow)."})
    wandb_project: str = field(default="amazon-ml-paligemma", metadata={"help": "wandb project name."})
    wandb_mode: str | None = field(
        default=None, metadata={"help": "online/offline/disabled; None = WANDB_MODE, else online iff a key exists."}
    )

    def __post_init__(self) -> None:
        if not (isinstance(self.learning_rate, (int, float)) and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning_rate must be a finite number, got {self.learning_rate!r}")
        if not 0 < self.learning_rate <= 0.1:
            raise ValueError(f"learning_rate must be in (0, 0.1], got {self.learning_rate}")
        if self.learning_rate < 1e-5:
            warnings.warn(
                f"learning_rate {self.learning_rate:g} is far below what LoRA needs (usually 1e-4..1e-3): "
                "the adapter will hardly move",
                UserWarning,
                stacklevel=3,
            )
        for name in ("train_batch_size", "grad_accum", "logging_steps", "save_steps", "save_total_limit"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.max_steps == 0 or self.max_steps < -1:
            raise ValueError(f"max_steps must be -1 (use epochs) or > 0, got {self.max_steps}")
        if self.max_steps == -1 and not self.num_train_epochs > 0:
            raise ValueError(f"num_train_epochs must be > 0, got {self.num_train_epochs}")
        if not (isinstance(self.vision_lr_scale, (int, float)) and 0 < self.vision_lr_scale <= 1):
            raise ValueError(f"vision_lr_scale must be in (0, 1], got {self.vision_lr_scale!r}")
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.eval_steps < 0 or self.eval_max_rows < 0:
            raise ValueError("eval_steps and eval_max_rows must be >= 0")
        if self.max_side is not None and self.max_side < 1:
            raise ValueError(f"max_side must be a positive int or None, got {self.max_side}")
        if self.time_budget_hours < 0 or self.save_margin_minutes < 0 or self.calibration_steps < 1:
            raise ValueError("time_budget_hours and save_margin_minutes must be >= 0 and calibration_steps >= 1")
        if self.time_budget_hours and self.save_margin_minutes >= 60 * self.time_budget_hours:
            raise ValueError(f"save_margin_minutes ({self.save_margin_minutes}) leaves no time in a budget of "
                             f"{self.time_budget_hours} h")


def answer_token_budget(tokenizer: Any, answers: list[str], margin: int) -> tuple[int, int]:
    """(longest tokenised answer incl. ``<eos>``, that plus ``margin`` capped at the inference limit)."""
    texts = sorted({str(a) for a in answers if str(a)}, key=len, reverse=True)[:2000] or [""]
    longest = max(len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]) + 1
    return longest, min(MAX_NEW_TOKENS_LIMIT, longest + margin)


def train_model(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    infer_cfg: InferConfig,
    train: pd.DataFrame,
    val: pd.DataFrame | None,
    image_dir: str | Path,
    out_dir: str | Path,
    callbacks: list[Any] | None = None,
) -> Path:
    """Fine-tune LoRA adapters on ``train``; save the adapter; score the merged model on a ``val`` sample; return
    the adapter folder (see the module docstring)."""
    from transformers import PrinterCallback, set_seed

    from utils.env.tracking import init_run, wandb_mode
    from utils.models.finetune.budget import CheckpointMeta, TimeBudget, TrainingProgress
    from utils.models.paligemma.trainer import PaliGemmaTrainer, training_arguments

    started = time.monotonic()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / CHECKPOINT_DIR
    train_ds = AnswerDataset(train, image_dir, train_cfg.max_side, model_cfg.prompt_format)
    if len(train_ds) == 0:
        raise ValueError(f"no training images found in {image_dir} (0 of {len(train)} rows have a file)")
    sample = eval_sample(val, train_cfg.eval_max_rows, train_cfg.seed)
    eval_ds = AnswerDataset(sample, image_dir, train_cfg.max_side, model_cfg.prompt_format) if len(sample) else None
    if eval_ds is not None and len(eval_ds) == 0:
        eval_ds, sample = None, pd.DataFrame()

    current = fingerprint(train, model_cfg, train_cfg)
    resume_from, notes = prepare_checkpoints(ckpt_dir, current, train_cfg.resume, train_cfg.resume_from)
    for note in notes:
        say(f"[02] {note}")

    say(f"[02] {model_source(model_cfg)}")
    processor = load_processor(model_cfg.model_id, model_cfg.hub_revision)
    longest, max_new = answer_token_budget(processor.tokenizer, list(train_ds.answers), train_cfg.answer_margin_tokens)
    if not infer_cfg.max_new_tokens:
        infer_cfg.max_new_tokens = max_new
    set_seed(train_cfg.seed)  # before the LoRA weights are created: same seed, same initial adapter
    model = prepare_for_training(load_base_model(model_cfg), model_cfg)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    dtype = str(model_cfg.torch_dtype).removeprefix("torch.")
    say(f"[02] training on {describe_device(model_cfg.torch_device)}: {model_cfg.quantization} weights, {dtype} "
        f"compute, {trainable:,} trainable LoRA parameters, {len(train_ds)} rows, eval sample {len(sample)} rows")

    mode = wandb_mode(train_cfg.wandb_mode)
    config = {
        "model": model_cfg.to_dict(),
        "train": asdict(train_cfg),
        "infer": asdict(infer_cfg),
        "n_train": len(train_ds),
        "n_eval_sample": len(sample),
        "trainable_params": trainable,
        "fingerprint": current.digest,
        "longest_answer_tokens": longest,
    }
    saved_run = read_json(ckpt_dir / WANDB_FILE) or {}
    run = init_run(train_cfg.wandb_project, config, job_type="train", mode=mode, dir=out, run_id=saved_run.get("id"))
    if getattr(run, "id", None):
        write_json(ckpt_dir / WANDB_FILE, {"id": run.id, "project": train_cfg.wandb_project})

    budget = TimeBudget(3600 * train_cfg.time_budget_hours, 60 * train_cfg.save_margin_minutes,
                        train_cfg.calibration_steps, ckpt_dir, started)
    max_steps = budget.planned_steps or train_cfg.max_steps
    eval_on = eval_ds is not None and train_cfg.eval_steps > 0
    args = training_arguments(model_cfg, train_cfg, ckpt_dir, max_steps, eval_on,
                              ["wandb"] if mode != "disabled" else "none", getattr(run, "name", None) or None)
    f1_eval = (lambda m: generated_f1(m, processor, sample, image_dir, infer_cfg,
                                      prompt_format=model_cfg.prompt_format)) if eval_on else None
    trainer = PaliGemmaTrainer(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=eval_ds if eval_on else None,
        data_collator=PaliGemmaCollator(processor),
        processing_class=processor,
        callbacks=[budget, TrainingProgress(budget), CheckpointMeta(ckpt_dir), *(callbacks or [])],
        f1_eval=f1_eval,
        budget=budget,
        check_finite=train_cfg.check_finite,
        vision_lr_scale=train_cfg.vision_lr_scale if model_cfg.lora_vision != "none" else 1.0,
    )
    trainer.remove_callback(PrinterCallback)
    budget.trainer = trainer
    if resume_from is not None:
        say(f"[02] resuming from {resume_from} (step {resume_from.name.rsplit('-', 1)[-1]})")
    local = resolve_model_source(str(model_cfg.model_id), model_cfg.hub_revision).local_files_only
    try:
        with offline(local):  # loaded from a folder or the cache: no hub request at each checkpoint save
            result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
            adapter_dir = save_adapter(trainer.model, processor, model_cfg, out / ADAPTER_DIR)
        metrics: dict[str, Any] = dict(result.metrics)
        state = trainer.state
        complete = not budget.stopped_by_budget and state.global_step >= state.max_steps
        write_json(adapter_dir / GENERATION_FILE, {"max_new_tokens": infer_cfg.max_new_tokens,
                                                   "longest_answer_tokens": longest})
        status = {"complete": complete, "global_step": state.global_step, "planned_steps": state.max_steps,
                  "configured_steps": budget.configured_steps,
                  "stopped_by": "time budget" if budget.stopped_by_budget else None}
        write_json(adapter_dir / FIT_STATUS, status)
        say(f"[02] adapter saved to {adapter_dir} (step {state.global_step} of {state.max_steps}"
            f"{'' if complete else '; incomplete: run stage 02 again to continue'})")
        log_history = list(state.log_history)
        budget.trainer = trainer = model = None
        free_memory()
        if len(sample):
            say(f"[02] final F1 of the merged model (as stage 03 runs it) on {len(sample)} validation rows ...")
            stats = GenerationStats()
            merged, merged_processor, merged_cfg = load_predictor(adapter_dir, infer_cfg,
                                                                  device=model_cfg.device, dtype=model_cfg.dtype)
            metrics["final_f1_merged"] = generated_f1(merged, merged_processor, sample, image_dir, infer_cfg, stats,
                                                      prompt_format=merged_cfg.prompt_format,
                                                      check_finite=train_cfg.check_finite)
            metrics["final_truncated"] = stats.truncated
            merged = merged_processor = merged_cfg = None
            free_memory()
            say(f"[02] final F1 (merged {str(model_cfg.torch_dtype).removeprefix('torch.')}, {len(sample)} rows): "
                f"{metrics['final_f1_merged']:.4f}" + (f"; {stats.note()}" if stats.note() else ""))
        summary = {
            "global_step": status["global_step"],
            "planned_steps": status["planned_steps"],
            "complete": complete,
            "resumed_from": resume_from.name if resume_from else None,
            "n_train": len(train_ds),
            "n_train_missing_images": train_ds.n_missing,
            "n_eval_sample": len(sample),
            "max_new_tokens": infer_cfg.max_new_tokens,
            "longest_answer_tokens": longest,
            "fingerprint": current.digest,
            "seconds": time.monotonic() - started,
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))},
            "log_history": log_history,
        }
        write_json(out / SUMMARY_FILE, summary)
        write_json(adapter_dir / FIT_SUMMARY, {
            "settings": {"model": model_cfg.to_dict(), "train": asdict(train_cfg)},
            "trainable_params": trainable,
            "rows": {"train": len(train_ds), "eval_sample": len(sample)},
            "metrics": {**summary["metrics"], **({"val_f1": metrics["final_f1_merged"]}
                                                   if "final_f1_merged" in metrics else {})},
            "history": [{k: h[k] for k in ("step", "loss", "learning_rate", "eval_f1") if k in h}
                        for h in log_history if "loss" in h or "eval_f1" in h],
            "complete": complete,
        })
        if run is not None and hasattr(run, "summary"):
            run.summary.update({**summary["metrics"], "complete": complete, "global_step": status["global_step"]})
            if "final_f1_merged" in metrics and hasattr(run, "log"):
                run.log({"final/f1_merged": metrics["final_f1_merged"]})
    finally:
        if run is not None and hasattr(run, "finish"):
            run.finish()
    return adapter_dir


def fit(
    train: pd.DataFrame,
    val: pd.DataFrame | None,
    image_dir: str | Path,
    out_dir: str | Path,
    callbacks: list[Any] | None = None,
    **settings: Any,
) -> Path:
    """Backend entry: ``settings`` are ModelConfig, TrainConfig and InferConfig (eval generation) field names."""
    model_kw, train_kw, infer_kw = split(settings, ModelConfig, TrainConfig, InferConfig)
    return train_model(
        ModelConfig(**model_kw),
        TrainConfig(**train_kw),
        InferConfig(**infer_kw),
        train,
        val,
        image_dir,
        out_dir,
        callbacks,
    )
