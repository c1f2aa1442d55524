"""One function per notebook stage, so each notebook is its parameters cell and a few calls.

Each function takes its stage's parameters (``utils.pipeline.params``: the same names as the notebook's parameters
cell and ``run_all.sh``'s options), validates them, does the work through the library, and returns what the notebook
shows. The stages hand over through one work folder (``utils.pipeline.workdir.WorkDir`` lists every path in it).
Lines meant for the person watching (counts, missing images, progress) go through ``utils.env.console.say``, so
``run_all.sh`` shows them on its console while the notebook runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from utils.data.census import ImageCensus, check_images, fetch_missing, image_census, rows_without_image
from utils.env import paths as _paths
from utils.env.console import say
from utils.env.fileio import atomic_write_bytes, move_into
from utils.models.backend import get_backend, label_table_setting, read_fit_status, read_fit_summary
from utils.pipeline.params import FitParams, InferParams, PostprocessParams, PrepareParams, check_known
from utils.pipeline.submission import SubmissionError, build_submission, labels_for_test, read_labels
from utils.pipeline.workdir import StageError, WorkDir, files_state

THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")

__all__ = ["StageError", "SubmissionError", "prepare", "finetune", "infer_shard", "postprocess"]


@dataclass
class Prepared:
    """What stage 01 wrote."""

    work: WorkDir
    manifest: dict[str, Any]
    counts: pd.DataFrame  # per entity and unit: rows in train and val
    entity_counts: pd.DataFrame  # per entity: rows in train, val, test
    images: ImageCensus | None = None
    download: Any = None  # utils.data.download.DownloadSummary when images were fetched

    @property
    def work_dir(self) -> Path:
        return self.work.root

    @property
    def train_path(self) -> Path:
        return self.work.table("train")

    @property
    def val_path(self) -> Path:
        return self.work.table("val")

    @property
    def test_path(self) -> Path:
        return self.work.table("test")

    @property
    def manifest_path(self) -> Path:
        return self.work.manifest_path

    def summary(self) -> str:
        """One line of counts."""
        rows = self.manifest["rows"]
        return (f"train {rows['train']} rows, val {rows['val']} rows, test {rows['test']} rows -> "
                f"{self.work.prepared}")


@dataclass
class Fitted:
    """What stage 02 fitted (or reused): the artifact, the settings, and the backend's own summary of the fit
    (``fit_summary.json`` in the artifact when the backend writes one: metrics, loss history, parameter count)."""

    backend: str
    artifact: Path
    settings: dict[str, Any]
    reused: bool
    complete: bool
    summary: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        """One line: what was fitted where."""
        how = "reused" if self.reused else "fitted" if self.complete else "fitted (stopped early; rerun to continue)"
        return f"backend {self.backend} {how}: {self.artifact}"


@dataclass
class ShardDone:
    """What stage 03 wrote: the shard file and its rows with their answers (``prediction``, ``raw``)."""

    path: Path
    rows: pd.DataFrame
    image_dir: Path

    def line(self) -> str:
        answered = int((self.rows["prediction"].astype(str) != "").sum()) if len(self.rows) else 0
        return f"{len(self.rows)} rows, {answered} answered -> {self.path}"


@dataclass
class Postprocessed:
    """What stage 04 wrote and found."""

    submission_path: Path
    submission: pd.DataFrame
    test: pd.DataFrame
    image_dir: Path | None
    report: Any = None  # utils.core.metrics.F1Report when labels exist
    files: Any = None  # utils.pipeline.report.ReportFiles when labels exist
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: rows, answered rows, F1 when known."""
        answered = int((self.submission["prediction"].astype(str).str.strip() != "").sum())
        line = f"{len(self.submission)} rows, {answered} answered -> {self.submission_path}"
        if self.report is not None:
            line += f"; F1 {float(self.report.f1):.4f}"
        return line


# --------------------------------------------------------------------------------------------- helpers


def limit_threads(num_threads: int) -> None:
    """Cap this process's math threads (OpenMP/MKL env vars; torch when it is loaded or loadable)."""
    if num_threads < 1:
        raise ValueError(f"num_threads must be at least 1, got {num_threads}")
    for name in THREAD_ENV_VARS:
        os.environ[name] = str(num_threads)
    os.environ["ORT_NUM_THREADS"] = str(num_threads)
    try:
        import torch

        torch.set_num_threads(num_threads)
    except ImportError:
        pass


def _stage_params(cls: type, fields: dict[str, Any]) -> Any:
    check_known(cls, fields)
    return cls(**fields)


# --------------------------------------------------------------------------------------------- 01 prepare


