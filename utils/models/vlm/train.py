"""Chat VLM LoRA fine-tuning: the HF Trainer with the loss on the assistant's answer tokens only, the shared time
budget, fingerprinted checkpoints and resume (``utils.models.finetune``), wandb, the adapter saved before the final
F1 of the merged model, and ``max_new_tokens`` from the training answers. ``num_train_epochs=0`` fits nothing: the
artifact then names the base model, which answers zero-shot."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from utils.env.console import say
from utils.models.backend import FIT_STATUS, FIT_SUMMARY
from utils.models.finetune.checkpoints import WANDB_FILE, fingerprint, prepare_checkpoints, read_json, write_json
from utils.models.finetune.device import describe_device, free_memory
from utils.models.finetune.hub import offline, resolve_model_source
from utils.models.finetune.loss import AnswerDataset
from utils.models.settings import split
from utils.models.vlm.data import ChatCollator, end_of_turn
from utils.models.vlm.infer import (
    GENERATION_FILE,
    MAX_NEW_TOKENS_LIMIT,
    GenerationStats,
    VlmInferConfig,
    generated_f1,
    load_predictor,
)
from utils.models.vlm.load import (
    SETTINGS_FILE,
    VlmModelConfig,
    load_base_model,
    load_processor,
    prepare_for_training,
    save_adapter,
)

CHECKPOINT_DIR, ADAPTER_DIR, SUMMARY_FILE = "checkpoints", "adapter", "train_summary.json"


@dataclass
class VlmTrainConfig:
    """Fine-tuning settings of the vlm backend (``**settings`` of fit, with VlmModelConfig's and VlmInferConfig's)."""

    num_train_epochs: float = field(default=1.0, metadata={
        "help": "Passes over the training rows; 0 = no fine-tune (the base model answers zero-shot)."})
    max_steps: int = field(default=-1, metadata={"help": "Optimizer steps; overrides epochs when > 0."})
    train_batch_size: int = field(default=2, metadata={"help": "Rows per forward pass."})
    grad_accum: int = field(default=8, metadata={"help": "Forward passes per optimizer step."})
    learning_rate: float = field(default=1e-4, metadata={"help": "Peak LR of the LoRA weights."})
    warmup_ratio: float = field(default=0.03, metadata={"help": "Fraction of steps of linear warm-up, in [0, 1)."})
    lr_scheduler: str = field(default="cosine", metadata={"help": "HF scheduler name: linear, cosine, constant..."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    logging_steps: int = field(default=10, metadata={"help": "Log the loss every N optimizer steps."})
    save_steps: int = field(default=100, metadata={"help": "Checkpoint every N optimizer steps (sessions die)."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept on disk (oldest deleted)."})
    eval_max_rows: int = field(default=200, metadata={
        "help": "Validation rows (seeded sample) the final F1 of the merged model is measured on; 0 = none."})
    seed: int = field(default=0, metadata={"help": "Seed for data order, LoRA init and dropout."})
    resume: bool = field(default=True, metadata={
        "help": "Resume from the last checkpoint written with the same rows and settings (others are moved aside)."})
    resume_from: str = field(default="", metadata={
        "help": "A checkpoint folder of an earlier session (read-only is fine): copied in and resumed."})
    time_budget_hours: float = field(default=9.0, metadata={
        "help": "Wall-clock hours this fit may take in one session (0 = no limit): the steps are planned from the "
                "measured step time so training ends with a saved adapter in time."})
    save_margin_minutes: float = field(default=20.0, metadata={
        "help": "Minutes of the budget kept for saving and the final merged-model F1."})
    calibration_steps: int = field(default=5, metadata={"help": "Optimizer steps timed before the plan."})
    answer_margin_tokens: int = field(default=4, metadata={
        "help": "Tokens added to the longest tokenised training answer to get the saved max_new_tokens."})
    check_finite: bool = field(default=True, metadata={"help": "Stop with a clear message on a NaN/inf loss."})
    wandb_project: str = field(default="amazon-ml-vlm", metadata={"help": "wandb project name."})
    wandb_mode: str | None = field(default=None, metadata={
        "help": "online/offline/disabled; None = WANDB_MODE, else online iff a key exists."})

    def __post_init__(self) -> None:
        if not 0 < self.learning_rate <= 0.1:
            raise ValueError(f"learning_rate must be in (0, 0.1], got {self.learning_rate}")
        for name in ("train_batch_size", "grad_accum", "logging_steps", "save_steps", "save_total_limit",
                     "calibration_steps"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_train_epochs < 0 or self.max_steps == 0 or self.max_steps < -1:
            raise ValueError("num_train_epochs must be >= 0 and max_steps -1 or > 0")
        if not 0 <= self.warmup_ratio < 1 or self.time_budget_hours < 0 or self.save_margin_minutes < 0:
            raise ValueError("warmup_ratio must be in [0, 1), time_budget_hours and save_margin_minutes >= 0")

    @property
    def zero_shot(self) -> bool:
        return self.num_train_epochs == 0 and self.max_steps == -1


def answer_token_budget(processor: Any, answers: list[str], margin: int) -> tuple[int, int]:
    """(longest tokenised answer incl. the turn's end, that plus ``margin`` capped at the inference limit)."""
    end = end_of_turn(processor)
    texts = sorted({str(a) for a in answers if str(a)}, key=len, reverse=True)[:2000] or [""]
    ids = processor.tokenizer([t + end for t in texts], add_special_tokens=False)["input_ids"]
    longest = max(len(i) for i in ids)
    return longest, min(MAX_NEW_TOKENS_LIMIT, longest + margin)


def _arguments(model_cfg: VlmModelConfig, cfg: VlmTrainConfig, ckpt_dir: Path, max_steps: int, report_to: Any,
               run_name: str | None):
    """``TrainingArguments``: fp16 mixed precision on a GPU without native bf16 (a T4), bf16 where native; on the
    model's one device (``OneDeviceTrainingArguments``: two visible T4s never double the batch)."""
    from utils.models.finetune.trainer import OneDeviceTrainingArguments

    on_gpu, dtype = model_cfg.torch_device.type == "cuda", model_cfg.torch_dtype
    return OneDeviceTrainingArguments(
        output_dir=str(ckpt_dir), num_train_epochs=cfg.num_train_epochs, max_steps=max_steps,
        per_device_train_batch_size=cfg.train_batch_size, gradient_accumulation_steps=cfg.grad_accum,
        learning_rate=cfg.learning_rate, warmup_steps=cfg.warmup_ratio, lr_scheduler_type=cfg.lr_scheduler,
        weight_decay=cfg.weight_decay, max_grad_norm=cfg.max_grad_norm, logging_steps=cfg.logging_steps,
        save_strategy="steps", save_steps=cfg.save_steps, save_total_limit=cfg.save_total_limit, eval_strategy="no",
        fp16=on_gpu and dtype == torch.float16, bf16=on_gpu and dtype == torch.bfloat16, use_cpu=not on_gpu,
        seed=cfg.seed, remove_unused_columns=False, label_names=["labels"], dataloader_pin_memory=on_gpu,
        disable_tqdm=True, report_to=report_to, run_name=run_name)


def train_model(model_cfg: VlmModelConfig, cfg: VlmTrainConfig, infer_cfg: VlmInferConfig, train: pd.DataFrame,
                val: pd.DataFrame | None, image_dir: str | Path, out_dir: str | Path,
                callbacks: list[Any] | None = None) -> Path:
    """Fine-tune LoRA on ``train`` (or, zero-shot, only record the model and the answer length); save the adapter;
    score the merged model on a ``val`` sample; return the artifact folder."""
    from transformers import PrinterCallback, set_seed

    from utils.env.tracking import init_run, wandb_mode
    from utils.models.finetune.budget import CheckpointMeta, TimeBudget, TrainingProgress
    from utils.models.finetune.trainer import AnswerTrainer

    started = time.monotonic()
    out = Path(out_dir)
    ckpt_dir, adapter_dir = out / CHECKPOINT_DIR, out / ADAPTER_DIR
    train_ds = AnswerDataset(train, image_dir, infer_cfg.max_side)
    if len(train_ds) == 0:
        raise ValueError(f"no training images found in {image_dir} (0 of {len(train)} rows have a file)")
    sample = val.sample(n=min(cfg.eval_max_rows, len(val)), random_state=cfg.seed).reset_index(drop=True) \
        if val is not None and len(val) and cfg.eval_max_rows > 0 else pd.DataFrame()
    say(f"[02] {resolve_model_source(str(model_cfg.model_id)).describe()}")
    processor = load_processor(model_cfg.model_id, model_cfg.min_pixels, model_cfg.max_pixels)
    longest, max_new = answer_token_budget(processor, list(train_ds.answers), cfg.answer_margin_tokens)
    infer_cfg.max_new_tokens = infer_cfg.max_new_tokens or max_new
    current = fingerprint(train, model_cfg, cfg)
    metrics: dict[str, Any] = {}
    status: dict[str, Any] = {"complete": True, "global_step": 0, "planned_steps": 0, "stopped_by": None}
    history: list[dict[str, Any]] = []
    trainable = 0
    run = None
    try:
        if cfg.zero_shot:
            adapter_dir.mkdir(parents=True, exist_ok=True)
            for stale in adapter_dir.glob("adapter_*"):
                stale.unlink()
            write_json(adapter_dir / SETTINGS_FILE, model_cfg.to_dict())
            say(f"[02] num_train_epochs=0: no fine-tune; {model_cfg.model_id} answers zero-shot")
        else:
            resume_from, notes = prepare_checkpoints(ckpt_dir, current, cfg.resume, cfg.resume_from)
            for note in notes:
                say(f"[02] {note}")
            set_seed(cfg.seed)
            model = prepare_for_training(load_base_model(model_cfg), model_cfg)
            trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
            say(f"[02] training on {describe_device(model_cfg.torch_device)}: {model_cfg.quantization} weights, "
                f"{str(model_cfg.torch_dtype).removeprefix('torch.')} compute, {trainable:,} trainable LoRA "
                f"parameters, {len(train_ds)} rows")
            mode = wandb_mode(cfg.wandb_mode)
            config = {"model": model_cfg.to_dict(), "train": asdict(cfg), "infer": asdict(infer_cfg),
                      "n_train": len(train_ds), "trainable_params": trainable, "fingerprint": current.digest}
            saved_run = read_json(ckpt_dir / WANDB_FILE) or {}
            run = init_run(cfg.wandb_project, config, job_type="train", mode=mode, dir=out,
                           run_id=saved_run.get("id"))
            if getattr(run, "id", None):
                write_json(ckpt_dir / WANDB_FILE, {"id": run.id, "project": cfg.wandb_project})
            budget = TimeBudget(3600 * cfg.time_budget_hours, 60 * cfg.save_margin_minutes, cfg.calibration_steps,
                                ckpt_dir, started)
            args = _arguments(model_cfg, cfg, ckpt_dir, budget.planned_steps or cfg.max_steps,
                              ["wandb"] if mode != "disabled" else "none", getattr(run, "name", None) or None)
            trainer = AnswerTrainer(model=model, args=args, train_dataset=train_ds,
                                       data_collator=ChatCollator(processor), processing_class=processor.tokenizer,
                                       callbacks=[budget, TrainingProgress(budget), CheckpointMeta(ckpt_dir),
                                                  *(callbacks or [])],
                                       budget=budget, check_finite=cfg.check_finite)
            trainer.remove_callback(PrinterCallback)
            budget.trainer = trainer
            local = resolve_model_source(str(model_cfg.model_id)).local_files_only
            with offline(local):
                result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
                save_adapter(trainer.model, processor, model_cfg, adapter_dir)
            metrics.update(result.metrics)
            state = trainer.state
            status = {"complete": not budget.stopped_by_budget and state.global_step >= state.max_steps,
                      "global_step": state.global_step, "planned_steps": state.max_steps,
                      "stopped_by": "time budget" if budget.stopped_by_budget else None,
                      "resumed_from": resume_from.name if resume_from else None}
            history = list(state.log_history)
            budget.trainer = trainer = model = None
            free_memory()
        write_json(adapter_dir / GENERATION_FILE, {"max_new_tokens": infer_cfg.max_new_tokens,
                                                   "longest_answer_tokens": longest})
        write_json(adapter_dir / FIT_STATUS, status)
        if len(sample):
            stats = GenerationStats()
            merged, merged_processor = load_predictor(adapter_dir, infer_cfg, device=model_cfg.device,
                                                      dtype=model_cfg.dtype)
            metrics["final_f1_merged"] = generated_f1(merged, merged_processor, sample, image_dir, infer_cfg, stats)
            metrics["final_truncated"] = stats.truncated
            merged = merged_processor = None
            free_memory()
            say(f"[02] final F1 ({'zero-shot' if cfg.zero_shot else 'merged'}, {len(sample)} validation rows): "
                f"{metrics['final_f1_merged']:.4f}" + (f"; {stats.note()}" if stats.note() else ""))
        numbers = {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))}
        summary = {**status, "n_train": len(train_ds), "n_eval_sample": len(sample), "fingerprint": current.digest,
                   "max_new_tokens": infer_cfg.max_new_tokens, "seconds": time.monotonic() - started,
                   "metrics": numbers, "log_history": history}
        write_json(out / SUMMARY_FILE, summary)
        write_json(adapter_dir / FIT_SUMMARY, {
            "settings": {"model": model_cfg.to_dict(), "train": asdict(cfg)}, "trainable_params": trainable,
            "metrics": {**numbers, **({"val_f1": metrics["final_f1_merged"]} if "final_f1_merged" in metrics else {})},
            "history": [{k: h[k] for k in ("step", "loss", "learning_rate") if k in h} for h in history if "loss" in h],
            "complete": status["complete"]})
        if run is not None and hasattr(run, "summary"):
            run.summary.update({**numbers, "complete": status["complete"]})
    finally:
        if run is not None and hasattr(run, "finish"):
            run.finish()
    return adapter_dir


def fit(train: pd.DataFrame, val: pd.DataFrame | None, image_dir: str | Path, out_dir: str | Path,
        callbacks: list[Any] | None = None, **settings: Any) -> Path:
    """Backend entry: ``settings`` are VlmModelConfig, VlmTrainConfig and VlmInferConfig field names."""
    model_kw, train_kw, infer_kw = split(settings, VlmModelConfig, VlmTrainConfig, VlmInferConfig)
    return train_model(VlmModelConfig(**model_kw), VlmTrainConfig(**train_kw), VlmInferConfig(**infer_kw), train,
                       val, image_dir, out_dir, callbacks)
