"""What a valid submission row is: one definition for the sanity check (``utils.core.sanity``) and the metric
(``utils.core.metrics``), so that the two can never disagree.

A prediction (compared after stripping leading/trailing whitespace) is **valid** when it is empty, or when

* it matches the challenge's pattern ``-?<digits>[.<digits>] <unit words>`` (:data:`PREDICTION_PATTERN`, ASCII
  digits and whitespace only: no exponent such as ``1e5``, no thousands separator, no no-break space), and
* its unit (the text after the number, stripped) is written exactly as one of the units
  ``utils.core.units.ENTITY_UNIT_MAP`` allows for the row's entity (``gram``, not ``grams`` or ``g``).

Otherwise its problem is ``"format"`` (the pattern) or ``"unit"`` (the unit for that entity). The sanity check
reports these problems; the metric scores a non-empty invalid prediction as a wrong answer (FP), whatever its value.

An **index** is valid when its text is an integer (``-?[0-9]+``, surrounding whitespace ignored) that fits in a
signed 64-bit integer; a numeric column is read by value (an integral float such as ``10.0`` is ``10``). Anything
else (``inf``, ``1e5``, ``seven``, a 20-digit number) is invalid with a reason, never wrapped or rounded.

Everything is vectorised (pyarrow's RE2 kernels), so the 131,187-row test set takes a fraction of a second.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from utils.core.units import ENTITY_UNIT_MAP

_SPACE = r"[\t\n\f\r ]"  # RE2's \s, spelled out so Python's re reads the pattern the same way
#: The challenge's pattern for a non-empty prediction (matched against the whole stripped value).
PREDICTION_PATTERN = rf"-?[0-9]+(?:\.[0-9]+)?{_SPACE}+[a-zA-Z\t\n\f\r ]+"
_NUMBER_PREFIX = rf"^-?[0-9]+(?:\.[0-9]+)?{_SPACE}+"
_ALLOWED_PAIRS = pa.array(sorted(f"{e}|{u}" for e, us in ENTITY_UNIT_MAP.items() for u in us), type=pa.string())
_INDEX_RE = re.compile(r"-?[0-9]+")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def cell_text(values: object) -> pd.Series:
    """Cells as stripped text with a fresh 0..n-1 index; None/NaN are ``""``."""
    col = pd.Series(values) if not isinstance(values, pd.Series) else values
    return col.astype(object).where(col.notna(), "").astype("str").str.strip().reset_index(drop=True)


@dataclass(frozen=True)
class PredictionCheck:
    """Per-row verdicts on predictions (numpy arrays of one length): see :func:`check_predictions`."""

    text: np.ndarray  # the stripped prediction (object array of str)
    empty: np.ndarray  # bool: "" (valid: "no answer")
    well_formed: np.ndarray  # bool: non-empty and matches PREDICTION_PATTERN
    unit: np.ndarray  # the text after the number, stripped (object array; meaningful where well_formed)
    unit_ok: np.ndarray  # bool: well formed and the unit is allowed for the row's entity

    @property
    def valid(self) -> np.ndarray:
        """Empty, or well formed with an allowed unit."""
        return self.empty | self.unit_ok

    @property
    def bad_format(self) -> np.ndarray:
        return ~self.empty & ~self.well_formed

    @property
    def bad_unit(self) -> np.ndarray:
        return self.well_formed & ~self.unit_ok

    def problem(self, i: int) -> str | None:
        """``None`` (valid), ``"format"`` or ``"unit"`` for row ``i``."""
        if self.valid[i]:
            return None
        return "format" if self.bad_format[i] else "unit"


def check_predictions(predictions: object, entities: object) -> PredictionCheck:
    """Check each prediction against its row's entity (two equal-length sequences or Series; an unknown or empty
    entity allows no unit)."""
    pred = cell_text(predictions)
    ent = cell_text(entities)
    if len(pred) != len(ent):
        raise ValueError(f"check_predictions: {len(pred)} predictions but {len(ent)} entities")
    text = pa.array(pred.to_numpy(dtype=object), type=pa.string())
    empty = (pred == "").to_numpy()
    well_formed = pc.match_substring_regex(text, f"^{PREDICTION_PATTERN}$").to_numpy(zero_copy_only=False) & ~empty
    unit_arr = pc.utf8_trim_whitespace(pc.replace_substring_regex(text, _NUMBER_PREFIX, ""))
    pair = pc.binary_join_element_wise(pa.array(ent.to_numpy(dtype=object), type=pa.string()), unit_arr, "|")
    pair_ok = pc.is_in(pair, value_set=_ALLOWED_PAIRS).to_numpy(zero_copy_only=False)
    return PredictionCheck(
        text=pred.to_numpy(dtype=object),
        empty=empty,
        well_formed=well_formed,
        unit=unit_arr.to_numpy(zero_copy_only=False),
        unit_ok=well_formed & pair_ok,
    )


def prediction_problem(prediction: object, entity: object) -> str | None:
    """``None`` when ``prediction`` is a valid value for ``entity`` (or empty), else ``"format"`` or ``"unit"``."""
    return check_predictions([prediction], [entity]).problem(0)


@dataclass(frozen=True)
class IndexCheck:
    """Parsed index values: ``values`` (int64; 0 where ``bad``), ``bad`` (bool), ``text`` (the cells as read) and
    ``reason`` (why a bad one is bad, ``""`` elsewhere)."""

    values: np.ndarray
    bad: np.ndarray
    text: np.ndarray
    reason: np.ndarray


def _float_cell(v: object) -> str:
    if isinstance(v, float) and math.isfinite(v) and v == int(v):
        return str(int(v))  # an integral float from a numeric column: 10.0 -> "10"
    return "" if v is None or (isinstance(v, float) and math.isnan(v)) else str(v)


def parse_index(values: object) -> IndexCheck:
    """Parse an index column strictly (see the module docstring); never wraps, rounds or raises on a cell."""
    col = pd.Series(values) if not isinstance(values, pd.Series) else values
    col = col.reset_index(drop=True)
    if pd.api.types.is_float_dtype(col.dtype) or col.dtype == object:
        col = pd.Series([_float_cell(v) if isinstance(v, float) or v is None else v for v in col], dtype=object)
    text = cell_text(col)
    n = len(text)
    out = np.zeros(n, dtype=np.int64)
    bad = np.zeros(n, dtype=bool)
    reason = np.full(n, "", dtype=object)
    form = text.str.fullmatch(_INDEX_RE.pattern).to_numpy(dtype=bool)
    short = form & (text.str.len() <= 18).to_numpy()  # at most 18 digits (and a sign): always fits in int64
    if short.any():
        out[short] = text[short].astype(np.int64).to_numpy()
    for i in np.flatnonzero(form & ~short):
        digits = text.iat[i].lstrip("-").lstrip("0")
        v = int(text.iat[i]) if len(digits) <= 19 else None
        if v is None or not _INT64_MIN <= v <= _INT64_MAX:
            bad[i] = True
            reason[i] = "is out of range (an index must fit in a signed 64-bit integer)"
        else:
            out[i] = v
    not_int = ~form
    bad |= not_int
    reason[not_int] = "is not an integer"
    return IndexCheck(values=out, bad=bad, text=text.to_numpy(dtype=object), reason=reason)
