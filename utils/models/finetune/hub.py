"""Where the base model's weights come from, and one clear sentence when they cannot be had.

``resolve_model_source`` decides, in this order:

1. ``model_id`` is a local folder: load it (no network).
2. On Kaggle, the model added to the notebook as an input is mounted at
   ``/kaggle/input/<model>/transformers/<variation>/<version>/`` with a ``config.json``; a variation named like the
   hub id's last part (``paligemma-3b-ft-docvqa-448``) is loaded from there (no download, no token).
3. The hub id is already in the Hugging Face cache for the wanted revision: load it with ``local_files_only`` (no
   network, no token).
4. Otherwise download it, with the token from ``utils.env.secrets.hf_token`` (environment ``HF_TOKEN``, Kaggle or Colab
   secret). PaliGemma is gated: the token's account must have accepted the licence on the model page.

The product never sets ``HF_HUB_OFFLINE`` itself: it is offline exactly when the model is local or cached. Failures
(no token, licence not accepted, no network, offline and not cached) become ``ModelAccessError`` with one sentence
saying what to do; the token itself is never printed or stored.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from utils.env.console import say
from utils.env.network import reachable
from utils.env.secrets import hf_token

KAGGLE_INPUT = Path("/kaggle/input")
KAGGLE_INPUT_ENV = "KAGGLE_INPUT_DIR"  # where Kaggle mounts inputs (tests point it at a temporary root)
#: Hub repositories that publish ``float16`` / ``bfloat16`` branches beside the float32 ``main``.
DTYPE_BRANCH_PREFIXES = ("google/paligemma",)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelAccessError(RuntimeError):
    """The base model cannot be loaded; the message says in one sentence what to do."""


@dataclass(frozen=True)
class ModelSource:
    """What ``from_pretrained`` gets: a local folder, or a hub id with a revision and whether to stay offline."""

    model_id: str  # as asked
    location: str  # a local folder or the hub id
    revision: str | None  # hub revision (branch or commit); None for main or a local folder
    local_files_only: bool  # no network: a local folder or a cached hub snapshot
    where: str  # "local folder" | "Kaggle input" | "hub cache" | "hub download"

    def load_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``from_pretrained``; the token is read here, only when a download may happen."""
        kwargs: dict[str, Any] = {"local_files_only": self.local_files_only}
        if self.revision and self.where.startswith("hub"):
            kwargs["revision"] = self.revision
        if not self.local_files_only:
            token = hf_token()
            if token:
                kwargs["token"] = token
        return kwargs

    def describe(self) -> str:
        """One line for the log: where the weights come from (never the token)."""
        rev = f" (revision {self.revision})" if self.revision and self.where.startswith("hub") else ""
        return f"base model {self.model_id}: {self.where} {self.location}{rev}"


def is_hub_id(model_id: str) -> bool:
    """Whether ``model_id`` looks like ``owner/name`` rather than a path."""
    return bool(_HUB_ID.match(model_id)) and not model_id.startswith((".", "/", "~"))


def dtype_revision(model_id: str, dtype_name: str) -> str | None:
    """The hub branch holding weights already in the compute dtype (half the download and disk of float32), for
    repositories known to publish them; None (main) otherwise."""
    if not model_id.startswith(DTYPE_BRANCH_PREFIXES):
        return None
    return {"float16": "float16", "bfloat16": "bfloat16"}.get(dtype_name)


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def _version_key(name: str) -> tuple[int, str]:
    return (int(name), name) if name.isdigit() else (-1, name)


def kaggle_input_root() -> Path:
    """Where Kaggle mounts the notebook's inputs (``$KAGGLE_INPUT_DIR`` or ``/kaggle/input``)."""
    return Path(os.environ.get(KAGGLE_INPUT_ENV) or KAGGLE_INPUT)


