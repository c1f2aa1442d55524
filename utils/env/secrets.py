"""Secrets (the wandb key, the Hugging Face token) from the environment or the notebook host's secret store.

Looked up in this order: the environment variable, a Kaggle secret of the same name (Add-ons -> Secrets, attached to
the notebook), a Colab secret (the key icon, notebook access granted). Never from a notebook parameter or a file in
the repository, and never printed: callers pass the value straight to the library that needs it.
"""

from __future__ import annotations

import os

#: Names an HF token may have in the environment (the first found wins); secrets are looked up as ``HF_TOKEN``.
HF_TOKEN_NAMES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


def _from_kaggle(name: str) -> str | None:
    """The Kaggle secret ``name`` when running on Kaggle with it attached."""
    if not os.environ.get("KAGGLE_KERNEL_RUN_TYPE"):
        return None
    try:
        from kaggle_secrets import UserSecretsClient  # type: ignore[import-not-found]

        return UserSecretsClient().get_secret(name) or None
    except Exception:  # not attached, no network to the secret service: treated as absent
        return None


def _from_colab(name: str) -> str | None:
    """The Colab secret ``name`` when running on Colab with notebook access granted."""
    try:
        from google.colab import userdata  # type: ignore[import-not-found]

        return userdata.get(name) or None
    except Exception:
        return None


def get_secret(name: str, env_names: tuple[str, ...] = ()) -> str | None:
    """The secret ``name``: environment (``name`` and ``env_names``), then Kaggle, then Colab; None if absent."""
    for var in (name, *env_names):
        value = os.environ.get(var, "").strip()
        if value:
            return value
    return _from_kaggle(name) or _from_colab(name)


def hf_token() -> str | None:
    """The Hugging Face token (``HF_TOKEN``), or None: public models need none, gated ones (PaliGemma) do."""
    return get_secret("HF_TOKEN", HF_TOKEN_NAMES[1:])


def wandb_key() -> str | None:
    """The wandb API key (``WANDB_API_KEY``), or None."""
    return get_secret("WANDB_API_KEY")


def secrets_for_children() -> dict[str, str]:
    """``HF_TOKEN`` and ``WANDB_API_KEY`` as found by this process (environment, Kaggle or Colab secret), for the
    environment of the processes it starts: a notebook kernel started by papermill on Colab has no frontend to
    answer ``google.colab.userdata.get``, so ``run_all.sh`` reads the secrets once in its own process and hands
    them down (only through the environment: never into a notebook, its parameters or a log)."""
    found = {"HF_TOKEN": hf_token(), "WANDB_API_KEY": wandb_key()}
    return {name: value for name, value in found.items() if value}
