"""PaliGemma LoRA fine-tuning: dataset, answer-only-loss collator, Trainer with checkpoints, resume and F1 eval.

- ``AnswerDataset``: (image, prompt, answer) per row, images read lazily from the image cache through
  ``utils.images`` and prompts from ``utils.data.make_prompt`` (the one prompt, shared with inference).
- ``PaliGemmaCollator``: the processor's ``suffix=`` puts the answer after the prompt; only answer tokens (and the
  closing ``<eos>``) carry loss, image, prompt and padding tokens are labelled -100.
- ``PaliGemmaTrainer``: the HF ``Trainer`` computing logits only over the answer window (the full 257k-vocab logits
  of ~1,000 image tokens would not fit a T4) and logging the competition F1 from generated answers on evaluation.
- ``fit``: builds everything from ``**settings`` (``ModelConfig`` + ``TrainConfig`` + ``InferConfig`` fields),
  resumes from the last checkpoint in ``out_dir/checkpoints`` automatically, saves the adapter (peft format) with
  its processor and settings in ``out_dir/adapter`` and returns that folder.
"""

from __future__ import annotations

import json
import logging
import math
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from utils.images import cached_image, load_image
from utils.model import ModelConfig, load_base_model, load_processor, prepare_for_training, save_adapter, split_settings

log = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
IGNORE_INDEX = -100
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
    warmup_ratio: float = field(default=0.03, metadata={"help": "Fraction of steps of linear warm-up, in [0, 1)."})
    lr_scheduler: str = field(default="linear", metadata={"help": "HF scheduler name: linear, cosine, constant..."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay."})
    max_grad_norm: float = field(default=1.0, metadata={"help": "Gradient clipping norm."})
    logging_steps: int = field(default=10, metadata={"help": "Log the loss every N optimizer steps."})
    save_steps: int = field(default=100, metadata={"help": "Checkpoint every N optimizer steps (sessions die)."})
    save_total_limit: int = field(default=2, metadata={"help": "Checkpoints kept on disk (oldest deleted)."})
    eval_steps: int = field(default=0, metadata={"help": "Evaluate (loss + F1) every N steps; 0 = only at the end."})
    eval_max_rows: int = field(default=200, metadata={"help": "Validation rows used for the generated-answer F1."})
    max_side: int | None = field(default=896, metadata={"help": "Downscale images to this longest side on load."})
    seed: int = field(default=0, metadata={"help": "Seed for data order, LoRA init and dropout."})
    resume: bool = field(default=True, metadata={"help": "Resume from the last checkpoint in out_dir if any."})
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
        if not 0 <= self.warmup_ratio < 1:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}")
        if self.eval_steps < 0 or self.eval_max_rows < 0:
            raise ValueError("eval_steps and eval_max_rows must be >= 0")
        if self.max_side is not None and self.max_side < 1:
            raise ValueError(f"max_side must be a positive int or None, got {self.max_side}")


# ------------------------------------------------------------------------------------------------- data


class AnswerDataset(torch.utils.data.Dataset):
    """Rows as (image, prompt, answer); images are read lazily, rows whose image file is missing are dropped."""

    def __init__(self, rows: pd.DataFrame, image_dir: str | Path, max_side: int | None = None) -> None:
        from utils.data import make_prompt

        missing_cols = {"image_link", "entity_name", "entity_value"} - set(rows.columns)
        if missing_cols:
            raise ValueError(f"training rows lack column(s) {sorted(missing_cols)}")
        self.image_dir = Path(image_dir)
        self.max_side = max_side
        paths = [cached_image(self.image_dir, u) for u in rows["image_link"]]
        keep = [p is not None and p.is_file() for p in paths]
        self.n_missing = len(keep) - sum(keep)
        if self.n_missing:
            log.warning("%d of %d rows have no image in %s; they are skipped", self.n_missing, len(keep), image_dir)
        kept = rows[keep]
        self.paths = [p for p, k in zip(paths, keep) if k]
        self.prompts = [make_prompt(e) for e in kept["entity_name"]]
        self.answers = ["" if pd.isna(v) else str(v).strip() for v in kept["entity_value"]]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> dict[str, Any]:
        for k in range(len(self.paths)):  # an undecodable file: take the next row instead of crashing
            j = (i + k) % len(self.paths)
            image = load_image(self.paths[j], self.max_side)
            if image is not None:
                return {"image": image, "prompt": self.prompts[j], "answer": self.answers[j]}
            log.warning("cannot decode %s; using another row", self.paths[j])
        raise RuntimeError(f"no decodable image among {len(self.paths)} rows in {self.image_dir}")


class PaliGemmaCollator:
    """Batch (image, prompt, answer) items; labels are the answer tokens + ``<eos>``, everything else -100."""

    def __init__(self, processor: Any, max_length: int | None = None) -> None:
        self.processor = processor
        self.max_length = max_length

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        texts = [IMAGE_TOKEN + ex["prompt"] for ex in examples]
        batch = self.processor(
            images=[ex["image"] for ex in examples],
            text=texts,
            suffix=[ex["answer"] for ex in examples],
            return_tensors="pt",
            padding="longest",
        )
        ids, mask, types = batch["input_ids"], batch["attention_mask"], batch["token_type_ids"]
        labels = ids.masked_fill((types == 0) | (mask == 0), IGNORE_INDEX)
        # Positions as generate() counts them under left padding (1-based in PaliGemma), so training matches.
        position_ids = mask.long().cumsum(-1).masked_fill(mask == 0, 1)
        return {
            "input_ids": ids,
            "attention_mask": mask,
            "token_type_ids": types,
            "pixel_values": batch["pixel_values"],
            "position_ids": position_ids,
            "labels": labels,
        }


def answer_window(labels: torch.Tensor) -> int:
    """How many final positions' logits are needed: from the token before the first labelled one to the end."""
    labelled = labels != IGNORE_INDEX
    if not labelled.any():
        return 1
    first = labelled.float().argmax(dim=1)  # first labelled column per row (0 for rows with none)
    first = torch.where(labelled.any(dim=1), first, torch.full_like(first, labels.shape[1] - 1))
    return int(labels.shape[1] - first.min().item() + 1)


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy; ``logits`` cover the last ``logits.shape[1]`` positions of ``labels``."""
    keep = logits.shape[1]
    target = labels[:, labels.shape[1] - keep + 1 :]
    pred = logits[:, :-1].float()
    return torch.nn.functional.cross_entropy(
        pred.reshape(-1, pred.shape[-1]), target.reshape(-1).to(pred.device), ignore_index=IGNORE_INDEX
    )


# ------------------------------------------------------------------------------------------------- trainer


def _make_trainer_class():
    """The Trainer subclass (built lazily so importing this module stays cheap)."""
    from transformers import Trainer

    class PaliGemmaTrainer(Trainer):
        """HF Trainer: loss on the answer window only; evaluation adds the F1 of generated answers."""

        def __init__(self, *args: Any, f1_eval: Any = None, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.model_accepts_loss_kwargs = False  # our loss is a per-batch mean: let the Trainer scale it
            self.f1_eval = f1_eval

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
            inputs = dict(inputs)
            labels = inputs.pop("labels")
            keep = answer_window(labels)
            outputs = model(**inputs, logits_to_keep=keep, use_cache=False)
            loss = answer_loss(outputs.logits, labels)
            return (loss, outputs) if return_outputs else loss

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):  # noqa: ANN001
            metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix) if self.eval_dataset else {}
            if self.f1_eval is not None:
                f1 = self.f1_eval(self.model)
                metrics[f"{metric_key_prefix}_f1"] = f1
                self.log({f"{metric_key_prefix}_f1": f1})
            return metrics

    return PaliGemmaTrainer


def generated_f1(model: Any, processor: Any, rows: pd.DataFrame, image_dir: str | Path, infer_cfg: Any) -> float:
    """The competition F1 of answers generated (greedy, cleaned by ``utils.units``) for labelled ``rows``."""
    from utils.infer import predict_batches
    from utils.metrics import score
    from utils.units import normalize_prediction

    rows = rows.reset_index(drop=True).copy()
    rows["index"] = range(len(rows))
    was_training = model.training
    model.eval()
    try:
        raw = dict(pair for batch in predict_batches(model, processor, rows, image_dir, infer_cfg) for pair in batch)
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


def last_checkpoint(checkpoint_dir: str | Path) -> Path | None:
    """The newest ``checkpoint-N`` folder under ``checkpoint_dir`` (None when there is none)."""
    from transformers.trainer_utils import get_last_checkpoint

    d = Path(checkpoint_dir)
    if not d.is_dir():
        return None
    last = get_last_checkpoint(str(d))
    return Path(last) if last else None


def train_model(
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    infer_cfg: Any,
    train: pd.DataFrame,
    val: pd.DataFrame | None,
    image_dir: str | Path,
    out_dir: str | Path,
    callbacks: list[Any] | None = None,
) -> Path:
    """Fine-tune LoRA adapters on ``train``; evaluate on ``val``; return the saved adapter folder."""
    from transformers import TrainingArguments

    from utils.tracking import init_run, wandb_mode

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ckpt_dir = out / CHECKPOINT_DIR
    train_ds = AnswerDataset(train, image_dir, train_cfg.max_side)
    if len(train_ds) == 0:
        raise ValueError(f"no training images found in {image_dir} (0 of {len(train)} rows have a file)")
    val_rows = val if val is not None else pd.DataFrame()
    val_ds = AnswerDataset(val_rows, image_dir, train_cfg.max_side) if len(val_rows) else None
    if val_ds is not None and len(val_ds) == 0:
        val_ds = None

    processor = load_processor(model_cfg.model_id)
    model = prepare_for_training(load_base_model(model_cfg), model_cfg)
    torch.manual_seed(train_cfg.seed)

    mode = wandb_mode(train_cfg.wandb_mode)
    config = {
        "model": model_cfg.to_dict(),
        "train": asdict(train_cfg),
        "infer": asdict(infer_cfg),
        "n_train": len(train_ds),
        "n_val": len(val_ds) if val_ds else 0,
        "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    }
    run = init_run(train_cfg.wandb_project, config, job_type="train", mode=mode, dir=out)

    device = model_cfg.torch_device
    dtype = model_cfg.torch_dtype
    on_gpu = device.type == "cuda"
    eval_on = val_ds is not None and train_cfg.eval_steps > 0
    args = TrainingArguments(
        output_dir=str(ckpt_dir),
        num_train_epochs=train_cfg.num_train_epochs,
        max_steps=train_cfg.max_steps,
        per_device_train_batch_size=train_cfg.train_batch_size,
        per_device_eval_batch_size=train_cfg.train_batch_size,
        gradient_accumulation_steps=train_cfg.grad_accum,
        learning_rate=train_cfg.learning_rate,
        warmup_steps=train_cfg.warmup_ratio,
        lr_scheduler_type=train_cfg.lr_scheduler,
        weight_decay=train_cfg.weight_decay,
        max_grad_norm=train_cfg.max_grad_norm,
        logging_steps=train_cfg.logging_steps,
        save_strategy="steps",
        save_steps=train_cfg.save_steps,
        save_total_limit=train_cfg.save_total_limit,
        eval_strategy="steps" if eval_on else "no",
        eval_steps=train_cfg.eval_steps if eval_on else None,
        prediction_loss_only=True,
        fp16=on_gpu and dtype == torch.float16,
        bf16=on_gpu and dtype == torch.bfloat16,
        use_cpu=not on_gpu,
        seed=train_cfg.seed,
        remove_unused_columns=False,
        label_names=["labels"],
        dataloader_pin_memory=on_gpu,
        report_to=["wandb"] if mode != "disabled" else "none",
        run_name=getattr(run, "name", None) or None,
    )
    f1_rows = val_rows.head(train_cfg.eval_max_rows) if val_ds is not None and train_cfg.eval_max_rows else None
    f1_eval = (lambda m: generated_f1(m, processor, f1_rows, image_dir, infer_cfg)) if f1_rows is not None else None
    trainer = _make_trainer_class()(
        model=model,
        args=args,
        train_dataset=train_ds,
        eval_dataset=val_ds,
        data_collator=PaliGemmaCollator(processor),
        processing_class=processor,
        callbacks=callbacks,
        f1_eval=f1_eval,
    )
    resume_from = last_checkpoint(ckpt_dir) if train_cfg.resume else None
    if resume_from is not None:
        log.warning("resuming from %s", resume_from)
    try:
        result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
        metrics: dict[str, Any] = dict(result.metrics)
        if val_ds is not None:
            metrics.update(trainer.evaluate())
        adapter_dir = save_adapter(trainer.model, processor, model_cfg, out / ADAPTER_DIR)
        summary = {
            "global_step": trainer.state.global_step,
            "resumed_from": resume_from.name if resume_from else None,
            "n_train": len(train_ds),
            "n_train_missing_images": train_ds.n_missing,
            "metrics": {k: v for k, v in metrics.items() if isinstance(v, (int, float, str))},
            "log_history": trainer.state.log_history,
        }
        (out / SUMMARY_FILE).write_text(json.dumps(summary, indent=1, default=str))
        if run is not None and hasattr(run, "summary"):
            run.summary.update({k: v for k, v in summary["metrics"].items()})
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
    from utils.infer import InferConfig

    model_kw, train_kw, infer_kw = split_settings(settings, ModelConfig, TrainConfig, InferConfig)
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
