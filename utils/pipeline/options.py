"""``run_all.sh``'s command line: made from the stage parameter dataclasses (``utils.pipeline.params``) plus the
runner's own options (``RunParams``), parsed into a ``Plan`` and checked before anything runs: input files exist
and are files, ``--images`` exists, the output folders (``--out``, ``--work``, ``--runs``, ``--shards-dir``,
``--artifact-dir``) are folders this user can write or create, numbers and JSON are valid.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from utils.models.backend import DEFAULT_BACKEND
from utils.pipeline.params import (
    STAGES,
    FitParams,
    InferParams,
    ParamError,
    PostprocessParams,
    PrepareParams,
    default_of,
    flag_of,
    param,
    type_name,
)

REPO = Path(__file__).resolve().parents[2]
PROG = "run_all.sh"
EXIT_USAGE, EXIT_FAILED, EXIT_BUSY = 2, 1, 3
ALL_STAGES = ("01", "02", "03", "04")


class RunnerError(RuntimeError):
    """The run cannot go on; the message is for the person (no traceback)."""

    def __init__(self, message: str, code: int = EXIT_FAILED) -> None:
        super().__init__(message)
        self.code = code


class Interrupted(BaseException):
    """SIGTERM or SIGINT arrived: stop everything started, then exit."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


@dataclass
class RunParams:
    """Options of the runner itself (the stages' options come from ``utils.pipeline.params``)."""

    out_dir: str = param(str(REPO / "out"), "gets submission.csv and the report", flag="--out")
    work_dir: str = param(str(REPO / "work"), "hand-over folder between the stages", flag="--work")
    runs_dir: str = param(str(REPO / "runs"), "executed notebooks and logs go to RUNS/<time>/", flag="--runs")
    repo_dir: str = param(str(REPO), "the notebooks' repo_dir; for --prepare-only the path the repo will have in "
                                     "the Kaggle session, e.g. /kaggle/input/<dataset>")
    prepare_only: bool = param(False, "only write the parameterised shard notebooks (one per Kaggle session) into "
                                      "OUT/shard_notebooks/; runs nothing; needs --test-csv and --artifact-dir as "
                                      "paths in those sessions")
    stages: str = param(",".join(ALL_STAGES), "the stages to run, e.g. 01,02 (prepare and fit in one session) or "
                                              "03,04 (shards and submission in the next; without 01: --test-csv)")
    parallel: int = param(0, "shard notebooks running at once; 0: one per GPU (a GPU backend) or CPU cores / threads")
    shards_per_gpu: int = param(1, "shards sharing one GPU at once (each loads the whole model)")
    kernel: str = param("python3", "Jupyter kernel papermill runs")
    start_retries: int = param(3, "retries of a shard whose kernel failed to start")
    wait: bool = param(False, "wait for another run holding the work folder instead of failing")
    help_backend: str = param("", "print what backend NAME is and every fit and predict setting it takes (name, type, "
                                  "default, help), then exit", flag="--help-backend")


# ------------------------------------------------------------------------------------------------ options


def _json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text!r} ({exc})") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text!r}")
    return value


def _option_fields() -> list[tuple[type, Any]]:
    """Every command-line field of the runner and the stages, one per flag (the first definition wins)."""
    seen: dict[str, tuple[type, Any]] = {}
    for cls in (RunParams, *STAGES.values()):
        for f in fields(cls):
            if not f.metadata.get("cli", True):
                continue
            flag = flag_of(f)
            if flag in seen:
                other_cls, other = seen[flag]
                if type_name(other_cls, other.name) != type_name(cls, f.name):
                    raise TypeError(f"{flag}: {other_cls.__name__}.{other.name} and {cls.__name__}.{f.name} differ "
                                    "in type")
                continue
            seen[flag] = (cls, f)
    return list(seen.values())


def _dest(flag: str) -> str:
    return flag[2:].replace("-", "_")


