"""The parameters of each stage, written once: one dataclass per stage, with a default and help for every field.

From these dataclasses come the notebooks' ``parameters`` cells and their calls (``tools/make_notebooks.py``), the
``run_all.sh`` command line and the papermill arguments it passes to each notebook (``utils.pipeline.run``), and the
validation every stage function runs on what it is given. A field's ``flag`` names its command-line option (several
stages share one: ``--work`` feeds every stage's ``work_dir``); ``cli=False`` fields are set by the runner itself
(``shard_index``) or only make sense in a notebook (``interactive``).
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, dataclass, field, fields
from typing import Any, get_type_hints

from utils.models.backend import BACKENDS, DEFAULT_BACKEND

#: The reference approach's scale: about 13,500 training rows, the same number per entity (8 x 1,700 = 13,600).
DEFAULT_PER_ENTITY = 1700
DEFAULT_MAX_MISSING_IMAGES = 0.5
#: Where stage 03 runs: the runner's own queue of shard notebooks, or a Ray cluster.
EXECUTORS = ("local", "ray")


class ParamError(ValueError):
    """A parameter value that cannot work; the message names the parameter (and its command-line flag)."""


def param(default: Any, help: str, flag: str | None = None, cli: bool = True) -> Any:
    """A dataclass field with its help text (one line: it becomes the notebook comment and the ``--help`` text)."""
    if isinstance(default, dict):
        return field(default_factory=lambda: dict(default), metadata={"help": help, "flag": flag, "cli": cli})
    return field(default=default, metadata={"help": help, "flag": flag, "cli": cli})


def flag_of(f: Any) -> str:
    """The command-line option of a field (``--work`` for ``work_dir`` where so named, else ``--per-entity``)."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def _check(cond: bool, f_name: str, message: str, cls: type) -> None:
    if not cond:
        flag = next((flag_of(f) for f in fields(cls) if f.name == f_name and f.metadata.get("cli", True)), None)
        where = f"{f_name} ({flag})" if flag else f_name
        raise ParamError(f"{where} {message}")


def _whole(cls: type, obj: Any, *names: str, minimum: int = 0) -> None:
    for name in names:
        value = getattr(obj, name)
        _check(isinstance(value, int) and not isinstance(value, bool) and value >= minimum, name,
               f"must be a whole number >= {minimum}, got {value!r}", cls)


def _share(cls: type, obj: Any, name: str) -> None:
    value = getattr(obj, name)
    _check(isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
           and 0 <= value <= 1, name, f"must be a share between 0 and 1, got {value!r}", cls)


def _backend(cls: type, obj: Any) -> None:
    from utils.models.backend import available_backends

    _check(obj.backend in available_backends(), "backend",
           f"must be one of {', '.join(available_backends())}, got {obj.backend!r}", cls)


def _settings(cls: type, obj: Any, stage: str) -> None:
    """``settings`` is a JSON object whose names and types the backend defines for ``stage`` (``fit``/``infer``)."""
    from utils.models.backend import check_settings
    from utils.models.settings import SettingsError

    _check(isinstance(obj.settings, dict), "settings", f"must be a JSON object, got {obj.settings!r}", cls)
    try:
        check_settings(obj.backend, stage, obj.settings)
    except SettingsError as exc:
        _check(False, "settings", f"{exc} (bash run_all.sh --help-backend {obj.backend} lists them)", cls)


GUESS_HELP = ("rows without a usable image (missing, a folder, not a file) get the backend's guess (a backend may "
              "answer the product group's commonest label) instead of ''")


