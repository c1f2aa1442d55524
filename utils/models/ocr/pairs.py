"""The unit of a printed conversion: which of "100 g (3.53 oz)" or "10 cm / 3.9 in" the label takes.

``PairModel`` runs after the ranker's pick: when the pick has a conversion partner among the row's candidates, a
small logistic regression on the differences between the two decides the unit (see its docstring).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression

from utils.core.units import METRIC_UNITS, parse_value, same_amount
from utils.models.ocr.features import CONVERSION_TOL, DIMS, CandidateTable


def same_amount_any_unit(a: str, b: str) -> bool | None:
    """Whether answers ``a`` and ``b`` are the same amount within ``CONVERSION_TOL`` (any units); None when one of
    them does not parse or names a unit without a conversion."""
    pa, pb = parse_value(a), parse_value(b)
    if pa is None or pb is None:
        return None
    try:
        return same_amount(pa, pb, CONVERSION_TOL)
    except ValueError:
        return None


def _conversion(a: str, b: str) -> bool:
    """Whether answers ``a`` and ``b`` are the same amount in two units (a printed conversion)."""
    pa, pb = parse_value(a), parse_value(b)
    return pa is not None and pb is not None and pa[1] != pb[1] and bool(same_amount_any_unit(a, b))


def _box_index(table: CandidateTable, k: int) -> int:
    """The OCR box (line) candidate ``k`` was read from (its first box), from the ``read_order`` feature."""
    return int(math.floor(table.X.at[k, "read_order"] * table.X.at[k, "n_boxes"] + 1e-6))


class PairModel:
    """Which unit of a printed conversion ("100 g (3.53 oz)", "10 cm / 3.9 in") the label takes.

    Labels differ by source: challenge weights follow the product group's catalogue habit more than print order,
    challenge dimensions lean to inch and to the first unit of a one-line pair but the second of a two-line one,
    while hand-labelled dimensions take the first printed unit. A pointwise ranker sees this weakly (the two
    candidates share nearly all features), so a logistic regression on the differences between the two members
    decides instead: the unit's share among the product group's training labels (shrunk toward the entity's share
    by the group's label count) and among all the entity's labels (train.csv: 190,000 labels, not just the pairs
    fitted on), which is in brackets, which is printed first, the same when both are in one text line, which is
    metric; each apart for dimensions and for the other entities. Trained on the rows whose label is one member of
    a conversion pair, both orders of each pair (antisymmetric, no intercept). The entity share and the one-line
    order: dims_real_dev F1 0.683 -> 0.719 (dimension rows 0.652 -> 0.700), dev 0.857 -> 0.855, dims_dev
    unchanged (6 fold seeds).
    """

    COLUMNS = ("group_unit_share", "unit_share", "paren")
    MIN_PAIRS = 4  # fewer labelled pairs: no model (the ranker's pick stands)

    def __init__(self, C: float = 1.0) -> None:
        self.C = C
        self.model: Any = None
        self.n_pairs = 0

    @staticmethod
    def features(table: CandidateTable, i: int, j: int) -> np.ndarray:
        """Features of "candidate i rather than candidate j" (negated when the two swap)."""
        X = table.X
        d = [X.at[i, c] - X.at[j, c] for c in PairModel.COLUMNS]
        d.append(float(np.sign(X.at[j, "read_order"] - X.at[i, "read_order"])))  # +1: i printed first
        ui, uj = parse_value(table.answers[i]), parse_value(table.answers[j])
        d.append(float(bool(ui and ui[1] in METRIC_UNITS)) - float(bool(uj and uj[1] in METRIC_UNITS)))
        # printed in one text line ("10 cm (3.9 in)"), the label leans to the first; in two lines, to the second
        # (dims_real_dev: first 71% of 58 one-line pairs, 35% of 31 two-line pairs)
        d.append(float(_box_index(table, i) == _box_index(table, j)) * d[len(PairModel.COLUMNS)])
        dims = float(any(X.at[i, f"ent_{e}"] for e in DIMS))
        v = np.asarray(d)
        return np.concatenate([v * dims, v * (1.0 - dims)])

    @staticmethod
    def _rows(table: CandidateTable) -> dict[int, list[int]]:
        by: dict[int, list[int]] = {}
        for k, r in enumerate(table.row):
            by.setdefault(int(r), []).append(k)
        return by

    def fit(self, table: CandidateTable) -> PairModel:
        """Fit on the rows whose label is a candidate with a conversion partner among the row's candidates."""
        X: list[np.ndarray] = []
        for idx in self._rows(table).values():
            right = [k for k in idx if table.y[k] == 1]
            if not right:
                continue
            i = right[0]
            j = next((k for k in idx if table.y[k] == 0 and _conversion(table.answers[i], table.answers[k])), None)
            if j is not None:
                f = self.features(table, i, j)
                X += [f, -f]
        self.n_pairs = len(X) // 2
        if self.n_pairs >= self.MIN_PAIRS:
            y = np.tile([1, 0], self.n_pairs)
            self.model = LogisticRegression(C=self.C, fit_intercept=False).fit(np.vstack(X), y)
        return self

    def resolve(self, table: CandidateTable, scores: np.ndarray, answers: list[str]) -> list[str]:
        """``answers`` with each pick that has a conversion partner replaced by the partner the model prefers."""
        if self.model is None:
            return answers
        out = list(answers)
        for r, idx in self._rows(table).items():
            a = out[r]
            if not a:
                continue
            mine = [k for k in idx if table.answers[k] == a]
            others = [k for k in idx if _conversion(a, table.answers[k])]
            if not mine or not others:
                continue
            i, j = max(mine, key=lambda k: scores[k]), max(others, key=lambda k: scores[k])
            if self.model.predict_proba(self.features(table, i, j)[None])[0, 1] < 0.5:
                out[r] = table.answers[j]
        return out
