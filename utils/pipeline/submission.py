"""The submission: the finished shards merged, every answer cleaned afresh from its raw text, checked, written.

``build_submission`` is the one way a ``submission.csv`` is made (stage 04 calls it): ``utils.pipeline.shards.
merge_shards`` (every test index exactly once, one model), ``utils.core.units.normalize_prediction`` on the raw
answers (so a better cleaning rule needs no new prediction), ``utils.core.sanity.check_submission``, and an atomic
write: an invalid submission is never written, and a reader never sees half a file.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd

from utils.core.sanity import check_submission, summarize
from utils.core.units import normalize_prediction
from utils.env.console import say
from utils.env.fileio import atomic_write_bytes
from utils.pipeline.shards import merge_shards
from utils.pipeline.workdir import StageError


class SubmissionError(StageError):
    """The merged predictions fail ``utils.core.sanity.check_submission``."""


def read_labels(path: str | os.PathLike[str]) -> pd.DataFrame:
    """A labels CSV (``index,entity_name,entity_value``; empty values stay ``""``)."""
    if not Path(path).is_file():
        raise StageError(f"labels_csv {path} does not exist")
    labels = pd.read_csv(path, dtype={"entity_value": str, "entity_name": str}, keep_default_na=False)
    missing = {"index", "entity_name", "entity_value"} - set(labels.columns)
    if missing:
        raise StageError(f"{path}: labels need columns index,entity_name,entity_value; missing {sorted(missing)}")
    labels["index"] = labels["index"].astype(int)
    return labels


def build_submission(shards_dir: Path, num_shards: int, test: pd.DataFrame, out_path: Path | None = None
                     ) -> pd.DataFrame:
    """The submission from the finished shards: merged (every test index exactly once, ``utils.pipeline.shards``), each
    answer cleaned afresh from the backend's ``raw`` text (so a better cleaning rule needs no new prediction),
    checked (``SubmissionError`` listing the first problems), and written to ``out_path`` in one rename when given:
    an invalid submission is never written, and a reader never sees half a file."""
    merged = merge_shards(shards_dir, num_shards, test)
    entity = dict(zip(test["index"].astype("int64"), test["entity_name"].astype(str)))
    submission = pd.DataFrame({
        "index": merged["index"].to_numpy(),
        "prediction": [normalize_prediction(entity[int(i)], str(raw)) for i, raw in zip(merged["index"],
                                                                                         merged["raw"])],
    })
    problems = check_submission(test, submission)
    if problems:
        shown = "\n  ".join(str(p) for p in problems[:10])
        raise SubmissionError(f"the submission is invalid ({summarize(problems)}), first ones:\n  {shown}")
    if out_path is not None:
        write_csv_atomically(submission, Path(out_path))
    return submission


def write_csv_atomically(frame: pd.DataFrame, path: Path) -> Path:
    """Write ``frame`` as CSV to ``path`` in one rename: readers see the old file or the whole new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, frame.to_csv(index=False).encode("utf-8"))
    return path


def labels_for_test(labels: pd.DataFrame | None, test: pd.DataFrame, path: Path | None
                    ) -> tuple[pd.DataFrame | None, list[str]]:
    """The labels of the test rows only (a label for a row not in the test set would count as a miss), and what to
    say about it: label rows not in the test set (ignored), test rows without a label (not scored)."""
    if labels is None:
        return None, []
    in_test = labels["index"].isin(test["index"].astype("int64"))
    notes = []
    if not in_test.all():
        odd = labels.loc[~in_test, "index"].head(3).tolist()
        notes.append(f"warning: {int((~in_test).sum())} of {len(labels)} rows of {path} name indices that are not "
                     f"in the test set (e.g. {odd}): not scored; are these the labels of this test set?")
    labels = labels[in_test]
    if len(labels) < len(test):
        notes.append(f"labels for {len(labels)} of {len(test)} test rows: F1 is measured on those "
                     f"{len(labels)} rows only")
    for note in notes:
        say(f"[04] {note}")
    return (labels if len(labels) else None), notes