def build_parser(about: str = "") -> argparse.ArgumentParser:
    """The command line, made from the parameter dataclasses."""
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Runs notebooks/01..04 through papermill; the shard notebooks of 03 in parallel. With no "
                    f"options: the built-in demo, the {DEFAULT_BACKEND!r} backend, 4 shards.\n\n" + about,
    )
    titles = {RunParams: "the run", PrepareParams: "01 prepare data", FitParams: "02 fit",
              InferParams: "03 predict the shards", PostprocessParams: "04 merge, check, report"}
    groups = {cls: parser.add_argument_group(title) for cls, title in titles.items()}
    for cls, f in _option_fields():
        flag, kind, default = flag_of(f), type_name(cls, f.name), default_of(f)
        group = groups[cls]
        if cls is PrepareParams and f.name == "train_csv":
            default = "demo"
        help_text = f.metadata["help"] + ("" if kind == "bool" else f" (default: {default!r})")
        if kind == "bool" and default:  # the flag turns it off: its help says so
            group.add_argument("--no-" + flag[2:], dest=_dest(flag), action="store_false",
                               help=f"turn off (on by default): {help_text}")
        elif kind == "bool":
            group.add_argument(flag, dest=_dest(flag), action="store_true", help=help_text)
        else:
            convert = {"int": int, "float": float, "str": str, "dict": _json_object}[kind]
            metavar = {"int": "N", "float": "X", "str": "PATH" if "dir" in f.name or "csv" in f.name else "TEXT",
                       "dict": "JSON"}[kind]
            if f.name == "help_backend":
                metavar = "NAME"
            group.add_argument(flag, dest=_dest(flag), type=convert, default=default, help=help_text,
                               metavar=metavar)
    return parser


@dataclass
class Plan:
    """The parsed, validated run: the runner's options and each stage's parameters."""

    run: RunParams
    prepare: PrepareParams
    fit: FitParams
    infer: InferParams
    post: PostprocessParams
    command: str = ""
    stages: tuple[str, ...] = ALL_STAGES


def _stage(cls: type, options: dict[str, Any], **overrides: Any) -> Any:
    values = {f.name: options[_dest(flag_of(f))] for f in fields(cls)
              if f.metadata.get("cli", True) and _dest(flag_of(f)) in options}
    return cls(**{**values, **overrides})


def parse(argv: list[str], about: str = "") -> Plan:
    """Parse and check the command line (``RunnerError`` with exit code 2 for anything wrong)."""
    options = vars(build_parser(about).parse_args(argv))
    if options["help_backend"]:
        show_backend(options["help_backend"])
    for dest in ("train_csv", "test_csv", "labels_csv", "images", "work", "out", "runs", "artifact_dir",
                 "shards_dir"):
        value = options.get(dest)
        if value and not (dest == "train_csv" and value.strip().lower() == "demo"):
            options[dest] = os.path.abspath(os.path.expanduser(value))
    try:
        run = _stage(RunParams, options)
        prepare = _stage(PrepareParams, options)
        fit = _stage(FitParams, options)
        chosen = _chosen_stages(options["stages"])
        elsewhere = run.prepare_only or "01" not in chosen  # the test rows come from the CSV, not from stage 01
        default_work = run.prepare_only and options["work"] == str(REPO / "work")
        work_here = "" if default_work else options["work"]  # "": the shard session's own default
        infer = _stage(InferParams, options, test_csv=options["test_csv"] if elsewhere else "", work_dir=work_here)
        post = _stage(PostprocessParams, options, interactive=False,
                      test_csv=options["test_csv"] if elsewhere else "")
    except ParamError as exc:
        raise RunnerError(f"{PROG}: {exc}", EXIT_USAGE) from None
    for name in ("parallel", "start_retries"):
        if getattr(run, name) < 0:
            raise RunnerError(f"{PROG}: --{name.replace('_', '-')} must be >= 0", EXIT_USAGE)
    if run.shards_per_gpu < 1:
        raise RunnerError(f"{PROG}: --shards-per-gpu must be >= 1", EXIT_USAGE)
    if run.prepare_only and infer.executor != "local":
        raise RunnerError(f"{PROG}: --prepare-only writes one notebook per session and shard; with --executor ray "
                          "one run drives every shard (leave out --prepare-only)", EXIT_USAGE)
    plan = Plan(run, prepare, fit, infer, post, " ".join([PROG, *argv]), chosen)
    check_paths(plan)
    return plan