@dataclass
class PrepareParams:
    """Stage 01: load and validate the CSVs, find or download the images, sample, split, write the tables."""

    train_csv: str = param("", 'train CSV; empty: found for this machine, "demo": the built-in demo data')
    test_csv: str = param("", "test CSV; empty: beside train.csv (or the demo's)")
    labels_csv: str = param("", "answers for the test rows, scored in 04; empty: none (the demo brings its own)")
    image_dir: str = param("", "image cache; empty: <data>/images when present, else <work_dir>/images",
                           flag="--images")
    work_dir: str = param("", "where the stages hand over; empty: /kaggle/working/work, /content/work or <repo>/work",
                          flag="--work")
    per_entity: int = param(DEFAULT_PER_ENTITY, "training rows sampled per entity (reference: ~13,500 in all); "
                                                "0: every row")
    balance_units: bool = param(False, "also balance the units within each entity")
    val_fraction: float = param(0.1, "share of product groups held out for validation")
    seed: int = param(0, "random seed for the demo, the sample and the split")
    download: bool = param(True, "download missing images (when the network allows)")
    image_max_side: int = param(0, "store downloaded images with at most this longest side in pixels (re-encoded; "
                                   "896 or 1280: what the GPU or the CPU backend reads); 0: as downloaded")
    max_missing_images: float = param(DEFAULT_MAX_MISSING_IMAGES,
                                      "fail when more than this share of the images is missing; 1: never fail")
    guess_without_image: bool = param(False, GUESS_HELP)
    demo_train: int = param(0, "demo training rows; 0: the demo's default")
    demo_test: int = param(0, "demo test rows; 0: the demo's default")

    def __post_init__(self) -> None:
        _whole(PrepareParams, self, "per_entity", "seed", "demo_train", "demo_test", "image_max_side")
        _share(PrepareParams, self, "max_missing_images")
        _check(isinstance(self.val_fraction, (int, float)) and 0 <= self.val_fraction < 1, "val_fraction",
               f"must be in [0, 1), got {self.val_fraction!r}", PrepareParams)


@dataclass
class FitParams:
    """Stage 02: fit the backend on the prepared tables (a fine-tune, or the fit of a CPU model)."""

    backend: str = param(DEFAULT_BACKEND, f"one of {', '.join(sorted(BACKENDS))} or a plug-in (bash run_all.sh "
                                          "--help-backend NAME says what it is and lists its settings)")
    work_dir: str = param("", "where the stages hand over; empty: /kaggle/working/work, /content/work or <repo>/work",
                          flag="--work")
    artifact_dir: str = param("", "where the fitted model is saved; empty: <work_dir>/artifacts/<backend>")
    image_dir: str = param("", "image cache; empty: the one stage 01 used", flag="--images")
    refit: bool = param(False, "fit again even when a finished fit with the same data and settings exists")
    settings: dict = param({}, "the backend's fit settings by name (JSON object); every name with its type, default "
                               "and help: bash run_all.sh --help-backend NAME", flag="--fit-settings")

    def __post_init__(self) -> None:
        _backend(FitParams, self)
        _settings(FitParams, self, "fit")


@dataclass
class InferParams:
    """Stage 03: predict one shard of the test set (resumable), into ``<work_dir>/shards``."""

    shard_index: int = param(0, "which shard this run predicts, 0 .. num_shards - 1", cli=False)
    num_shards: int = param(4, "how many shards the test set is cut into", flag="--shards")
    backend: str = param(DEFAULT_BACKEND, f"one of {', '.join(sorted(BACKENDS))} or a plug-in; the one stage 02 "
                                          "fitted")
    work_dir: str = param("", "where the stages hand over; empty: /kaggle/working/work, /content/work or <repo>/work",
                          flag="--work")
    artifact_dir: str = param("", "the fitted model's folder; empty: the one stage 02 wrote")
    image_dir: str = param("", "image cache; empty: the one stage 01 used", flag="--images")
    shards_dir: str = param("", "where shard files go; empty: <work_dir>/shards")
    test_csv: str = param("", "test CSV (for a separate session); empty: the test table stage 01 wrote", cli=False)
    num_threads: int = param(1, "CPU threads for this shard (math libraries; a CPU backend's worker processes)",
                             flag="--threads")
    batch_size: int = param(0, "rows per batch; 0: the backend's default")
    download: bool = param(True, "first download this shard's missing images (when the network allows)")
    image_max_side: int = param(0, "store downloaded images with at most this longest side in pixels (re-encoded; "
                                   "896 or 1280: what the GPU or the CPU backend reads); 0: as downloaded")
    max_missing_images: float = param(DEFAULT_MAX_MISSING_IMAGES,
                                      "fail when more than this share of the images is missing; 1: never fail")
    guess_without_image: bool = param(False, GUESS_HELP)
    settings: dict = param({}, "the backend's predict settings by name (JSON object); every name: bash run_all.sh "
                               "--help-backend NAME", flag="--infer-settings")
    executor: str = param("local", '"local": this run predicts shard shard_index; "ray": every shard at once on a '
                                   "Ray cluster (utils.pipeline.ray_executor)")
    ray_address: str = param("", 'with executor "ray": "" starts a local Ray instance; "auto", "HOST:6379" or '
                                 '"ray://HOST:10001" joins a running cluster')

    def __post_init__(self) -> None:
        _check(self.executor in EXECUTORS, "executor", f"must be one of {', '.join(EXECUTORS)}, got "
               f"{self.executor!r}", InferParams)
        _whole(InferParams, self, "num_shards", "num_threads", minimum=1)
        _whole(InferParams, self, "batch_size", "shard_index", "image_max_side")
        _check(self.shard_index < self.num_shards, "shard_index",
               f"must be in [0, {self.num_shards}), got {self.shard_index} (num_shards={self.num_shards})",
               InferParams)
        _share(InferParams, self, "max_missing_images")
        _backend(InferParams, self)
        _settings(InferParams, self, "infer")

    def backend_settings(self) -> dict[str, Any]:
        """What the backend's ``predict`` (and ``warm``) get: ``settings``, plus ``batch_size`` when set, and the
        backend's ``threads_setting`` = ``num_threads`` unless the settings name it (``utils.models.backend``)."""
        from utils.models.backend import threads_setting

        out = dict(self.settings)
        if self.batch_size > 0:
            out["batch_size"] = self.batch_size
        threads = threads_setting(self.backend)
        if threads:
            out.setdefault(threads, self.num_threads)
        return out


