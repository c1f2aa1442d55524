"""Experiment tracking with wandb that never hangs on a missing network.

The mode is chosen explicitly: ``WANDB_MODE`` when the user set it; otherwise ``online`` only when an API key is
found (environment, Kaggle secrets or Colab secrets), else ``offline`` (runs are kept on disk and can be synced
later with ``wandb sync``). Keys are never read from parameters or files in the repository.
"""

from __future__ import annotations

import os
from typing import Any

VALID_MODES = ("online", "offline", "disabled")


class NullRun:
    """What ``init_run`` returns in ``disabled`` mode: the run methods the suite uses, doing nothing.

    It needs no wandb installed, so a machine without wandb (a bare GPU box, a minimal CI) still trains.
    """

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.config = dict(config or {})
        self.summary: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.url: str | None = None

    def log(self, data: dict[str, Any], step: int | None = None, commit: bool | None = None) -> None:
        """Keep the logged values in memory (handy in tests); nothing is sent or written."""
        self.history.append(dict(data))

    def finish(self, exit_code: int | None = None) -> None:
        """Nothing to close."""


def _key_from_kaggle() -> str | None:
    """The ``WANDB_API_KEY`` Kaggle secret, when running on Kaggle with it attached."""
    if not os.environ.get("KAGGLE_KERNEL_RUN_TYPE"):
        return None
    try:
        from kaggle_secrets import UserSecretsClient  # type: ignore[import-not-found]

        return UserSecretsClient().get_secret("WANDB_API_KEY") or None
    except Exception:
        return None


def _key_from_colab() -> str | None:
    """The ``WANDB_API_KEY`` Colab secret, when running on Colab with notebook access granted."""
    try:
        from google.colab import userdata  # type: ignore[import-not-found]

        return userdata.get("WANDB_API_KEY") or None
    except Exception:
        return None


def find_api_key() -> str | None:
    """The wandb key from the environment or the notebook host's secret store, or None."""
    return os.environ.get("WANDB_API_KEY") or _key_from_kaggle() or _key_from_colab()


def wandb_mode(requested: str | None = None) -> str:
    """Decide the wandb mode: an explicit request, then ``WANDB_MODE``, then online-with-key or offline."""
    mode = (requested or os.environ.get("WANDB_MODE") or "").strip().lower()
    if mode in ("dryrun",):
        mode = "offline"
    if mode:
        if mode not in VALID_MODES:
            raise ValueError(f"wandb mode must be one of {VALID_MODES}, got {mode!r}")
        if mode == "online" and not find_api_key():
            raise ValueError(
                "wandb mode 'online' needs WANDB_API_KEY (environment, Kaggle or Colab secret); "
                "use 'offline' or 'disabled' to run without one"
            )
        return mode
    return "online" if find_api_key() else "offline"


def init_run(
    project: str,
    config: dict[str, Any],
    job_type: str,
    mode: str | None = None,
    name: str | None = None,
    dir: str | os.PathLike[str] | None = None,
) -> Any:
    """Start a wandb run in a mode that cannot hang; returns the run (a ``NullRun`` when disabled)."""
    chosen = wandb_mode(mode)
    os.environ["WANDB_MODE"] = chosen  # the HF Trainer's wandb callback reads it too
    if chosen == "disabled":
        return NullRun(config)
    import wandb

    key = find_api_key()
    if chosen == "online" and key and not os.environ.get("WANDB_API_KEY"):
        os.environ["WANDB_API_KEY"] = key  # secret store -> this process only
    if dir is not None:
        os.makedirs(dir, exist_ok=True)
    return wandb.init(
        project=project,
        config=config,
        job_type=job_type,
        mode=chosen,
        name=name,
        dir=str(dir) if dir is not None else None,
        reinit="finish_previous",
    )