def show_backend(name: str) -> None:
    """``--help-backend NAME``: print the backend's settings and exit 0 (exit 2 naming the choices when unknown)."""
    from utils.models.backend import available_backends, describe_settings

    if name not in available_backends():
        raise RunnerError(f"{PROG}: --help-backend {name!r}: no such backend; choose one of: "
                          f"{', '.join(available_backends())}", EXIT_USAGE)
    print(describe_settings(name))
    raise SystemExit(0)


def _chosen_stages(text: str) -> tuple[str, ...]:
    """``"03,04"`` -> ``("03", "04")`` in run order; ``ParamError`` for anything else."""
    chosen = [part.strip().zfill(2) for part in str(text).split(",") if part.strip()]
    unknown = [c for c in chosen if c not in ALL_STAGES]
    if not chosen or unknown:
        raise ParamError(f"stages (--stages) must name some of {','.join(ALL_STAGES)}, got {text!r}")
    return tuple(c for c in ALL_STAGES if c in chosen)


def check_paths(plan: Plan) -> None:
    """Every input path exists and every output folder can be one, before anything runs."""
    p = plan.prepare
    demo = p.train_csv.strip().lower() == "demo"
    _check_folder("--out", Path(plan.run.out_dir))
    if plan.run.prepare_only:  # the paths are those of the sessions the notebooks will run in, not of this machine
        missing = [flag for flag, value in (("--test-csv", p.test_csv), ("--artifact-dir", plan.infer.artifact_dir))
                   if not value]
        if missing:
            raise RunnerError(f"{PROG}: --prepare-only needs {' and '.join(missing)}: the paths they will have in "
                              "the shard's own session (e.g. --test-csv /kaggle/input/<dataset>/test.csv "
                              "--artifact-dir /kaggle/input/<first-session>/work/artifacts/<backend>, read-only "
                              "is fine); a shard session has no stage 01 or 02 of its own", EXIT_USAGE)
        return
    if "01" not in plan.stages and not p.test_csv and not (Path(plan.run.work_dir) / "prepared" / "test.parquet"
                                                             ).is_file():
        raise RunnerError(f"{PROG}: --stages {','.join(plan.stages)} without stage 01 needs --test-csv (or a --work "
                          "folder stage 01 wrote)", EXIT_USAGE)
    if not demo and not p.test_csv:
        raise RunnerError(f"{PROG}: --train-csv needs --test-csv too", EXIT_USAGE)
    files = [("--test-csv", p.test_csv), ("--labels-csv", p.labels_csv)]
    if not demo:
        files.insert(0, ("--train-csv", p.train_csv))
    for flag, value in files:
        if value and not Path(value).is_file():
            what = "is a folder, not a CSV file" if Path(value).is_dir() else "does not exist"
            raise RunnerError(f"{PROG}: {flag} {value} {what}", EXIT_USAGE)
    if p.image_dir and not Path(p.image_dir).is_dir():
        what = "is a file, not a folder" if Path(p.image_dir).exists() else "does not exist"
        raise RunnerError(f"{PROG}: --images {p.image_dir} {what} (create it to download the images into it)",
                          EXIT_USAGE)
    for flag, value in (("--work", plan.run.work_dir), ("--runs", plan.run.runs_dir),
                        ("--shards-dir", plan.infer.shards_dir), ("--artifact-dir", plan.fit.artifact_dir)):
        if value:
            _check_folder(flag, Path(value))


def _check_folder(flag: str, path: Path) -> None:
    """``path`` is a folder this run can write into, or one it can create (RunnerError naming why not)."""
    if path.exists() and not path.is_dir():
        raise RunnerError(f"{PROG}: {flag} {path} is a file, not a folder", EXIT_USAGE)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise RunnerError(f"{PROG}: {flag} {path} cannot be created: {existing} is a file, not a folder", EXIT_USAGE)
    if not os.access(existing, os.W_OK | os.X_OK):
        what = "is not writable" if existing == path else f"cannot be created: {existing} is not writable"
        raise RunnerError(f"{PROG}: {flag} {path} {what} (by this user)", EXIT_USAGE)
