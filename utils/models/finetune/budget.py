"""The fine-tune's time budget and its progress display (HF ``TrainerCallback``s).

``TimeBudget``: a Kaggle session lasts at most 12 hours, and the full training set at the default settings would
take far longer. After ``calibration_steps`` optimizer steps (the first one, with its warm-up, not counted) it knows
the step time and plans the total number of steps that fits the budget with ``margin`` seconds left for saving and
the final evaluation; when that is fewer than configured, the LR schedule is rebuilt for the planned total (so it
still decays to its end) and the plan is saved (``plan.json``) so a resumed session keeps the same schedule. In any
session, when the next step would run into the margin, training stops with a checkpoint saved, and the caller saves
the adapter as usual: a run always ends with a usable adapter.

``TrainingProgress``: one progress bar (steps done of planned, loss, ETA, budget left) and, every minute, a console
line (``utils.env.console``) that ``run_all.sh`` shows while the notebook runs.
"""

from __future__ import annotations

import math
import statistics
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback, get_scheduler

from utils.env.console import Every, duration, say
from utils.models.finetune.checkpoints import PLAN_FILE, copy_meta_into, read_json, write_json


class TimeBudget(TrainerCallback):
    """Plan the steps from the measured step time and stop cleanly before ``budget_s`` (0 = no limit)."""

    def __init__(self, budget_s: float, margin_s: float, calibration_steps: int, ckpt_dir: Path,
                 started: float | None = None) -> None:
        self.budget_s = float(budget_s)
        self.margin_s = float(margin_s)
        self.calibration_steps = max(1, int(calibration_steps))
        self.ckpt_dir = Path(ckpt_dir)
        self.started = time.monotonic() if started is None else started
        self.trainer: Any = None  # set by the caller once the Trainer exists (the scheduler is rebuilt through it)
        self.plan = read_json(self.ckpt_dir / PLAN_FILE)  # from an earlier session: keep its schedule
        self.step_times: list[float] = []
        self._last: float | None = None
        self.stopped_by_budget = False
        self.configured_steps: int | None = None

    @property
    def planned_steps(self) -> int | None:
        """The planned total of optimizer steps (None before planning)."""
        return int(self.plan["max_steps"]) if self.plan else None

    def step_seconds(self) -> float | None:
        """The typical step time this session: median of the steps after the first (warm-up) one."""
        times = self.step_times[1:] or self.step_times
        return statistics.median(times) if times else None

    def elapsed(self) -> float:
        """Seconds since the fit started (model loading included)."""
        return time.monotonic() - self.started

    def left(self) -> float | None:
        """Budget seconds left (None without a budget)."""
        return self.budget_s - self.elapsed() if self.budget_s > 0 else None

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        self._last = time.monotonic()
        self.configured_steps = state.max_steps
        if self.plan is not None and self.plan.get("max_steps") != state.max_steps:
            state.max_steps = int(self.plan["max_steps"])

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        now = time.monotonic()
        if self._last is not None:
            self.step_times.append(now - self._last)
        self._last = now
        if self.plan is None and len(self.step_times) > self.calibration_steps:
            self._make_plan(args, state)
        step_s = self.step_seconds()
        if self.budget_s > 0 and step_s and state.global_step < state.max_steps \
                and self.elapsed() + step_s + self.margin_s > self.budget_s:
            self.stopped_by_budget = True
            control.should_training_stop = True
            control.should_save = True
            say(f"[02] time budget: stopping at step {state.global_step} of {state.max_steps} "
                f"({duration(self.elapsed())} used of {duration(self.budget_s)}); a checkpoint and the adapter are "
                "saved, and running stage 02 again continues from here")
        return control

    def _make_plan(self, args, state) -> None:  # noqa: ANN001
        step_s = self.step_seconds() or 0.0
        configured = state.max_steps
        planned = configured
        if self.budget_s > 0 and step_s > 0:
            room = self.budget_s - self.elapsed() - self.margin_s
            planned = min(configured, state.global_step + max(0, math.floor(room / step_s)))
            planned = max(planned, state.global_step)
        if planned < configured and self.trainer is not None:
            self._rebuild_schedule(args, planned, state.global_step)
        state.max_steps = planned
        self.plan = {"max_steps": planned, "configured_steps": configured, "step_seconds": round(step_s, 3),
                     "budget_hours": self.budget_s / 3600, "planned_at_step": state.global_step}
        write_json(self.ckpt_dir / PLAN_FILE, self.plan)
        fits = "all" if planned >= configured else f"{planned}"
        say(f"[02] step time {step_s:.1f} s: {fits} of {configured} configured steps fit the time budget of "
            f"{duration(self.budget_s) if self.budget_s > 0 else 'none'}; planned {planned} steps, "
            f"about {duration((planned - state.global_step) * step_s)} more")

    def _rebuild_schedule(self, args, total: int, done: int) -> None:  # noqa: ANN001
        """Replace the Trainer's LR schedule by the same kind of schedule over ``total`` steps, ``done`` taken."""
        scheduler = get_scheduler(args.lr_scheduler_type, optimizer=self.trainer.optimizer,
                                  num_warmup_steps=args.get_warmup_steps(total), num_training_steps=total,
                                  scheduler_specific_kwargs=args.lr_scheduler_kwargs)
        for _ in range(done):
            scheduler.step()
        self.trainer.lr_scheduler = scheduler

    def log_fields(self, state) -> dict[str, float]:  # noqa: ANN001
        """ETA and plan for the training logs (wandb)."""
        step_s = self.step_seconds()
        fields: dict[str, float] = {"planned_steps": float(state.max_steps)}
        if step_s:
            fields["step_seconds"] = step_s
            fields["eta_minutes"] = max(0, state.max_steps - state.global_step) * step_s / 60
        left = self.left()
        if left is not None:
            fields["budget_left_minutes"] = left / 60
        return fields


