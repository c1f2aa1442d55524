"""The one small interface both backends implement, and a registry that imports them only when asked.

``get_backend("paligemma")`` imports ``utils.models.paligemma.backend`` (torch, transformers) and
``get_backend("ocr")`` imports ``utils.models.ocr.backend`` (onnxruntime, openvino, rapidocr) only at that moment,
so importing this module (or ``utils.pipeline.predict``) stays cheap and works on a machine that has only one
backend's dependencies.

A backend of your own plugs in without editing this file: ``register_backend("mine", "my_pkg.mod:MyBackend")`` in
Python, or, for ``run_all.sh`` and its notebook processes, the environment variable
``PRODUCT_VALUES_BACKENDS="mine=my_pkg.mod:MyBackend"`` (comma-separated for several).
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import pandas as pd

#: backend name -> "module:ClassName", imported lazily by :func:`get_backend`.
BACKENDS: dict[str, str] = {
    "paligemma": "utils.models.paligemma.backend:PaliGemmaBackend",
    "ocr": "utils.models.ocr.backend:OcrBackend",
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


def get_backend(name: str, **kwargs: Any) -> Backend:
    """A new instance of the backend called ``name`` (``"paligemma"`` or ``"ocr"``); ``kwargs`` go to its class.

    Raises ``ValueError`` listing the choices for an unknown name, and ``ImportError`` naming the module when the
    backend's dependencies are not installed.
    """
    return backend_class(name)(**kwargs)