def prepare(**params: Any) -> Prepared:
    """Stage 01 (``PrepareParams``): load and validate the CSVs, find or download the images, sample, split, write.

    ``train_csv="demo"`` (or ``""`` where no data set is found) renders the built-in demo into ``work_dir/demo``.
    Without ``image_dir`` the images are the data's own ``images/`` folder when it has one, else
    ``work_dir/images``. More than ``max_missing_images`` of the needed images missing after the download attempt
    fails here, before any fit (a wrong folder would otherwise give an all-empty submission).
    """
    from utils.data import demo
    from utils.data import tables as data

    p: PrepareParams = _stage_params(PrepareParams, params)
    defaults = _paths.default_paths()
    work = WorkDir.of(p.work_dir)
    train_path = _paths.resolve(p.train_csv, defaults.train_csv)
    if p.train_csv.strip().lower() == _paths.DEMO or train_path is None:
        made = demo.make_demo_data(work.demo, p.demo_train or demo.DEFAULT_N_TRAIN, p.demo_test or demo.DEFAULT_N_TEST,
                                   p.seed)
        train_path, test_path = made.train_csv, made.test_csv
        labels_path: Path | None = _paths.resolve(p.labels_csv, made.labels_csv)
        images = _paths.resolve(p.image_dir, made.image_dir)
    else:
        test_path = _paths.resolve(p.test_csv, defaults.test_csv)
        if test_path is None:
            raise StageError("test_csv is empty and no test.csv was found for this machine: pass test_csv")
        labels_path = _paths.resolve(p.labels_csv, None)
        data_images = train_path.parent / "images"
        images = _paths.resolve(p.image_dir, data_images if data_images.is_dir() else work.images)
    assert images is not None
    if labels_path is not None and not labels_path.is_file():
        raise StageError(f"labels_csv {labels_path} does not exist")
    train = data.load_train(train_path)
    test = data.load_test(test_path)
    sample = train
    if p.per_entity > 0:
        sample = data.balanced_sample(train, p.per_entity, seed=p.seed, balance_units=p.balance_units)
    train_rows, val_rows = data.group_split(sample, val_fraction=p.val_fraction, seed=p.seed)
    say(f"[01] {len(train)} training rows loaded, {len(sample)} sampled "
        f"({'all' if p.per_entity == 0 else f'up to {p.per_entity} per entity'}), {len(test)} test rows")

    wanted = pd.concat([sample["image_link"], test["image_link"]], ignore_index=True)
    summary = fetch_missing(wanted, images, download=p.download, max_side=p.image_max_side,
                            guess=p.guess_without_image)
    census = image_census(wanted, images)
    check_images(census, "the sample and the test set", p.max_missing_images, "01", guess=p.guess_without_image)

    work.prepared.mkdir(parents=True, exist_ok=True)
    for name, frame in (("train", train_rows), ("val", val_rows), ("test", test)):
        frame.reset_index(drop=True).to_parquet(work.table(name), index=False)
    manifest = {
        "train_csv": str(train_path),
        "test_csv": str(test_path),
        "labels_csv": str(labels_path) if labels_path else "",
        "image_dir": str(images),
        "per_entity": p.per_entity,
        "val_fraction": p.val_fraction,
        "seed": p.seed,
        "rows": {"train": len(train_rows), "val": len(val_rows), "test": len(test)},
        "images": {"needed": census.total, "missing": census.absent},
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    atomic_write_bytes(work.manifest_path, json.dumps(manifest, indent=2).encode("utf-8"))
    return Prepared(work, manifest, data.count_table(train_rows, val_rows),
                    data.entity_count_table(train_rows, val_rows, test), census, summary)


# --------------------------------------------------------------------------------------------- 02 fit


def fit_fingerprint(work: WorkDir, backend: str, settings: dict[str, Any]) -> str:
    """A hash of what a fit depends on: backend name, settings, the prepared train and val tables, and the whole
    label table the backend reads through its ``label_table_setting`` (its content, not only its path)."""
    digest = hashlib.sha256(json.dumps([backend, settings], sort_keys=True, default=str).encode())
    for name in ("train", "val"):
        digest.update(work.table(name).read_bytes())
    labels = settings.get(label_table_setting(backend) or "")
    if labels and Path(labels).is_file():
        digest.update(Path(labels).read_bytes())
    return digest.hexdigest()[:16]


def finetune(**params: Any) -> Fitted:
    """Stage 02 (``FitParams``): fit ``backend`` on the prepared train/val tables; returns the artifact folder.

    A fit leaves ``<artifact_dir>.fitted`` beside the folder (the artifact, a fingerprint of the backend, its
    settings and the tables, and whether it completed). A rerun reuses a complete fit with the same fingerprint
    (``refit`` forces a new one) and continues an incomplete one (a fine-tune stopped by its time budget).
    """
    p: FitParams = _stage_params(FitParams, params)
    work = WorkDir.of(p.work_dir)
    manifest = work.manifest()
    out = work.artifact(p.backend, p.artifact_dir)
    marker = work.fitted_marker(out)
    settings = dict(p.settings)
    all_labels = label_table_setting(p.backend)
    handed = bool(all_labels) and all_labels not in settings and Path(manifest.get("train_csv") or "").is_file()
    if handed:
        settings[all_labels] = manifest["train_csv"]
    fingerprint = fit_fingerprint(work, p.backend, settings)
    previous = work.read_fitted(out)
    if (previous and not p.refit and previous.get("fingerprint") == fingerprint and previous.get("complete", True)
            and Path(previous["artifact"]).exists()):
        say(f"[02] reusing the fitted artifact {previous['artifact']} (same data and settings; refit=True to fit "
            "again)")
        artifact = Path(previous["artifact"])
        return Fitted(p.backend, artifact, p.settings, True, True, read_fit_summary(artifact))
    if previous and previous.get("fingerprint") == fingerprint and not previous.get("complete", True):
        say("[02] the last fit stopped before its end (time budget): continuing it")
    images = work.image_dir(p.image_dir)
    train, val = work.read_table("train"), work.read_table("val")
    census = image_census(pd.concat([train["image_link"], val["image_link"]]), images)
    say(f"[02] fitting backend '{p.backend}' on {len(train)} rows (validation {len(val)}); {census.line('them')}")
    if handed:
        say(f"[02] the backend also learns from every label of {manifest['train_csv']} ({all_labels})")
    out.mkdir(parents=True, exist_ok=True)
    before = files_state(Path(previous["artifact"])) if previous else None
    marker.unlink(missing_ok=True)  # the fit writes into the artifact: until it ends, no marker vouches for it
    try:
        fitted = Path(get_backend(p.backend).fit(train, val, images, out, **settings))
    except BaseException:
        if previous and files_state(Path(previous["artifact"])) == before:  # the backend refused before writing
            atomic_write_bytes(marker, json.dumps(previous).encode("utf-8"))  # (a setting it does not know): the
            say("[02] the fit failed before it wrote anything: the earlier fit is kept")  # earlier fit stands
        raise
    status = read_fit_status(fitted)
    content = {"artifact": str(fitted), "fingerprint": fingerprint, "complete": bool(status.get("complete", True))}
    if fitted.resolve() == out.resolve() or out.resolve() in fitted.resolve().parents:
        content["relative"] = fitted.resolve().relative_to(out.resolve()).as_posix()  # found again in a copy
    atomic_write_bytes(marker, json.dumps(content).encode("utf-8"))
    if not content["complete"]:
        say(f"[02] the fit stopped early ({status.get('stopped_by') or 'incomplete'}, step "
            f"{status.get('global_step')} of {status.get('planned_steps')}): the artifact is usable; run stage 02 "
            "again to continue it")
    return Fitted(p.backend, fitted, p.settings, False, content["complete"], read_fit_summary(fitted))


# --------------------------------------------------------------------------------------------- 03 infer


def load_test_rows(work: WorkDir, test_csv: str = "") -> pd.DataFrame:
    """The test rows: ``test_csv`` when given (a separate Kaggle session), else the table stage 01 wrote."""
    if test_csv:
        from utils.data.tables import load_test

        return load_test(test_csv)
    return work.read_table("test")


def infer_shard(**params: Any) -> ShardDone:
    """Stage 03 (``InferParams``): predict shard ``shard_index`` of ``num_shards`` (resumable); the shard file.

    Without ``test_csv``/``image_dir`` the test table and image folder come from stage 01's work folder.
    ``download`` fetches this shard's missing images first (a separate session may start without them).
    ``num_threads`` caps this process's CPU use (math threads; the OCR backend's worker processes too).
    ``batch_size`` > 0 and ``settings`` go to the backend's ``predict``.
    """
    from utils.pipeline.predict import run_shard
    from utils.pipeline.shards import read_shard, shard_rows

    p: InferParams = _stage_params(InferParams, params)
    limit_threads(p.num_threads)
    settings = p.backend_settings()
    work = WorkDir.of(p.work_dir)
    test = load_test_rows(work, p.test_csv)
    images = work.image_dir(p.image_dir, fresh_ok=bool(p.test_csv))  # a session of its own: images downloaded here
    if p.executor == "ray":
        return _infer_on_ray(p, work, test, images, settings)
    tag = f"03 shard {p.shard_index}/{p.num_shards}"
    rows = shard_rows(test, p.shard_index, p.num_shards)
    links = rows["image_link"]
    if len(links):
        if p.download:
            fetch_missing(links, images, download=True, max_side=p.image_max_side, guess=p.guess_without_image)
        check_images(image_census(links, images), "this shard", p.max_missing_images, tag, guess=p.guess_without_image)
    artifact = work.fitted_artifact(p.backend, p.artifact_dir)
    if not artifact.exists():
        raise StageError(f"no fitted {p.backend} artifact at {artifact}: run stage 02 with this work_dir first, or "
                         "pass artifact_dir (--artifact-dir): the fitted folder, e.g. the first session's "
                         f"work/artifacts/{p.backend} added as an input")
    out = work.shards(p.shards_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = Path(run_shard(p.backend, test, p.shard_index, p.num_shards, images, artifact, out, tag=tag,
                          guess_without_image=p.guess_without_image, **settings))
    answers = read_shard(path)[["index", "prediction", "raw"]]
    return ShardDone(path, rows.merge(answers, on="index", how="left"), images)


def _infer_on_ray(p: InferParams, work: WorkDir, test: pd.DataFrame, images: Path,
                  settings: dict[str, Any]) -> ShardDone:
    """Stage 03 with ``executor="ray"``: every shard at once on a Ray cluster (``utils.pipeline.ray_executor``);
    the images are fetched and checked here as a local shard does, for the whole test set."""
    from utils.pipeline.ray_executor import run_on_ray
    from utils.pipeline.shards import read_shard

    links = test["image_link"]
    if len(links):  # on Ray the nodes fetch what they lack; a row without an image goes to the backend there
        if p.download:
            fetch_missing(links, images, max_side=p.image_max_side, guess=True)
        check_images(image_census(links, images), "the test set", p.max_missing_images, "03 ray", guess=True)
    out = work.shards(p.shards_dir)
    paths = run_on_ray(p.backend, test, images, work.fitted_artifact(p.backend, p.artifact_dir), out, p.num_shards,
                       settings, address=p.ray_address, num_threads=p.num_threads, download=p.download)
    answers = pd.concat([read_shard(path) for path in paths], ignore_index=True)[["index", "prediction", "raw"]]
    return ShardDone(out, test.merge(answers, on="index", how="left"), images)


# --------------------------------------------------------------------------------------------- 04 postprocess


def postprocess(**params: Any) -> Postprocessed:
    """Stage 04 (``PostprocessParams``): check the labels path first, ``build_submission`` (merge, clean from raw,
    check), then score the test rows that have labels and report. Every output is written into a folder beside
    them first and moved in only once all are written (``submission.csv`` last): a failed stage 04 (a full disk)
    replaces none of them."""
    p: PostprocessParams = _stage_params(PostprocessParams, params)
    work = WorkDir.of(p.work_dir)
    manifest = work.manifest() if work.manifest_path.is_file() else {}
    out = _paths.resolve(p.out_dir, _paths.default_paths().out_dir)
    assert out is not None
    labels_path = _paths.resolve(p.labels_csv, Path(manifest["labels_csv"]) if manifest.get("labels_csv") else None)
    labels = read_labels(labels_path) if labels_path is not None else None  # a bad path fails before anything
    test = load_test_rows(work, p.test_csv)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".04-writing-", dir=out))
    try:
        submission = build_submission(work.shards(p.shards_dir), p.num_shards, test, staging / "submission.csv")
        images = _paths.resolve(p.image_dir, Path(manifest["image_dir"]) if manifest.get("image_dir") else None)
        result = Postprocessed(out / "submission.csv", submission, test, images)
        if images is not None:
            say(f"[04] {image_census(test['image_link'], images).line('the test set')}")
            without = rows_without_image(test, images).to_numpy()
            n, guessed = without.sum(), (submission["prediction"].astype(str) != "").to_numpy()[without].sum()
            if n:
                say(f"[04] {n} rows have no image: {n - guessed} answered '', {guessed} guessed by the backend")
        labels, coverage = labels_for_test(labels, test, labels_path)
        result.notes += coverage
        if labels is None:
            result.notes.append("no F1 report" + ("" if coverage else ": no labels (pass labels_csv to score)"))
        else:
            from utils.core.metrics import score
            from utils.pipeline.report import write_report

            result.report = score(submission, labels)
            result.files = write_report(staging, result.report, test, images, n_worst=p.n_worst, notes=coverage)
        move_into(staging, out, last="submission.csv")
        if result.files is not None:  # where the files are now
            result.files = type(result.files)(**{k: v and out / Path(v).name for k, v in vars(result.files).items()})
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    say(f"[04] {result.summary()}")
    return result
