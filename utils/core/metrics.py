"""The competition metric: F1 over non-empty answers, overall and per entity.

Per row, with ``p`` the prediction and ``t`` the truth (both stripped):

* TP: ``p`` and ``t`` non-empty and equal;
* FP: ``p`` non-empty and (``t`` empty or ``p`` differs from ``t``);
* FN: ``p`` empty and ``t`` non-empty;
* (both empty: a true negative, counted in ``n`` only).

``precision = TP/(TP+FP)``, ``recall = TP/(TP+FN)``, ``F1 = 2PR/(P+R)`` (0 where a denominator is 0).

Equality (``f1``) compares parsed values: same unit written out in full (``"500 gram" == "500.0 gram"``; units are
compared exactly, so ``"8.0 fluid ounce"`` does not equal ``"8.0 ounce"``), values equal up to a relative 1e-9
(float noise only). ``f1_strict`` is plain string equality, which is what a literal reading of the challenge does.

Range labels (about 1% of the real labels: ``"[100.0, 240.0] volt"``, ``"10 kilogram to 15 kilogram"``): a valid
prediction is one number, so a literal string comparison can never match them. Decision: with
``range_match="endpoint"`` (the default, ``RANGE_MATCH``) a prediction equals a range label when its unit is the
range's unit and its value is either end (``"100.0 volt"`` and ``"240.0 volt"`` both score TP against
``"[100.0, 240.0] volt"``), which is what ``utils.core.units.normalize_prediction`` gives under every range rule but
"mean"/"empty"; the same range written either way also matches. ``range_match="none"`` makes range labels
unmatchable (a prediction for them is always an FP), as the strict column always does. A label that parses neither
way is compared as a string.

Valid predictions only: a non-empty prediction that the sanity check (``utils.core.sanity``) rejects, for its format or
for its unit on that row's entity, is scored as a wrong answer (FP) whatever its value, in both columns: ``"1e5
gram"`` against ``"100000.0 gram"``, ``"[100.0, 240.0] volt"`` (a range is not a submission value) or ``"8.0 ounce"``
for item_volume are all FP. The rule is defined once, in ``utils.core.submission_format``, for both tools; ``rows``
has a ``valid`` column. ``values_equal`` compares values only and does not apply it.

CLI: ``python -m utils.metrics PREDICTIONS.csv LABELS.csv [--range-match endpoint|none]`` prints the table; its last
line is ``F1 <value>``. ``PREDICTIONS.csv`` has ``index,prediction``; ``LABELS.csv`` has
``index,entity_name,entity_value`` (extra columns are ignored). A label index with no prediction counts as an empty
prediction, predictions for indices not in the labels are ignored; both are counted and reported, as are invalid
predictions. Indices follow the sanity check's rule (an integer that fits in 64 bits; ``inf``, ``1e5`` or a
20-digit number is an error). Every failure (unreadable file, bad columns or index) is one line ``error: ...`` on
stderr with exit status 2, never a traceback.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from utils.core.submission_format import check_predictions, parse_index
from utils.core.units import parse_range, parse_value

#: How a range label scores: "endpoint" (either end matches) or "none" (never matched).
RANGE_MATCH = "endpoint"
RANGE_MATCHES: tuple[str, ...] = ("endpoint", "none")
TABLE_COLUMNS: tuple[str, ...] = ("n", "tp", "fp", "fn", "precision", "recall", "f1", "f1_strict")
_REL_TOL = 1e-9


def _close(a: float, b: float) -> bool:
    return a == b or math.isclose(a, b, rel_tol=_REL_TOL, abs_tol=0.0)


def _clean(value: object) -> str:
    """A cell as stripped text; NaN/None are empty."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return " ".join(str(value).split())


def values_equal(prediction: str, truth: str, range_match: str | None = None) -> bool:
    """Whether a non-empty prediction equals a non-empty truth (parsed values; see the module docstring)."""
    rule = RANGE_MATCH if range_match is None else range_match
    if rule not in RANGE_MATCHES:
        raise ValueError(f"unknown range_match {rule!r}; expected one of {', '.join(RANGE_MATCHES)}")
    p, t = _clean(prediction), _clean(truth)
    if not p or not t:
        return False
    pv, tv = parse_value(p), parse_value(t)
    if tv is not None:
        return pv is not None and pv[1] == tv[1] and _close(pv[0], tv[0])
    tr = parse_range(t)
    if tr is None:
        return p == t
    pr = parse_range(p)
    if pr is not None:
        return pr[2] == tr[2] and _close(pr[0], tr[0]) and _close(pr[1], tr[1])
    if pv is None or rule == "none":
        return False
    return pv[1] == tr[2] and (_close(pv[0], tr[0]) or _close(pv[0], tr[1]))


@dataclass
class F1Report:
    """The scores: ``table`` (one row per entity plus ``ALL``), ``f1`` overall, ``rows`` the joined per-row frame.

    ``rows`` has ``index,entity_name,entity_value,prediction,valid,correct,correct_strict,outcome`` (outcome is
    TP/FP/FN/TN under parsed equality; ``correct`` is TP or TN, i.e. not a mistake; ``valid`` is False for a
    prediction the sanity check rejects, which is never correct). ``missing``: label indices without a prediction
    (scored as empty); ``extra``: predictions whose index is not in the labels (ignored); ``invalid``: label rows
    whose prediction is not a valid submission value (scored FP).
    """

    table: pd.DataFrame
    f1: float
    rows: pd.DataFrame
    missing: int = 0
    extra: int = 0
    invalid: int = 0

    @property
    def f1_strict(self) -> float:
        """Overall F1 under plain string equality."""
        return float(self.table.loc["ALL", "f1_strict"])


