"""One function per notebook stage, so each notebook is a few calls.

The stages hand over through one work folder (``work_dir``)::

    work_dir/demo/                      the built-in demo data (when asked for, or when no data is found)
    work_dir/prepared/train.parquet     sampled training rows   (01)
    work_dir/prepared/val.parquet       validation rows, other groups than train (01)
    work_dir/prepared/test.parquet      the test rows (01)
    work_dir/prepared/manifest.json     where the CSVs, labels and images are (01)
    work_dir/artifacts/<backend>/       the fitted artifact: LoRA adapter or ranker (02)
    work_dir/shards/                    shard_{i:02d}_of_{n:02d}.csv + .done markers (03)
    out_dir/submission.csv, report.md, *.png, gallery.html      (04)

Every path parameter accepts ``""`` for "the default" (``utils.paths``, then the manifest written by 01).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from utils import paths as _paths

PREPARED = "prepared"
MANIFEST = "manifest.json"
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS")
_UNIT = re.compile(r"^\s*\S+\s+(.+?)\s*$")


class StageError(RuntimeError):
    """A stage cannot run: missing input from an earlier stage, or an invalid result."""


class SubmissionError(StageError):
    """The merged predictions fail ``utils.sanity.check_submission``."""


@dataclass
class Prepared:
    """What stage 01 wrote."""

    work_dir: Path
    train_path: Path
    val_path: Path
    test_path: Path
    manifest_path: Path
    manifest: dict[str, Any]
    counts: pd.DataFrame  # per entity and unit: rows in train and val
    entity_counts: pd.DataFrame  # per entity: rows in train, val, test
    download: Any = None  # utils.images.DownloadSummary when images were fetched

    def summary(self) -> str:
        """One line of counts."""
        return (
            f"train {len(pd.read_parquet(self.train_path))} rows, val {len(pd.read_parquet(self.val_path))} rows, "
            f"test {len(pd.read_parquet(self.test_path))} rows -> {self.train_path.parent}"
        )


@dataclass
class Postprocessed:
    """What stage 04 wrote and found."""

    submission_path: Path
    submission: pd.DataFrame
    test: pd.DataFrame
    image_dir: Path | None
    report: Any = None  # utils.metrics.F1Report when labels exist
    files: Any = None  # utils.report.ReportFiles when labels exist
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: rows, answered rows, F1 when known."""
        answered = int((self.submission["prediction"].astype(str).str.strip() != "").sum())
        line = f"{len(self.submission)} rows, {answered} answered -> {self.submission_path}"
        if self.report is not None:
            line += f"; F1 {float(self.report.f1):.4f}"
        return line


# --------------------------------------------------------------------------------------------- helpers


def work_dir_for(work_dir: str | os.PathLike[str] | None) -> Path:
    """The work folder: the given one, else this machine's default (``utils.paths``)."""
    chosen = _paths.resolve(work_dir, _paths.default_paths().work_dir)
    assert chosen is not None
    return chosen


def read_manifest(work_dir: str | os.PathLike[str] | None) -> dict[str, Any]:
    """The manifest stage 01 wrote; ``StageError`` naming the stage to run first when it is missing."""
    path = work_dir_for(work_dir) / PREPARED / MANIFEST
    if not path.is_file():
        raise StageError(f"{path} not found: run notebooks/01_prepare_data.ipynb (stage 01) with this work_dir first")
    return json.loads(path.read_text(encoding="utf-8"))


def _read_table(work_dir: Path, name: str) -> pd.DataFrame:
    path = work_dir / PREPARED / f"{name}.parquet"
    if not path.is_file():
        raise StageError(f"{path} not found: run notebooks/01_prepare_data.ipynb (stage 01) with this work_dir first")
    frame = pd.read_parquet(path)
    if "entity_value" in frame.columns:
        frame["entity_value"] = frame["entity_value"].fillna("").astype(str)
    return frame


def _path_or_none(value: Any) -> Path | None:
    return Path(value) if value else None


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


def _unit(value: str) -> str:
    match = _UNIT.match(value or "")
    return match.group(1) if match else "(empty)"


def count_table(train: pd.DataFrame, val: pd.DataFrame) -> pd.DataFrame:
    """Rows per entity and unit in train and val (``(empty)`` for rows without an answer)."""
    parts = []
    for name, frame in (("train", train), ("val", val)):
        units = frame["entity_value"].fillna("").astype(str).map(_unit)
        parts.append(pd.DataFrame({"entity_name": frame["entity_name"], "unit": units, "split": name}))
    joined = pd.concat(parts, ignore_index=True)
    table = joined.groupby(["entity_name", "unit", "split"]).size().unstack("split", fill_value=0)
    return table.reindex(columns=["train", "val"], fill_value=0).astype(int)


