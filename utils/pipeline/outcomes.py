"""The outcome of each row: the per-row frame every report and picture reads, and the kinds of mistakes.

``normalize_rows`` turns ``utils.core.metrics.F1Report.rows`` (or any frame with an index, a truth and a prediction
column) into ``index, entity_name, entity_value, prediction, correct`` (+ ``image_link`` from the test table);
``mistake_kind`` names a wrong row; ``worst_mistakes`` orders them.
"""

from __future__ import annotations

import math
import re

import pandas as pd

ROW_COLUMNS = ("index", "entity_name", "entity_value", "prediction", "correct")
_TRUTH_ALIASES = ("entity_value", "truth", "label", "entity_value_true")
_PRED_ALIASES = ("prediction", "pred", "predicted", "entity_value_pred")
_NUMBER = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s+(\S.*?)\s*$")
MISTAKE_KINDS = ("wrong value", "missed", "false alarm")


def _pick(frame: pd.DataFrame, aliases: tuple[str, ...], what: str) -> str:
    for name in aliases:
        if name in frame.columns:
            return name
    raise ValueError(f"rows need a {what} column (one of {aliases}); got columns {list(frame.columns)}")


def normalize_rows(rows: pd.DataFrame, test: pd.DataFrame | None = None) -> pd.DataFrame:
    """The per-row frame with ``index, entity_name, entity_value, prediction, correct`` (+ ``image_link``).

    ``image_link`` comes from ``rows`` or, joined on ``index``, from ``test``. Empty cells are ``""``.
    """
    frame = rows.reset_index(drop="index" in rows.columns).copy()
    if "index" not in frame.columns:
        raise ValueError(f"rows need an 'index' column; got columns {list(rows.columns)}")
    truth, pred = _pick(frame, _TRUTH_ALIASES, "truth"), _pick(frame, _PRED_ALIASES, "prediction")
    frame = frame.rename(columns={truth: "entity_value", pred: "prediction"})
    for column in ("entity_value", "prediction"):
        frame[column] = frame[column].fillna("").astype(str).str.strip()
    if "entity_name" not in frame.columns:
        if test is None or "entity_name" not in test.columns:
            raise ValueError("rows need 'entity_name' (or pass the test table that has it)")
        frame = frame.merge(test[["index", "entity_name"]], on="index", how="left")
    if "correct" not in frame.columns:
        frame["correct"] = frame["prediction"] == frame["entity_value"]
    frame["correct"] = frame["correct"].astype(bool)
    if "image_link" not in frame.columns and test is not None and "image_link" in test.columns:
        frame = frame.merge(test[["index", "image_link"]].drop_duplicates("index"), on="index", how="left")
    return frame


def number_unit(text: str) -> tuple[float, str] | None:
    match = _NUMBER.match(text)
    return (float(match.group(1)), match.group(2)) if match else None


def mistake_kind(prediction: str, truth: str) -> str:
    """``"wrong value"`` (both given, differ), ``"missed"`` (truth only) or ``"false alarm"`` (prediction only)."""
    if prediction and truth:
        return "wrong value"
    return "missed" if truth else "false alarm"


def _severity(prediction: str, truth: str) -> float:
    """How far off a wrong value is: relative numeric error, infinite for another unit or unreadable text."""
    got, want = number_unit(prediction), number_unit(truth)
    if not got or not want or got[1] != want[1]:
        return math.inf
    return abs(got[0] - want[0]) / max(abs(want[0]), 1e-9)


def worst_mistakes(rows: pd.DataFrame, n: int = 12) -> pd.DataFrame:
    """The ``n`` worst wrong rows: wrong values first (farthest off first), then misses, then false alarms."""
    frame = normalize_rows(rows)
    wrong = frame[~frame["correct"]].copy()
    wrong["kind"] = [mistake_kind(p, t) for p, t in zip(wrong["prediction"], wrong["entity_value"])]
    wrong["severity"] = [_severity(p, t) for p, t in zip(wrong["prediction"], wrong["entity_value"])]
    wrong["_rank"] = wrong["kind"].map({kind: rank for rank, kind in enumerate(MISTAKE_KINDS)})
    wrong = wrong.sort_values(["_rank", "severity", "index"], ascending=[True, False, True], kind="stable")
    return wrong.drop(columns="_rank").head(max(0, n)).reset_index(drop=True)