class TrainingProgress(TrainerCallback):
    """A progress bar over the planned steps (loss, ETA, budget left) and a console line every ``every_s``."""

    def __init__(self, budget: TimeBudget, every_s: float = 60.0) -> None:
        self.budget = budget
        self.every = Every(every_s)
        self.bar: Any = None
        self.loss: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):  # noqa: ANN001
        from tqdm.auto import tqdm

        self.bar = tqdm(total=state.max_steps, initial=state.global_step, unit="step", desc="fine-tune")

    def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
        if logs and "loss" in logs:
            self.loss = float(logs["loss"])

    def _status(self, state) -> str:  # noqa: ANN001
        parts = [f"step {state.global_step}/{state.max_steps}"]
        if self.loss is not None:
            parts.append(f"loss {self.loss:.4f}")
        step_s = self.budget.step_seconds()
        if step_s:
            parts.append(f"{step_s:.1f} s/step, ETA {duration(max(0, state.max_steps - state.global_step) * step_s)}")
        left = self.budget.left()
        if left is not None:
            parts.append(f"budget left {duration(left)}")
        return ", ".join(parts)

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if self.bar is not None:
            self.bar.total = state.max_steps
            self.bar.update(state.global_step - self.bar.n)
            step_s = self.budget.step_seconds()
            postfix = {"loss": f"{self.loss:.4f}" if self.loss is not None else "-"}
            if step_s:
                postfix["eta"] = duration(max(0, state.max_steps - state.global_step) * step_s)
            self.bar.set_postfix(postfix, refresh=False)
        if self.every():
            say(f"[02] {self._status(state)}")

    def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if self.bar is not None:
            self.bar.close()
        say(f"[02] training ended: {self._status(state)}")


class CheckpointMeta(TrainerCallback):
    """Copy the fingerprint, plan and wandb files into every checkpoint as it is saved, so a checkpoint taken out of
    the session (a Kaggle dataset) still says what wrote it."""

    def __init__(self, ckpt_dir: Path) -> None:
        self.ckpt_dir = Path(ckpt_dir)

    def on_save(self, args, state, control, **kwargs):  # noqa: ANN001
        copy_meta_into(self.ckpt_dir, self.ckpt_dir / f"checkpoint-{state.global_step}")