@dataclass
class PostprocessParams:
    """Stage 04: merge the shards, clean from the raw answers, check, write submission.csv (and the report)."""

    num_shards: int = param(4, "how many shards stage 03 wrote", flag="--shards")
    work_dir: str = param("", "where the stages hand over; empty: /kaggle/working/work, /content/work or <repo>/work",
                          flag="--work")
    out_dir: str = param("", "gets submission.csv and the report; empty: /kaggle/working, /content/out or <repo>/out",
                         flag="--out")
    shards_dir: str = param("", "the shard files; empty: <work_dir>/shards")
    test_csv: str = param("", "test CSV; empty: the test table stage 01 wrote", cli=False)
    labels_csv: str = param("", "answers to score against; empty: those stage 01 recorded (the demo's), if any")
    image_dir: str = param("", "image cache for the report; empty: the one stage 01 used", flag="--images")
    n_worst: int = param(12, "how many worst mistakes to show")
    interactive: bool = param(True, "ipywidgets browser; False: static gallery (papermill, no widget frontend)",
                              cli=False)

    def __post_init__(self) -> None:
        _whole(PostprocessParams, self, "num_shards", minimum=1)
        _whole(PostprocessParams, self, "n_worst")


STAGES: dict[str, type] = {"01": PrepareParams, "02": FitParams, "03": InferParams, "04": PostprocessParams}


def build(cls: type, values: dict[str, Any]) -> Any:
    """``cls(**values)`` for the fields of ``cls`` found in ``values`` (others ignored); ParamError as is."""
    names = {f.name for f in fields(cls)}
    return cls(**{k: v for k, v in values.items() if k in names})


def check_known(cls: type, values: dict[str, Any]) -> None:
    """TypeError naming the unknown keys of ``values`` (a misspelt parameter must not be ignored)."""
    unknown = sorted(set(values) - {f.name for f in fields(cls)})
    if unknown:
        raise TypeError(f"unknown parameter(s) {unknown} for {cls.__name__}; "
                        f"known: {sorted(f.name for f in fields(cls))}")


def type_name(cls: type, name: str) -> str:
    """The annotation of field ``name`` as the notebooks write it (``str``, ``int``, ``float``, ``bool``, ``dict``)."""
    return get_type_hints(cls)[name].__name__


def default_of(f: Any) -> Any:
    """A field's default value (calling its factory)."""
    return f.default_factory() if f.default is MISSING else f.default


def literal(value: Any) -> str:
    """A Python literal for a parameters cell (``"text"``, ``12``, ``True``, ``{}``)."""
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, dict):
        return json.dumps(value) if value else "{}"
    return repr(value)


def papermill_args(obj: Any) -> list[str]:
    """Papermill options passing every field of ``obj`` with its type intact: ``-r`` (raw string) for text, ``-p``
    for numbers and booleans, ``-y`` (YAML, here JSON) for dicts."""
    out: list[str] = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        if isinstance(value, str):
            out += ["-r", f.name, value]
        elif isinstance(value, dict):
            out += ["-y", json.dumps({f.name: value})]
        else:
            out += ["-p", f.name, str(value)]
    return out
