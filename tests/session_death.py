"""A Trainer callback that kills a fit the way a dying notebook session does (for the resume tests)."""

from __future__ import annotations


class Die:
    """Raises ``KeyboardInterrupt`` at optimizer step ``step`` (after the Trainer saved the checkpoint before it)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def __getattr__(self, name: str):
        return lambda *a, **k: None

    def on_step_end(self, args, state, control, **kwargs):  # noqa: ANN001
        if state.global_step == self.step:
            raise KeyboardInterrupt("session died")