def find_kaggle_model(model_id: str, root: Path | None = None) -> Path | None:
    """The newest mounted ``<root>/<model>/transformers/<variation>/<version>/`` whose variation is named like the
    hub id's last part and which holds a ``config.json``; None when there is none."""
    root = kaggle_input_root() if root is None else Path(root)
    if not root.is_dir():
        return None
    want = _norm(model_id.rsplit("/", 1)[-1])
    hits: list[tuple[tuple[int, str], Path]] = []
    for config in list(root.glob("*/*/*/*/config.json")) + list(root.glob("*/*/*/*/*/config.json")):
        parts = config.parent.relative_to(root).parts
        framework, variation, version = parts[1], parts[2], parts[3]
        if framework.lower() == "transformers" and _norm(variation) == want:
            hits.append((_version_key(version), config.parent))
    return max(hits)[1] if hits else None


def _offline_env() -> bool:
    """Whether the user put huggingface_hub in offline mode (``HF_HUB_OFFLINE`` or ``TRANSFORMERS_OFFLINE``)."""
    from huggingface_hub import constants

    return bool(constants.is_offline_mode())


def is_cached(model_id: str, revision: str | None = None) -> bool:
    """Whether the config and every weight file of ``model_id`` at ``revision`` are in the local HF cache."""
    from huggingface_hub import try_to_load_from_cache

    def cached(filename: str) -> str | None:
        found = try_to_load_from_cache(model_id, filename, revision=revision)
        return found if isinstance(found, str) else None

    if cached("config.json") is None:
        return False
    index = cached("model.safetensors.index.json")
    if index is not None:
        try:
            shards = set(json.loads(Path(index).read_text())["weight_map"].values())
        except (OSError, ValueError, KeyError):
            return False
        return all(cached(shard) is not None for shard in shards)
    return cached("model.safetensors") is not None


def resolve_model_source(model_id: str, revision: str | None = None) -> ModelSource:
    """Where to load ``model_id`` from (see the module docstring); ``ModelAccessError`` when it is a path that does
    not exist, or when the hub must be reached while ``HF_HUB_OFFLINE`` is set."""
    path = Path(os.path.expanduser(str(model_id)))
    if path.is_dir():
        return ModelSource(model_id, str(path), None, True, "local folder")
    if not is_hub_id(str(model_id)):
        raise ModelAccessError(f"model_id {model_id!r} is neither an existing folder nor a hub id like "
                               "'google/paligemma-3b-ft-docvqa-448': fix the path or the id")
    mounted = find_kaggle_model(model_id)
    if mounted is not None:
        return ModelSource(model_id, str(mounted), None, True, "Kaggle input")
    if is_cached(model_id, revision):
        return ModelSource(model_id, model_id, revision, True, "hub cache")
    if _offline_env():
        raise ModelAccessError(
            f"{model_id} (revision {revision or 'main'}) is not in the Hugging Face cache and HF_HUB_OFFLINE is set: "
            "unset HF_HUB_OFFLINE so it can be downloaded once, add it to the notebook as a Kaggle model input, or "
            "pass model_id=<a local folder>")
    if not _reachable():
        raise ModelAccessError(_NO_NETWORK_SENTENCE.format(model_id=model_id))
    return ModelSource(model_id, model_id, revision, False, "hub download")


def _reachable(timeout: float = 5.0) -> bool:
    """Whether the hub's host accepts a connection (checked once before a download, so a notebook without
    internet fails in seconds rather than after the library's retries); True behind a proxy (not probed)."""
    from huggingface_hub import constants

    return reachable(constants.ENDPOINT, timeout)


_NO_NETWORK_SENTENCE = (
    "{model_id} could not be downloaded (no network, or HF_HUB_OFFLINE is set) and is not cached: turn on the "
    "notebook's internet (Kaggle: Settings -> Internet on), or add the model as a Kaggle model input, or pass "
    "model_id=<a local folder>")
_NO_NETWORK = ("couldn't connect", "could not connect", "connection", "name or service not known",
               "temporary failure in name resolution", "network is unreachable", "offline", "timed out")


def exception_chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and every exception it was raised from or during, at any depth (each once)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo += [e.__cause__, e.__context__]


