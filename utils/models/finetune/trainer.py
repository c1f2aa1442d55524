"""The HF ``Trainer`` and ``TrainingArguments`` every fine-tuned backend builds on.

- ``AnswerTrainer``: logits only over the answer window (``loss``), a NaN/inf training loss stops the run with the
  remedies (``generation.NonFiniteError``), the time budget's ETA and plan in every training log (``budget``).
- ``OneDeviceTrainingArguments``: the fit runs on the one device its model was put on. With several visible GPUs
  and no distributed launch, transformers counts them all (``n_gpu``), wraps the model in ``DataParallel`` and
  multiplies the per-device batch by their number: on Kaggle's "GPU T4 x2" a configured batch of 4 became 8, half
  the planned steps, a checkpoint that resumes with another batch in a one-GPU session, and wandb saying 4. The
  second GPU serves stage 03's shards, so ``n_gpu`` is at most 1, as transformers itself sets it for a
  model-parallel model.

Imported when a fit starts (transformers' Trainer is slow to import; the settings are not).
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Trainer, TrainingArguments

from utils.models.finetune.generation import FP16_REMEDY, NonFiniteError
from utils.models.finetune.loss import answer_loss, answer_window


class AnswerTrainer(Trainer):
    """HF Trainer: loss on the answer window only, NaN/inf loss stops the run, ETA and plan in every log."""

    def __init__(self, *args: Any, budget: Any = None, check_finite: bool = True, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model_accepts_loss_kwargs = False  # our loss is a per-batch mean: let the Trainer scale it
        self.budget = budget
        self.check_finite = check_finite

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):  # noqa: ANN001
        inputs = dict(inputs)
        labels = inputs.pop("labels")
        outputs = model(**inputs, logits_to_keep=answer_window(labels), use_cache=False)
        loss = answer_loss(outputs.logits, labels)
        if self.check_finite and model.training and not bool(torch.isfinite(loss)):
            raise NonFiniteError(f"the training loss became {float(loss)} at step {self.state.global_step + 1}: "
                                 f"{FP16_REMEDY}")
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self.budget is not None and ("loss" in logs or "train_loss" in logs):
            logs = {**logs, **self.budget.log_fields(self.state)}
        super().log(logs, *args, **kwargs)


class OneDeviceTrainingArguments(TrainingArguments):
    """``TrainingArguments`` pinned to the one device the model was put on (see the module docstring)."""

    @property
    def n_gpu(self) -> int:
        return min(1, super().n_gpu)
