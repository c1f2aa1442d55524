"""What the training labels say about plausible answers, learned once per fit and used as features.

Per entity: the share of each unit among the labels, a smoothed histogram of log10(value) per unit and the counts of
exact values; per product group and entity: the units and the commonest labels (the answer for a row with nothing
read). Learned from the fit's own rows plus, when given, all of ``train.csv`` (``RankerConfig.prior_csv``).
"""

from __future__ import annotations

import math
from collections import Counter
from typing import Any

import numpy as np
import pandas as pd

from utils.core.units import format_value, parse_value

_BIN = 0.25  # width of a log10 bin
_LO, _HI = -4.0, 7.0


class Priors:
    """Per (entity, unit): share of the unit among labels, and a smoothed histogram of log10(value)."""

    def __init__(self) -> None:
        self.unit_counts: dict[str, Counter] = {}
        self.hist: dict[tuple[str, str], np.ndarray] = {}
        self.value_counts: dict[tuple[str, str], Counter] = {}
        self.group_units: dict[tuple[str, str], Counter] = {}  # (group_id, entity) -> unit counts
        self.group_answers: dict[tuple[str, str], Counter] = {}  # (group_id, entity) -> label counts
        self.entity_answers: dict[str, Counter] = {}  # entity -> label counts

    @classmethod
    def from_labels(cls, labels: pd.DataFrame) -> Priors:
        """Learn from a table with ``entity_name,entity_value`` (empty and range values are skipped)."""
        p = cls()
        nb = int((_HI - _LO) / _BIN) + 1
        groups = labels["group_id"].astype(str) if "group_id" in labels else [""] * len(labels)
        for ent, val, grp in zip(labels["entity_name"], labels["entity_value"].fillna(""), groups):
            if not val:
                continue
            pv = parse_value(str(val))
            if pv is None or pv[0] <= 0:
                continue
            v, u = pv
            p.unit_counts.setdefault(ent, Counter())[u] += 1
            h = p.hist.setdefault((ent, u), np.zeros(nb))
            h[_bin(v)] += 1
            p.value_counts.setdefault((ent, u), Counter())[round(v, 4)] += 1
            answer = format_value(v, u)
            p.entity_answers.setdefault(ent, Counter())[answer] += 1
            if grp:
                p.group_units.setdefault((grp, ent), Counter())[u] += 1
                p.group_answers.setdefault((grp, ent), Counter())[answer] += 1
        return p

    #: a product group with fewer labels for the entity answers from the entity's labels alone
    MIN_GROUP_ANSWERS = 5

    def prior_answer(self, group: str, entity: str) -> tuple[str, float]:
        """The commonest label for this product group and entity (for the entity alone when the group has fewer
        than ``MIN_GROUP_ANSWERS`` labels), and its share among those labels: ("", 0.0) when none is known."""
        counts = self.group_answers.get((str(group), entity), Counter())
        if sum(counts.values()) < self.MIN_GROUP_ANSWERS:
            counts = self.entity_answers.get(entity, Counter())
        if not counts:
            return "", 0.0
        answer, n = counts.most_common(1)[0]
        return answer, n / sum(counts.values())

    def group_features(self, group: str, entity: str, unit: str) -> tuple[float, float]:
        """(log share of the unit among this product group's labels for the entity, log1p of their count)."""
        gc = self.group_units.get((str(group), entity), Counter())
        tot = sum(gc.values())
        uc = self.unit_counts.get(entity, Counter())
        base = (uc.get(unit, 0) + 0.5) / (sum(uc.values()) + 5.0)
        return math.log((gc.get(unit, 0) + 5 * base) / (tot + 5.0)), math.log1p(tot)

    def features(self, entity: str, unit: str, value: float) -> tuple[float, float, float]:
        """(log share of unit, log density of the value's bin, log share of this exact value) for the entity."""
        uc = self.unit_counts.get(entity, Counter())
        tot = sum(uc.values())
        unit_share = math.log((uc.get(unit, 0) + 0.5) / (tot + 5.0))
        h = self.hist.get((entity, unit))
        if h is None or value <= 0:
            dens = math.log(1.0 / len(range(int((_HI - _LO) / _BIN) + 1)))
        else:
            sm = np.convolve(h, [0.25, 0.5, 0.25], mode="same") + 0.1
            dens = math.log(sm[_bin(value)] / sm.sum())
        vc = self.value_counts.get((entity, unit), Counter())
        exact = math.log((vc.get(round(value, 4), 0) + 0.1) / (sum(vc.values()) + 1.0))
        return unit_share, dens, exact


    # -- saved as JSON with a fitted ranker (``utils.models.ocr.ranker.save_ranker``) --------------------------------

    def to_json(self) -> dict[str, Any]:
        """Plain JSON: the counts as lists of ``[keys..., {value: count}]`` (tuple keys and float values kept)."""
        return {
            "unit_counts": {e: dict(c) for e, c in self.unit_counts.items()},
            "hist": [[e, u, h.tolist()] for (e, u), h in self.hist.items()],
            "value_counts": [[e, u, [[v, n] for v, n in c.items()]] for (e, u), c in self.value_counts.items()],
            "group_units": [[g, e, dict(c)] for (g, e), c in self.group_units.items()],
            "group_answers": [[g, e, dict(c)] for (g, e), c in self.group_answers.items()],
            "entity_answers": {e: dict(c) for e, c in self.entity_answers.items()},
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Priors:
        p = cls()
        p.unit_counts = {e: Counter(c) for e, c in data["unit_counts"].items()}
        p.hist = {(e, u): np.asarray(h, dtype=float) for e, u, h in data["hist"]}
        p.value_counts = {(e, u): Counter({float(v): n for v, n in c}) for e, u, c in data["value_counts"]}
        p.group_units = {(g, e): Counter(c) for g, e, c in data["group_units"]}
        p.group_answers = {(g, e): Counter(c) for g, e, c in data["group_answers"]}
        p.entity_answers = {e: Counter(c) for e, c in data["entity_answers"].items()}
        return p


def _bin(v: float) -> int:
    x = math.log10(max(v, 1e-12))
    return int(min(max((x - _LO) / _BIN, 0), (_HI - _LO) / _BIN))