def _status(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    code = getattr(response, "status_code", None)
    return int(code) if isinstance(code, int) else None


def explain(exc: BaseException, model_id: str, revision: str | None = None) -> str | None:
    """One sentence for a failed model download or load, or None when ``exc`` is not about reaching the model."""
    from huggingface_hub import errors

    page = f"https://huggingface.co/{model_id}"
    has_token = hf_token() is not None
    chain = list(exception_chain(exc))
    for e in chain:
        if isinstance(e, errors.GatedRepoError) and not has_token:  # the hub's answer to an anonymous request
            return (f"{model_id} is gated and needs a Hugging Face token, and none was found: accept the licence "
                    f"at {page}, create a read token at https://huggingface.co/settings/tokens, and add it as "
                    "HF_TOKEN (environment, Kaggle secret or Colab secret), then run again")
        if isinstance(e, errors.GatedRepoError) or _status(e) == 403:
            return (f"{model_id} is gated and the Hugging Face token was not given access: accept the licence at "
                    f"{page} with the account the HF_TOKEN belongs to, then run again")
        if isinstance(e, errors.RevisionNotFoundError):
            return (f"{model_id} has no revision {revision!r}: set the setting revision to 'main' (float32) or "
                    "to a branch the model page lists")
        if _status(e) == 401 or isinstance(e, errors.RepositoryNotFoundError):
            if not has_token:
                return (f"{model_id} needs a Hugging Face token and none was found: create a read token at "
                        "https://huggingface.co/settings/tokens, accept the licence at "
                        f"{page}, and add the token as HF_TOKEN (environment, Kaggle secret or Colab secret)")
            return (f"the Hugging Face token in HF_TOKEN was refused for {model_id} (wrong, expired or without "
                    f"access): make a new read token at https://huggingface.co/settings/tokens and accept the "
                    f"licence at {page}")
    for e in chain:
        text = str(e).lower()
        if isinstance(e, errors.LocalEntryNotFoundError) or type(e).__name__ in (
                "OfflineModeIsEnabled", "ConnectError", "ConnectTimeout", "ConnectionError") \
                or any(word in text for word in _NO_NETWORK):
            return _NO_NETWORK_SENTENCE.format(model_id=model_id)
    return None


@contextmanager
def offline(enabled: bool = True) -> Iterator[None]:
    """Inside the block, when ``enabled``, libraries do not reach the hub (``HF_HUB_OFFLINE``): the model came from a
    local folder or the cache, so nothing is missing, and peft would otherwise ask the hub for the base model's
    config at every checkpoint save (a request per save, a timeout each without internet). Restored afterwards."""
    if not enabled:
        yield
        return
    from huggingface_hub import constants

    before_env, before_const = os.environ.get("HF_HUB_OFFLINE"), constants.HF_HUB_OFFLINE
    os.environ["HF_HUB_OFFLINE"], constants.HF_HUB_OFFLINE = "1", True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before_const
        if before_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = before_env


@contextmanager
def explained(model_id: str, revision: str | None = None) -> Iterator[None]:
    """Turn hub failures inside the block into ``ModelAccessError`` (the original kept as its cause)."""
    try:
        yield
    except ModelAccessError:
        raise
    except Exception as exc:
        message = explain(exc, model_id, revision)
        if message is None:
            raise
        raise ModelAccessError(message) from exc


def from_source(loader: Any, model_id: str | Path, revision: str | None = None, fallback_to_main: bool = False,
                **kwargs: Any):
    """``loader.from_pretrained`` for ``model_id`` wherever it is (``resolve_model_source``: a local folder, a Kaggle
    model input, the HF cache, or a download with the HF token), hub failures turned into one-line
    ``ModelAccessError``s. ``fallback_to_main``: a missing ``revision`` branch falls back to main, with a note."""
    from huggingface_hub.errors import RevisionNotFoundError

    source = resolve_model_source(str(model_id), revision)
    try:
        with explained(str(model_id), revision):
            return loader.from_pretrained(source.location, **source.load_kwargs(), **kwargs)
    except Exception as exc:
        # transformers wraps the hub's error in an OSError and ``explained`` wraps that again: look at every level
        missing = any(isinstance(e, RevisionNotFoundError) for e in exception_chain(exc))
        if not (fallback_to_main and revision and missing):
            raise
    say(f"note: {model_id} has no '{revision}' branch; loading main (float32 weights, twice the download)")
    return from_source(loader, model_id, None, **kwargs)
