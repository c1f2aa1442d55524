"""The one small interface both backends implement, and a registry that imports them only when asked.

``get_backend("paligemma")`` imports ``utils.models.paligemma.backend`` (torch, transformers) and
``get_backend("ocr")`` imports ``utils.models.ocr.backend`` (onnxruntime, openvino, rapidocr) only at that moment,
so importing this module (or ``utils.pipeline.predict``) stays cheap and works on a machine that has only one
backend's dependencies.

What a backend declares on its class, besides ``fit`` and ``predict`` (all optional; the pipeline reads them through
the functions below and never names a backend): ``fit_settings`` / ``infer_settings`` (the dataclasses whose fields
are its settings, ``utils.models.settings``), ``uses_gpu``, ``label_table_setting``, ``threads_setting`` (the
predict setting that gets a shard's ``--threads``), ``speed_settings`` (predict settings that change how fast answers
come, not which), ``run_environment(work_dir)`` (environment variables for the notebooks of a run) and ``warm``.

A backend of your own plugs in without editing this file: ``register_backend("mine", "my_pkg.mod:MyBackend")`` in
Python, or, for ``run_all.sh`` and its notebook processes, the environment variable
``PRODUCT_VALUES_BACKENDS="mine=my_pkg.mod:MyBackend"`` (comma-separated for several).
"""

from __future__ import annotations

import importlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pandas as pd

from utils.models.settings import STAGES, Setting, check, describe, settings_of

#: The backend of a run that names none (CPU, offline, no download).
DEFAULT_BACKEND = "ocr"
#: backend name -> "module:ClassName", imported lazily by :func:`get_backend`.
BACKENDS: dict[str, str] = {
    "paligemma": "utils.models.paligemma.backend:PaliGemmaBackend",
    "ocr": "utils.models.ocr.backend:OcrBackend",
    "vlm": "utils.models.vlm.backend:VlmBackend",
}
PLUGIN_ENV = "PRODUCT_VALUES_BACKENDS"
#: A backend's fit may write this JSON into its artifact folder, for stage 02's display: ``settings``,
#: ``metrics`` (``val_f1`` among them), ``history`` (``[{"step": ..., "loss": ...}]``), ``trainable_params``.
FIT_SUMMARY = "fit_summary.json"
#: ... and this one when the fit stopped before its end: ``{"complete": false, ...}`` (stage 02 then continues it).
FIT_STATUS = "fit_status.json"


def _plugins() -> dict[str, str]:
    """Backends named in ``PRODUCT_VALUES_BACKENDS`` (``name=module:Class,...``)."""
    found = {}
    for item in os.environ.get(PLUGIN_ENV, "").split(","):
        name, _, target = item.strip().partition("=")
        if name and ":" in target:
            found[name.strip()] = target.strip()
    return found


@runtime_checkable
class Backend(Protocol):
    """A model that can be fitted on train rows and answer test rows, batch by batch."""

    name: str

    def fit(self, train: pd.DataFrame, val: pd.DataFrame, image_dir: Path, out_dir: Path, **settings: Any) -> Path:
        """Fit on ``train`` (validating on ``val``); write the artifact folder under ``out_dir`` and return it."""
        ...

    def predict(
        self, rows: pd.DataFrame, image_dir: Path, artifact_dir: Path, **settings: Any
    ) -> Iterator[list[tuple[int, str]]]:
        """Yield one list of ``(index, raw answer)`` per batch; ``""`` for a row whose image is missing (or a guess
        from the training labels, when the backend makes one: the ocr backend's ``prior_answer``)."""
        ...


def available_backends() -> tuple[str, ...]:
    """The registered backend names (built in, registered, and named in ``PRODUCT_VALUES_BACKENDS``)."""
    return tuple(sorted({**_plugins(), **BACKENDS}))


def register_backend(name: str, target: str) -> None:
    """Register (or replace) a backend as ``"module:ClassName"``; it is imported on first use."""
    if ":" not in target:
        raise ValueError(f"backend target must look like 'package.module:ClassName', got {target!r}")
    BACKENDS[name] = target


def backend_class(name: str) -> type:
    """The class registered as ``name``, imported now (``ValueError`` / ``ImportError`` as ``get_backend``)."""
    known = {**_plugins(), **BACKENDS}
    if name not in known:
        raise ValueError(f"unknown backend {name!r}; choose one of: {', '.join(available_backends())}")
    module_name, _, class_name = known[name].partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ImportError(f"backend {name!r} needs {module_name}, which could not be imported: {exc}") from exc
    try:
        return getattr(module, class_name)
    except AttributeError:
        raise ImportError(f"backend {name!r}: {module_name} has no class {class_name}") from None


