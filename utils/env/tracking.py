"""Experiment tracking with wandb that never hangs on a missing network.

The mode is chosen explicitly: ``WANDB_MODE`` when the user set it; otherwise ``online`` only when an API key is
found (environment, Kaggle secrets or Colab secrets), else ``offline`` (runs are kept on disk and can be synced
later with ``wandb sync``). Keys are never read from parameters or files in the repository.
"""

from __future__ import annotations

import os
from typing import Any

from utils.env.console import say
from utils.env.network import reachable
from utils.env.secrets import hf_token, wandb_key

VALID_MODES = ("online", "offline", "disabled")
DEFAULT_BASE_URL = "https://api.wandb.ai"
#: Seconds to wait for wandb's server before logging offline instead (wandb's own init would wait 90 s, then fail).
REACH_TIMEOUT_S = 5.0


class NullRun:
    """What ``init_run`` returns in ``disabled`` mode: the run methods the suite uses, doing nothing.

    It needs no wandb installed, so a machine without wandb (a bare GPU box, a minimal CI) still trains.
    """

    def __init__(self, config: dict[str, Any] | None = None) -> None:
        self.config = dict(config or {})
        self.summary: dict[str, Any] = {}
        self.history: list[dict[str, Any]] = []
        self.url: str | None = None
        self.id: str | None = None
        self.name: str | None = None

    def log(self, data: dict[str, Any], step: int | None = None, commit: bool | None = None) -> None:
        """Keep the logged values in memory (handy in tests); nothing is sent or written."""
        self.history.append(dict(data))

    def finish(self, exit_code: int | None = None) -> None:
        """Nothing to close."""


def find_api_key() -> str | None:
    """The wandb key from the environment or the notebook host's secret store, or None."""
    return wandb_key()


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


def server_reachable(timeout: float = REACH_TIMEOUT_S) -> bool:
    """Whether wandb's server (``WANDB_BASE_URL``, default api.wandb.ai) can be reached within ``timeout``: a Kaggle
    notebook with Internet off and a key in its secrets would otherwise spend wandb's 90 s init timeout and then
    fail the fit."""
    return reachable(os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL, timeout)


#: Config keys that are never sent to wandb (whatever their value): secrets belong in the environment.
SECRET_KEY_WORDS = ("token", "api_key", "apikey", "secret", "password")


def scrub(config: Any) -> Any:
    """``config`` without secrets: keys naming one (``SECRET_KEY_WORDS``) are dropped, and any value equal to a
    secret this process knows (the HF token, the wandb key) is replaced by ``"<secret>"``, at any depth."""
    known = {s for s in (hf_token(), wandb_key()) if s}

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()
                    if not any(word in str(k).lower() for word in SECRET_KEY_WORDS)}
        if isinstance(value, (list, tuple)):
            return type(value)(clean(v) for v in value)
        if isinstance(value, str) and any(secret in value for secret in known):
            return "<secret>"
        return value

    return clean(config)


def init_run(
    project: str,
    config: dict[str, Any],
    job_type: str,
    mode: str | None = None,
    name: str | None = None,
    dir: str | os.PathLike[str] | None = None,
    run_id: str | None = None,
) -> Any:
    """Start a wandb run in a mode that cannot hang; returns the run (a ``NullRun`` when disabled).

    ``run_id`` continues that run (``resume="allow"``): a fine-tune that spans several notebook sessions logs into
    one run. The config is passed through ``scrub`` first, so no secret ever reaches wandb.
    """
    chosen = wandb_mode(mode)
    if chosen == "online" and not server_reachable():
        where = os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL
        say(f"wandb: {where} cannot be reached (no internet?): logging offline into {dir or 'wandb/'}; "
            "`wandb sync` uploads the run later")
        chosen = "offline"
    os.environ["WANDB_MODE"] = chosen  # the HF Trainer's wandb callback reads it too
    config = scrub(config)
    if chosen == "disabled":
        run = NullRun(config)
        run.id = run_id
        return run
    import wandb

    key = find_api_key()
    if chosen == "online" and key and not os.environ.get("WANDB_API_KEY"):
        os.environ["WANDB_API_KEY"] = key  # secret store -> this process only
    if dir is not None:
        os.makedirs(dir, exist_ok=True)
    extra: dict[str, Any] = {"id": run_id, "resume": "allow"} if run_id else {}
    return wandb.init(
        project=project,
        config=config,
        job_type=job_type,
        mode=chosen,
        name=name,
        dir=str(dir) if dir is not None else None,
        reinit="finish_previous",
        **extra,
    )