def _f1(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def _indexed(df: pd.DataFrame, columns: tuple[str, ...], what: str) -> pd.DataFrame:
    """Check columns, parse ``index`` (the sanity check's rule) and refuse duplicates, with messages naming ``what``.

    Text columns are cleaned (``_clean``); ``prediction`` also keeps its stripped text as read in ``raw_prediction``
    (validity is judged on it, as the sanity check does).
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"{what}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise ValueError(f"{what}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, df.columns))}")
    if any(list(df.columns).count(c) > 1 for c in columns):
        raise ValueError(f"{what}: a column is repeated ({', '.join(map(str, df.columns))})")
    out = df.loc[:, list(columns)].copy().reset_index(drop=True)
    parsed = parse_index(out["index"])
    if parsed.bad.any():
        pos = int(parsed.bad.argmax())
        raise ValueError(
            f"{what}: index {parsed.text[pos]!r} (row {pos + 1}, CSV line {pos + 2}) {parsed.reason[pos]} "
            f"({int(parsed.bad.sum())} such rows)"
        )
    out["index"] = parsed.values
    dup = out["index"].duplicated()
    if dup.any():
        raise ValueError(
            f"{what}: index {int(out['index'][dup].iloc[0])} appears more than once ({int(dup.sum())} duplicates)"
        )
    if "prediction" in columns:
        out["raw_prediction"] = [
            "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v).strip() for v in out["prediction"]
        ]
    for c in columns:
        if c != "index":
            out[c] = [_clean(v) for v in out[c]]
    return out


def score(predictions: pd.DataFrame, labels: pd.DataFrame, range_match: str | None = None) -> F1Report:
    """Score ``predictions`` (``index,prediction``) against ``labels`` (``index,entity_name,entity_value``)."""
    rule = RANGE_MATCH if range_match is None else range_match
    if rule not in RANGE_MATCHES:
        raise ValueError(f"unknown range_match {rule!r}; expected one of {', '.join(RANGE_MATCHES)}")
    pred = _indexed(predictions, ("index", "prediction"), "predictions")
    lab = _indexed(labels, ("index", "entity_name", "entity_value"), "labels")
    rows = lab.merge(pred, on="index", how="left", indicator=True)
    missing = int((rows["_merge"] == "left_only").sum())
    extra = int((~pred["index"].isin(lab["index"])).sum())
    rows = rows.drop(columns="_merge")
    rows["prediction"] = rows["prediction"].fillna("").astype(str)
    # the sanity check's verdict on each prediction, for that row's entity: an invalid one is never correct
    rows["valid"] = check_predictions(rows.pop("raw_prediction").fillna(""), rows["entity_name"]).valid

    cache: dict[tuple[str, str], bool] = {}
    correct = []
    for p, t in zip(rows["prediction"], rows["entity_value"]):
        key = (p, t)
        if key not in cache:
            cache[key] = values_equal(p, t, rule)
        correct.append(cache[key])
    has_p = rows["prediction"] != ""
    has_t = rows["entity_value"] != ""
    both_empty = ~has_p & ~has_t
    rows["correct"] = (pd.Series(correct, index=rows.index, dtype=bool) & rows["valid"]) | both_empty
    rows["correct_strict"] = ((rows["prediction"] == rows["entity_value"]) & rows["valid"]) | both_empty
    rows["outcome"] = "TN"
    rows.loc[has_p & rows["correct"], "outcome"] = "TP"
    rows.loc[has_p & ~rows["correct"], "outcome"] = "FP"
    rows.loc[~has_p & has_t, "outcome"] = "FN"

    def counts(mask: pd.Series) -> dict[str, float]:
        sub_p, sub_t = has_p[mask], has_t[mask]
        tp = int((sub_p & rows["correct"][mask]).sum())
        fp = int(sub_p.sum()) - tp
        fn = int((~sub_p & sub_t).sum())
        tps = int((sub_p & rows["correct_strict"][mask]).sum())
        precision, recall, f1 = _f1(tp, fp, fn)
        return {
            "n": int(mask.sum()), "tp": tp, "fp": fp, "fn": fn,
            "precision": precision, "recall": recall, "f1": f1,
            "f1_strict": _f1(tps, int(sub_p.sum()) - tps, fn)[2],
        }  # fmt: skip

    records = {e: counts(rows["entity_name"] == e) for e in sorted(rows["entity_name"].unique())}
    records["ALL"] = counts(pd.Series(True, index=rows.index))
    table = pd.DataFrame.from_dict(records, orient="index").loc[:, list(TABLE_COLUMNS)]
    table.index.name = "entity_name"
    invalid = int((~rows["valid"]).sum())
    return F1Report(
        table=table, f1=float(table.loc["ALL", "f1"]), rows=rows, missing=missing, extra=extra, invalid=invalid
    )
