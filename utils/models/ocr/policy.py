"""The abstain policy: when an empty answer is worth more than the best candidate, under the challenge's F1.

An empty answer to a row whose truth has a value costs what a wrong answer does (a false negative against a false
positive), so only rows with an empty truth reward abstaining. The threshold is therefore fitted to the share of
empty truths expected where the backend is used (``RankerConfig.empty_share``; default the training labels' share,
which is 0 for the challenge's labels: never abstain), on out-of-fold scores with the empty-labelled rows weighted
to that share.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def f1_counts(correct: np.ndarray, predicted: np.ndarray, has_truth: np.ndarray, empty_weight: float = 1.0
              ) -> float:
    """The challenge F1 from per-row booleans (a wrong non-empty answer is a FP; an empty one with truth a FN);
    rows with an empty truth count ``empty_weight`` times (to stand for another share of them)."""
    w = np.where(has_truth, 1.0, float(empty_weight))
    tp = float((w * (predicted & correct)).sum())
    fp = float((w * (predicted & ~correct)).sum())
    fn = float((w * (~predicted & has_truth)).sum())
    return 2 * tp / max(2 * tp + fp + fn, 1e-12) if 2 * tp + fp + fn > 0 else 0.0


def empty_weight_for(has_truth: np.ndarray, empty_share: float) -> float:
    """The weight that makes the empty-truth rows among ``has_truth`` stand for ``empty_share`` of all rows
    (1.0 when there are none, or none with a value)."""
    n_empty, n_has = int((~has_truth).sum()), int(has_truth.sum())
    if n_empty == 0 or n_has == 0 or not 0.0 < empty_share < 1.0:
        return 1.0
    return empty_share / (1.0 - empty_share) * n_has / n_empty


def tune_threshold(best_sc: np.ndarray, correct: np.ndarray, has_truth: np.ndarray, empty_weight: float = 1.0
                   ) -> tuple[float, float]:
    """The abstain threshold with the best F1 on these rows (empty-truth rows weighted ``empty_weight``), and that
    F1. Ties go to the lowest threshold: without empty truths that is 0, never abstain (an empty answer to a row
    with a value costs what a wrong one does)."""
    cands = np.unique(np.concatenate([[0.0], best_sc[best_sc >= 0]]))
    best_t, best_f = 0.0, -1.0
    for t in cands:
        f = f1_counts(correct, best_sc >= t, has_truth, empty_weight)
        if f > best_f + 1e-12:
            best_t, best_f = float(t), f
    return best_t, best_f


def abstain_threshold(best_sc: np.ndarray, correct: np.ndarray, has_truth: np.ndarray, empty_share: float
                      ) -> tuple[float, float]:
    """The abstain policy: (threshold, out-of-fold F1 at it) for the expected share of empty truths. With
    ``empty_share`` 0, or no empty-labelled row to learn from, 0.0: every row with a candidate is answered."""
    if empty_share <= 0.0 or has_truth.all():
        return 0.0, f1_counts(correct, best_sc >= 0, has_truth)
    return tune_threshold(best_sc, correct, has_truth, empty_weight_for(has_truth, empty_share))


def expected_empty_share(rows: pd.DataFrame, empty_share: float | None) -> float:
    """``empty_share`` (the setting), or (None) the share of ``rows`` whose label is empty."""
    if empty_share is not None:
        if not 0.0 <= empty_share < 1.0:
            raise ValueError(f"empty_share must be in [0, 1), not {empty_share!r}")
        return float(empty_share)
    if not len(rows):
        return 0.0
    return float((rows["entity_value"].fillna("").astype(str) == "").mean())
