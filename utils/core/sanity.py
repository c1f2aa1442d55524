"""The submission check: what the challenge's sanity check enforced, and stricter.

The challenge's check wanted a CSV with ``index,prediction`` where each prediction is empty or matches
``^-?\\d+(\\.\\d+)?\\s+[a-zA-Z\\s]+$`` with a known unit (leading/trailing spaces ignored); it only *printed*
missing and extra indices. Here all of these are errors:

=============  ==============================================================================================
kind           problem
=============  ==============================================================================================
``columns``    the columns are not exactly ``index`` and ``prediction``
``index``      an index that is not an integer (``-?[0-9]+``) or does not fit in a signed 64-bit integer
``duplicate``  an index given more than once (each repeat after the first)
``extra``      an index that is not in the test set
``missing``    a test index with no prediction row
``format``     a non-empty prediction that does not match the challenge's pattern
``unit``       a well-formed prediction whose unit (written out in full, e.g. ``gram``) is not allowed for
               that row's entity (``utils.core.units.ENTITY_UNIT_MAP``)
=============  ==============================================================================================

Stricter than the challenge in two small ways: the unit must be written exactly as in ``ENTITY_UNIT_MAP`` (no
"centimeter" for "centimetre"), and digits and spaces are ASCII only (a no-break space is a format error). The
``index``/``format``/``unit`` rules live in ``utils.core.submission_format``, which the metric
(``utils.core.metrics``) shares: a prediction rejected here can never score as correct there. Line numbers in the
details assume the predictions were read from a CSV with a header (row 0 is line 2).
Everything is vectorised: the full 131,187-row test set is checked in a fraction of a second.

CLI: ``python -m utils.sanity TEST.csv PREDICTIONS.csv`` exits 0 with one summary line when valid; otherwise it
exits 1 listing the first offending rows and the count per kind. A file that cannot be read as a table (missing,
a folder, not UTF-8, lines with a wrong number of cells such as trailing commas; see ``utils.env.csv_input``) or an
invalid test file exits 2 with one line ``INVALID: <file>: <problem>`` on stderr, never a traceback.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
import pandas as pd

from utils.core.submission_format import PREDICTION_PATTERN, check_predictions, parse_index
from utils.core.units import ENTITY_UNIT_MAP

__all__ = ["KINDS", "PREDICTION_PATTERN", "Problem", "check_submission", "summarize"]

REQUIRED_COLUMNS: tuple[str, ...] = ("index", "prediction")
KINDS: tuple[str, ...] = ("columns", "index", "duplicate", "extra", "missing", "format", "unit")
_SHOW = 20


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a submission; ``index`` is ``None`` for whole-file problems (columns)."""

    index: int | None
    kind: str
    detail: str

    def __str__(self) -> str:
        where = "file" if self.index is None else f"index {self.index}"
        return f"{where}: {self.kind}: {self.detail}"


def check_submission(test: pd.DataFrame, predictions: pd.DataFrame) -> list[Problem]:
    """Every problem with ``predictions`` (``index,prediction``) against ``test`` (``index,entity_name``).

    Returns an empty list when the submission is valid. Problems come in this order: column problems, then per
    prediction row (in file order), then missing test indices (in test order). What a valid index and a valid
    prediction are is defined once, in ``utils.core.submission_format`` (the metric uses the same definition).
    """
    problems: list[Problem] = []
    cols = [str(c) for c in predictions.columns]
    if sorted(cols) != sorted(REQUIRED_COLUMNS) or len(cols) != len(REQUIRED_COLUMNS):
        missing = [c for c in REQUIRED_COLUMNS if c not in cols]
        extra = [c for c in cols if c not in REQUIRED_COLUMNS]
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing)}")
        if extra:
            parts.append(f"unexpected {', '.join(map(repr, extra))}")
        repeated = [c for c in REQUIRED_COLUMNS if cols.count(c) > 1]
        if not parts or repeated:
            parts.append(f"{', '.join(repeated) or 'a column'} is repeated")
        problems.append(Problem(None, "columns", f"want exactly index,prediction; {'; '.join(parts)}"))
        if missing or repeated:
            return problems

    test_index = pd.to_numeric(test["index"], errors="raise").astype("int64")
    entity_of = pd.Series(test["entity_name"].astype(str).to_numpy(), index=test_index.to_numpy())

    parsed = parse_index(predictions["index"])
    n = len(predictions)
    lines = np.arange(n) + 2

    bad_index = parsed.bad
    idx = np.where(bad_index, -1, parsed.values)
    dup = np.zeros(n, dtype=bool)
    dup[~bad_index] = pd.Series(idx[~bad_index]).duplicated(keep="first").to_numpy()
    known = np.zeros(n, dtype=bool)
    known[~bad_index] = pd.Series(idx[~bad_index]).isin(entity_of.index).to_numpy()
    extra = ~bad_index & ~known

    entity = np.full(n, "", dtype=object)
    entity[known] = entity_of.reindex(idx[known]).to_numpy()
    check = check_predictions(predictions["prediction"], entity)
    pred, unit = check.text, check.unit
    bad_format = check.bad_format
    bad_unit = check.bad_unit & known

    any_bad = bad_index | dup | extra | bad_format | bad_unit
    for pos in np.flatnonzero(any_bad):
        line = int(lines[pos])
        ident = None if bad_index[pos] else int(idx[pos])
        if bad_index[pos]:
            problems.append(
                Problem(None, "index", f"line {line}: index {parsed.text[pos]!r} {parsed.reason[pos]}")
            )
            continue
        if dup[pos]:
            problems.append(Problem(ident, "duplicate", f"line {line}: index given more than once"))
        elif extra[pos]:
            problems.append(Problem(ident, "extra", f"line {line}: index is not in the test set"))
        if bad_format[pos]:
            problems.append(
                Problem(ident, "format", f"line {line}: {pred[pos]!r} is not '<number> <unit>' (or empty)")
            )
        elif bad_unit[pos]:
            allowed = ", ".join(sorted(ENTITY_UNIT_MAP[entity[pos]]))
            problems.append(
                Problem(
                    ident,
                    "unit",
                    f"line {line}: unit {unit[pos]!r} is not allowed for {entity[pos]} (allowed: {allowed})",
                )
            )

    present = pd.Series(idx[~bad_index]).unique()
    missing_mask = ~test_index.isin(present).to_numpy()
    for ident in test_index.to_numpy()[missing_mask]:
        problems.append(Problem(int(ident), "missing", "test index has no prediction row"))
    return problems


def summarize(problems: list[Problem]) -> str:
    """``"kind: count"`` pairs, in the order of :data:`KINDS`."""
    counts = Counter(p.kind for p in problems)
    return ", ".join(f"{k}: {counts[k]}" for k in KINDS if counts[k])