def uses_gpu(name: str) -> bool:
    """Whether backend ``name`` computes on a GPU when there is one (its class's ``uses_gpu``; default False): the
    runner then gives each shard its own GPU."""
    return bool(getattr(backend_class(name), "uses_gpu", False))


def label_table_setting(name: str) -> str | None:
    """The fit setting through which backend ``name`` reads the whole labelled training table (its class's
    ``label_table_setting``; default None): stage 02 passes ``train.csv`` there when the user did not, so that a fit
    on a sample still learns from every label (the ocr backend's value and unit priors: ``prior_csv``)."""
    return getattr(backend_class(name), "label_table_setting", None)


def threads_setting(name: str) -> str | None:
    """The predict setting of backend ``name`` that gets a shard's CPU threads (``--threads``) unless the user set
    it (the ocr backend's ``workers``: OCR processes of one thread each); None: the threads only cap math
    libraries."""
    return getattr(backend_class(name), "threads_setting", None)


def speed_settings(name: str) -> frozenset[str]:
    """Predict settings of backend ``name`` that change how fast answers come, not which (left out of a shard's run
    record, so a smaller batch after running out of memory keeps the answers already written)."""
    return frozenset(getattr(backend_class(name), "speed_settings", ()))


def run_environment(name: str, work_dir: str | Path) -> dict[str, str]:
    """Environment variables backend ``name`` wants for the notebooks of a run on ``work_dir`` (a cache folder
    shared by the shards); the runner sets them unless already set."""
    hook = getattr(backend_class(name), "run_environment", None)
    return {str(k): str(v) for k, v in (hook(Path(work_dir)) if hook else {}).items()}


def settings_defined(name: str, stage: str) -> dict[str, Setting] | None:
    """The settings backend ``name`` accepts for ``stage`` ("fit" or "infer"), by name; None when the backend
    declares none (then any name passes to it unchecked)."""
    if stage not in STAGES:
        raise ValueError(f"stage must be one of {STAGES}, got {stage!r}")
    types = getattr(backend_class(name), f"{stage}_settings", None)
    return settings_of(*types) if types is not None else None


def check_settings(name: str, stage: str, settings: dict[str, Any]) -> None:
    """``SettingsError`` in one line for an unknown name (with the closest valid one and all of them) or a value of
    the wrong type among ``settings`` of ``stage`` for backend ``name``."""
    defined = settings_defined(name, stage)
    if defined is not None:
        check(settings, defined, f"{stage} setting of backend {name!r}")


def describe_settings(name: str) -> str:
    """Every setting of backend ``name``, per stage: name, type, default and help (``run_all.sh --help-backend``)."""
    cls = backend_class(name)
    parts = [f"backend {name!r}: {(cls.__doc__ or '').strip().splitlines()[0] if cls.__doc__ else ''}".rstrip()]
    for stage, flag in (("fit", "--fit-settings"), ("infer", "--infer-settings")):
        defined = settings_defined(name, stage)
        if defined is None:
            parts.append(f"{stage} settings ({flag}): not declared; passed to the backend as given")
        else:
            parts.append(describe(defined, f"{stage} settings ({flag} JSON; {len(defined)} names):"))
    return "\n\n".join(parts)


def get_backend(name: str, **kwargs: Any) -> Backend:
    """A new instance of the backend called ``name`` (``"paligemma"`` or ``"ocr"``); ``kwargs`` go to its class.

    Raises ``ValueError`` listing the choices for an unknown name, and ``ImportError`` naming the module when the
    backend's dependencies are not installed.
    """
    return backend_class(name)(**kwargs)


def read_fit_status(artifact: Path) -> dict[str, Any]:
    """What a fit said about itself (``fit_status.json`` in its artifact: ``complete`` false when it stopped early,
    e.g. at the time budget); ``{"complete": True}`` for a backend that writes none."""
    try:
        status = json.loads((artifact / FIT_STATUS).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"complete": True}
    return status if isinstance(status, dict) else {"complete": True}


def read_fit_summary(artifact: Path) -> dict[str, Any]:
    """``fit_summary.json`` of an artifact (``utils.models.backend.FIT_SUMMARY``), or {} when the backend wrote none."""
    try:
        summary = json.loads((artifact / FIT_SUMMARY).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return summary if isinstance(summary, dict) else {}
