"""The PaliGemma fine-tune's HF ``Trainer`` and its ``TrainingArguments``.

- ``PaliGemmaTrainer``: the shared ``utils.models.finetune.trainer.AnswerTrainer`` (answer-window loss, NaN/inf stop,
  ETA and plan in the logs), giving the vision tower's LoRA weights their own, lower learning rate
  (``TrainConfig.vision_lr_scale``) and adding the generated-answer F1 to evaluations.
- ``training_arguments``: fp16 mixed precision on a T4, bf16 where native, neither on CPU; pinned to the model's one
  device (``OneDeviceTrainingArguments``: transformers would count every visible GPU and multiply the batch).

Imported by ``train`` when a fit starts (transformers' Trainer is slow to import; the settings are not).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from utils.models.finetune.trainer import AnswerTrainer, OneDeviceTrainingArguments
from utils.models.paligemma.load import ModelConfig


class PaliGemmaTrainer(AnswerTrainer):
    """The shared ``AnswerTrainer``, with the vision tower's LoRA at its own rate and the generated-answer F1 in
    every evaluation."""

    def __init__(self, *args: Any, f1_eval: Any = None, vision_lr_scale: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.vision_lr_scale = vision_lr_scale
        self.f1_eval = f1_eval

    def create_optimizer(self, model=None):  # noqa: ANN001
        """The Trainer's optimizer, with the vision tower's LoRA weights in groups of their own at
        ``learning_rate * vision_lr_scale`` (the LR schedule scales every group alike)."""
        optimizer = super().create_optimizer(model)
        if self.vision_lr_scale == 1.0 or getattr(optimizer, "vision_lr_scale", None) is not None:
            return optimizer
        vision = {id(p) for n, p in (model or self.model).named_parameters() if ".vision_tower." in n}
        groups = []
        for group in optimizer.param_groups:
            options = {k: v for k, v in group.items() if k != "params"}
            text = [p for p in group["params"] if id(p) not in vision]
            image = [p for p in group["params"] if id(p) in vision]
            groups += [{**options, "params": text}] if text else []
            groups += [{**options, "params": image, "lr": group["lr"] * self.vision_lr_scale}] if image else []
        optimizer.param_groups = []  # no step taken yet: regroup in place, the optimizer's defaults kept
        for group in groups:
            optimizer.add_param_group(group)
        optimizer.vision_lr_scale = self.vision_lr_scale
        return optimizer

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):  # noqa: ANN001
        metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix) if self.eval_dataset else {}
        if self.f1_eval is not None:
            f1 = self.f1_eval(self.model)
            metrics[f"{metric_key_prefix}_f1"] = f1
            self.log({f"{metric_key_prefix}_f1": f1})
        return metrics


def training_arguments(model_cfg: ModelConfig, train_cfg: Any, ckpt_dir: Path, max_steps: int,
                       eval_on: bool, report_to: list[str] | str, run_name: str | None = None):
    """The HF ``TrainingArguments``: fp16 mixed precision on a GPU without native bf16 (a T4), bf16 where it is
    native, neither on CPU; the same dtype decision as the model's compute dtype."""
    device, dtype = model_cfg.torch_device, model_cfg.torch_dtype
    on_gpu = device.type == "cuda"
    return OneDeviceTrainingArguments(
        output_dir=str(ckpt_dir),
        num_train_epochs=train_cfg.num_train_epochs,
        max_steps=max_steps,
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
        disable_tqdm=True,  # budget.TrainingProgress shows the planned steps, ETA and budget instead
        report_to=report_to,
        run_name=run_name,
    )