def entity_count_table(train: pd.DataFrame, val: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    """Rows per entity in train, val and test."""
    splits = (("train", train), ("val", val), ("test", test))
    counts = {name: frame["entity_name"].value_counts() for name, frame in splits}
    return pd.DataFrame(counts).fillna(0).astype(int).sort_index()


def missing_images(links: pd.Series, image_dir: Path) -> list[str]:
    """The unique links whose image is not in ``image_dir``."""
    from utils.images import cached_image

    unique = pd.Series(links.dropna().astype(str).unique())
    missing = []
    for link in unique:
        path = cached_image(image_dir, link)
        if path is not None and not path.is_file():
            missing.append(link)
    return missing


def fetch_missing(links: pd.Series, image_dir: Path, download: bool = True, workers: int = 16) -> Any:
    """Download the images of ``links`` missing from ``image_dir``; warn (never fail) about what stays missing.

    Returns the ``utils.images.DownloadSummary``, or None when nothing was downloaded.
    """
    missing = missing_images(links, image_dir)
    if missing and download and _paths.is_writable(image_dir):
        from utils.images import download_images

        summary = download_images(missing, image_dir, workers=workers)
        if summary.failed:
            print(f"warning: {summary.failed} images could not be downloaded (see {image_dir / 'failures.csv'}); "
                  "their rows are answered with ''", file=sys.stderr)
        return summary
    if missing:
        print(f"warning: {len(missing)} images are not in {image_dir} and will be answered with '' "
              f"({'download off' if not download else 'folder not writable'})", file=sys.stderr)
    return None


# --------------------------------------------------------------------------------------------- 01 prepare


def prepare(
    train_csv: str = "",
    test_csv: str = "",
    labels_csv: str = "",
    image_dir: str = "",
    work_dir: str = "",
    per_entity: int = 0,
    balance_units: bool = False,
    val_fraction: float = 0.1,
    seed: int = 0,
    download: bool = True,
    download_workers: int = 16,
    demo_train: int = 0,
    demo_test: int = 0,
) -> Prepared:
    """Stage 01: load and validate the CSVs, find or download the images, sample, split, write the tables.

    ``train_csv="demo"`` (or ``""`` where no data set is found) renders the built-in demo into
    ``work_dir/demo`` (``demo_train``/``demo_test`` rows; 0 = the demo's defaults) and uses its files.
    ``per_entity=0`` keeps every training row.
    """
    from utils import data, demo

    defaults = _paths.default_paths()
    work = work_dir_for(work_dir)
    train_path = _paths.resolve(train_csv, defaults.train_csv)
    if train_csv.strip().lower() == _paths.DEMO or train_path is None:
        made = demo.make_demo_data(
            work / "demo", demo_train or demo.DEFAULT_N_TRAIN, demo_test or demo.DEFAULT_N_TEST, seed
        )
        train_path, test_path = made.train_csv, made.test_csv
        labels_path: Path | None = _paths.resolve(labels_csv, made.labels_csv)
        images = _paths.resolve(image_dir, made.image_dir)
    else:
        test_path = _paths.resolve(test_csv, defaults.test_csv)
        if test_path is None:
            raise StageError("test_csv is empty and no test.csv was found for this machine: pass test_csv")
        labels_path = _paths.resolve(labels_csv, None)
        images = _paths.resolve(image_dir, defaults.image_dir)
    assert images is not None
    train = data.load_train(train_path)
    test = data.load_test(test_path)
    sample = train
    if per_entity > 0:
        sample = data.balanced_sample(train, per_entity, seed=seed, balance_units=balance_units)
    train_rows, val_rows = data.group_split(sample, val_fraction=val_fraction, seed=seed)

    wanted = pd.concat([sample["image_link"], test["image_link"]], ignore_index=True)
    summary = fetch_missing(wanted, images, download=download, workers=download_workers)

    out = work / PREPARED
    out.mkdir(parents=True, exist_ok=True)
    written = {}
    for name, frame in (("train", train_rows), ("val", val_rows), ("test", test)):
        written[name] = out / f"{name}.parquet"
        frame.reset_index(drop=True).to_parquet(written[name], index=False)
    manifest = {
        "train_csv": str(train_path),
        "test_csv": str(test_path),
        "labels_csv": str(labels_path) if labels_path else "",
        "image_dir": str(images),
        "per_entity": per_entity,
        "val_fraction": val_fraction,
        "seed": seed,
        "rows": {"train": len(train_rows), "val": len(val_rows), "test": len(test)},
        "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    manifest_path = out / MANIFEST
    manifest_path.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    return Prepared(
        work, written["train"], written["val"], written["test"], manifest_path, manifest,
        count_table(train_rows, val_rows), entity_count_table(train_rows, val_rows, test), summary,
    )


# --------------------------------------------------------------------------------------------- 02 fit


def artifact_dir_for(work_dir: str | os.PathLike[str] | None, backend: str, artifact_dir: str = "") -> Path:
    """Where a backend's artifact lives: the given folder, else ``work_dir/artifacts/<backend>``."""
    chosen = _paths.resolve(artifact_dir, work_dir_for(work_dir) / "artifacts" / backend)
    assert chosen is not None
    return chosen


def finetune(
    backend: str = "ocr",
    work_dir: str = "",
    artifact_dir: str = "",
    image_dir: str = "",
    refit: bool = False,
    **settings: Any,
) -> Path:
    """Stage 02: fit ``backend`` on the prepared train/val tables; returns the artifact folder.

    A finished fit leaves ``<artifact_dir>.fitted`` beside the folder (the artifact path and a fingerprint of the
    backend, its settings and the train/val tables); a rerun with ``refit=False`` reuses the artifact when the
    fingerprint still matches.
    ``settings`` go to the backend's ``fit`` (its config dataclass field names).
    """
    from utils.backends import get_backend

    work = work_dir_for(work_dir)
    manifest = read_manifest(work)
    out = artifact_dir_for(work, backend, artifact_dir)
    marker = out.with_name(out.name + ".fitted")
    fingerprint = fit_fingerprint(work, backend, settings)
    previous = read_fitted_marker(marker)
    if previous and not refit and previous.get("fingerprint") == fingerprint and Path(previous["artifact"]).exists():
        print(f"reusing the fitted artifact {previous['artifact']} (same data and settings; refit=True to fit again)")
        return Path(previous["artifact"])
    marker.unlink(missing_ok=True)
    images = _paths.resolve(image_dir, Path(manifest["image_dir"]))
    train, val = _read_table(work, "train"), _read_table(work, "val")
    out.mkdir(parents=True, exist_ok=True)
    fitted = Path(get_backend(backend).fit(train, val, images, out, **settings))
    marker.write_text(json.dumps({"artifact": str(fitted), "fingerprint": fingerprint}), encoding="utf-8")
    return fitted


def fit_fingerprint(work_dir: Path, backend: str, settings: dict[str, Any]) -> str:
    """A hash of what a fit depends on: backend name, settings, the prepared train and val tables."""
    digest = hashlib.sha256(json.dumps([backend, settings], sort_keys=True, default=str).encode())
    for name in ("train", "val"):
        digest.update((work_dir / PREPARED / f"{name}.parquet").read_bytes())
    return digest.hexdigest()[:16]


def read_fitted_marker(marker: Path) -> dict[str, Any] | None:
    """The ``.fitted`` marker's content (``artifact``, ``fingerprint``), or None when absent or unreadable."""
    try:
        content = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return content if isinstance(content, dict) and "artifact" in content else None


# --------------------------------------------------------------------------------------------- 03 infer


def shards_dir_for(work_dir: str | os.PathLike[str] | None, shards_dir: str = "") -> Path:
    """The shard output folder: the given one, else ``work_dir/shards``."""
    chosen = _paths.resolve(shards_dir, work_dir_for(work_dir) / "shards")
    assert chosen is not None
    return chosen


def load_test_rows(work_dir: str | os.PathLike[str] | None, test_csv: str = "") -> pd.DataFrame:
    """The test rows: ``test_csv`` when given (a separate Kaggle session), else the table stage 01 wrote."""
    if test_csv:
        from utils.data import load_test

        return load_test(test_csv)
    return _read_table(work_dir_for(work_dir), "test")


def infer_shard(
    shard_index: int,
    num_shards: int,
    backend: str = "ocr",
    work_dir: str = "",
    artifact_dir: str = "",
    image_dir: str = "",
    shards_dir: str = "",
    test_csv: str = "",
    num_threads: int = 1,
    batch_size: int = 0,
    download: bool = True,
    **settings: Any,
) -> Path:
    """Stage 03: predict shard ``shard_index`` of ``num_shards`` (resumable); returns the shard file.

    Without ``test_csv``/``image_dir`` the test table and image folder come from stage 01's work folder.
    ``download`` fetches this shard's missing images first (a separate session may start without them).
    ``num_threads`` caps this process's CPU use (math threads; the OCR backend's worker processes too).
    ``batch_size`` > 0 and ``settings`` go to the backend's ``predict``.
    """
    from utils.pipeline import run_shard
    from utils.shards import shard_rows

    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in [0, {num_shards}), got {shard_index} (num_shards={num_shards})")
    limit_threads(num_threads)
    if batch_size > 0:
        settings["batch_size"] = batch_size
    if backend == "ocr":
        settings.setdefault("workers", num_threads)  # OCR processes, one onnxruntime thread each
    work = work_dir_for(work_dir)
    test = load_test_rows(work, test_csv)
    if image_dir:
        images = Path(image_dir)
    else:
        images = Path(read_manifest(work)["image_dir"])
    if download:
        fetch_missing(shard_rows(test, shard_index, num_shards)["image_link"], images)
    artifact = artifact_dir_for(work, backend, artifact_dir)
    fitted = read_fitted_marker(artifact.with_name(artifact.name + ".fitted"))
    if not artifact_dir and fitted:
        artifact = Path(fitted["artifact"])
    out = shards_dir_for(work, shards_dir)
    out.mkdir(parents=True, exist_ok=True)
    return Path(run_shard(backend, test, shard_index, num_shards, images, artifact, out, **settings))


# --------------------------------------------------------------------------------------------- 04 postprocess


def read_labels(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A labels CSV (``index,entity_name,entity_value``; empty values stay ``""``)."""
    labels = pd.read_csv(path, dtype={"entity_value": str, "entity_name": str}, keep_default_na=False)
    missing = {"index", "entity_name", "entity_value"} - set(labels.columns)
    if missing:
        raise StageError(f"{path}: labels need columns index,entity_name,entity_value; missing {sorted(missing)}")
    labels["index"] = labels["index"].astype(int)
    return labels


def clean_predictions(predictions: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    """Normalize every prediction for its row's entity (idempotent on already clean answers), in test order."""
    from utils.units import normalize_prediction

    merged = test[["index", "entity_name"]].merge(predictions[["index", "prediction"]], on="index", how="left")
    merged["prediction"] = [
        normalize_prediction(entity, "" if pd.isna(text) else str(text))
        for entity, text in zip(merged["entity_name"], merged["prediction"])
    ]
    return merged[["index", "prediction"]]


def postprocess(
    num_shards: int,
    work_dir: str = "",
    out_dir: str = "",
    shards_dir: str = "",
    test_csv: str = "",
    labels_csv: str = "",
    image_dir: str = "",
    n_worst: int = 12,
) -> Postprocessed:
    """Stage 04: merge the shards, clean, sanity-check (raises ``SubmissionError``), write ``submission.csv``.

    Where labels exist (``labels_csv``, else the demo's labels from the manifest), score it and write the report
    (``utils.report.write_report``) beside the submission.
    """
    from utils.sanity import check_submission
    from utils.shards import merge_shards

    work = work_dir_for(work_dir)
    manifest = read_manifest(work) if (work / PREPARED / MANIFEST).is_file() else {}
    out = _paths.resolve(out_dir, _paths.default_paths().out_dir)
    assert out is not None
    test = load_test_rows(work, test_csv)
    merged = merge_shards(shards_dir_for(work, shards_dir), num_shards, test)
    submission = clean_predictions(merged, test)
    problems = check_submission(test, submission)
    if problems:
        shown = "\n  ".join(str(p) for p in problems[:10])
        raise SubmissionError(f"the submission is invalid ({len(problems)} problems), first ones:\n  {shown}")
    out.mkdir(parents=True, exist_ok=True)
    submission_path = out / "submission.csv"
    submission.to_csv(submission_path, index=False)
    images = _paths.resolve(image_dir, _path_or_none(manifest.get("image_dir")))
    result = Postprocessed(submission_path, submission, test, images)
    labels_path = _paths.resolve(labels_csv, _path_or_none(manifest.get("labels_csv")))
    if labels_path is None:
        result.notes.append("no labels: no F1 report (pass labels_csv to score)")
        return result
    from utils.metrics import score
    from utils.report import write_report

    result.report = score(submission, read_labels(labels_path))
    result.files = write_report(out, result.report, test, images, n_worst=n_worst)
    return result


# --------------------------------------------------------------------------------------------- display


def show_prepared(prepared: Prepared) -> None:
    """Display stage 01's counts (tables in a notebook, text elsewhere)."""
    from IPython.display import display

    print(prepared.summary())
    if prepared.download is not None:
        print(f"images: {prepared.download}")
    display(prepared.entity_counts)
    display(prepared.counts)


def show_postprocessed(result: Postprocessed, interactive: bool = False) -> Any:
    """Display stage 04's results: F1 table, bar chart, worst mistakes, and the browser (returned)."""
    from IPython.display import Image, display

    print(result.summary())
    for note in result.notes:
        print(note)
    if result.report is None:
        return None
    from utils import report as report_module

    display(result.report.table)
    display(Image(filename=str(result.files.f1_png)))
    if result.files.mistakes_png is not None:
        display(Image(filename=str(result.files.mistakes_png)))
    print(f"report: {result.files.report_md}")
    rows = report_module.normalize_rows(result.report.rows, result.test)
    return report_module.browser(rows, result.image_dir, interactive=interactive)
