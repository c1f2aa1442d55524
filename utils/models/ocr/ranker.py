"""Learned ranking of OCR candidates, and the ``ocr`` backend (``OcrBackend``) built on it.

Per row (image + entity) the candidates from ``utils.models.ocr.candidates`` get a feature vector (unit, value plausibility
learned from training labels, text height and position, orientation, neighbouring keywords, repetition, rank by
size and by amount across units, dimension-string position ...). A small scikit-learn classifier scores each
candidate as "is the label"; the row's answer is its best candidate when that score reaches the abstain threshold
(see below; 0 for the challenge's labels), else ``""``. Training rows with an empty ``entity_value`` are abstain
labels: all their candidates are negatives. When the image declares one amount
right after "Net Wt" (or a translation) and the ranker picked another amount, the declared one is answered
(``RankerConfig.net_rule``; a pick that is the declared amount in another unit is kept): +0.007 / +0.011 dev F1 on
two CV seeds, dims_dev unchanged. Last, when the answer has a printed conversion among the row's candidates
("100 g (3.53 oz)"), ``PairModel`` chooses the unit (``RankerConfig.pair_model``): +0.003 dev and +0.007 dims_dev
F1, means over 6 CV seeds.

OCR (``ocr_lookup``) is upright first; an image whose boxes read no quantity at all is OCR'd again turned 90
degrees (``RankerConfig.rotate_fallback``): vertical print, and a second reading of lines the upright pass misread
("10//5A" read again as "100W/5A"). +0.011 dev F1 (3 seeds), dims_dev unchanged. A third pass turned 270 degrees
(until this round) added nothing the 180-degree classifier does not already turn: without it, dev F1 0.855 ->
0.856, dims_real_dev and dims_dev unchanged (6 seeds; one dev row fewer with its answer among the candidates), for
half the cost of the turned pass.

The abstain policy is explicit (``RankerConfig.empty_share``): under the challenge's F1 an empty answer to a row
whose truth has a value costs what a wrong one does, so only rows with an empty truth reward abstaining. The
threshold is fitted to the share of empty truths expected (default: the training labels' share, 0 for the
challenge's labels: never abstain), and a row with no candidate at all answers its group's commonest label.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from utils.models.ocr.candidates import Candidate, extract_candidates, same_answer
from utils.data.images import cached_image
from utils.models.ocr.engine import (
    DEFAULT_ENGINE,
    DEFAULT_MAX_SIDE,
    OcrResult,
    OcrSettings,
    Progress,
    default_cache_dir,
    ocr_many,
    tqdm_progress,
)

ARTIFACT_MODEL = "ranker.joblib"
ARTIFACT_JSON = "ranker.json"


@dataclass
class RankerConfig:
    """Settings of the OCR backend (``**settings`` of fit/predict are these field names)."""

    cache_dir: str | None = field(
        default=None, metadata={"help": "OCR cache folder (outside the repo); default $OCR_CACHE_DIR, else none"}
    )
    max_side: int = field(
        default=DEFAULT_MAX_SIDE, metadata={"help": "longest image side before OCR (0 = full resolution)"}
    )
    det_side: int = field(
        default=0, metadata={"help": "longest side the text detector sees (0 = max_side); recognition still reads "
                                     "the max_side image"}
    )
    workers: int = field(default=2, metadata={"help": "OCR processes"})
    threads: int = field(default=1, metadata={"help": "inference threads per OCR process"})
    engine: str = field(default=DEFAULT_ENGINE, metadata={"help": "OCR inference engine: 'openvino' or "
                                                                   "'onnxruntime' (same shipped models)"})
    precision: str = field(default=OcrSettings.precision, metadata={"help": "openvino's inference precision: "
                                                                           "'f32' (onnxruntime's texts) or 'bf16' "
                                                                           "(faster on CPUs with AMX)"})
    rec_batch: int = field(default=OcrSettings.rec_batch, metadata={"help": "text lines per recognition batch"})
    use_cls: bool = field(default=OcrSettings.use_cls, metadata={"help": "rapidocr's 180-degree text classifier"})
    rotate_fallback: bool = field(
        default=True, metadata={"help": "OCR an image again turned 90 degrees when its upright OCR reads no "
                                        "quantity at all; its rows then read the boxes of both passes (vertical "
                                        "print, and a second reading of misread lines)"}
    )
    model: str = field(default="hgb", metadata={"help": "'hgb' (HistGradientBoosting) or 'logreg'"})
    per_family: bool = field(
        default=True, metadata={"help": "one model per entity family (dimensions / the rest) besides the joint one: "
                                        "a fit on mixed entities then serves each as well as a fit on it alone"}
    )
    folds: int = field(default=5, metadata={"help": "group folds for out-of-fold threshold tuning"})
    threshold: float | None = field(
        default=None, metadata={"help": "fixed abstain threshold; None = fitted to empty_share (see there)"}
    )
    empty_share: float | None = field(
        default=None, metadata={"help": "share of rows with an empty truth expected where the backend is used; "
                                        "None = the training labels' share (0 for the challenge's labels). 0: "
                                        "never abstain (an empty answer costs as much as a wrong one when the "
                                        "truth has a value); above 0: the abstain threshold is tuned for F1 on "
                                        "out-of-fold scores with the empty-labelled rows weighted to this share"}
    )
    prior_answer: bool = field(
        default=True, metadata={"help": "a row with no candidate (nothing read, no image) answers the commonest "
                                        "label of its product group and entity in the training labels (of the "
                                        "entity alone for a group with few labels), when its share passes the "
                                        "abstain threshold"}
    )
    prior_csv: str | None = field(
        default=None, metadata={"help": "extra labels (train.csv) for value-plausibility priors; rows of fit's "
                                        "own train set are always used"}
    )
    batch_size: int = field(default=32, metadata={"help": "rows per predicted batch"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    pair_model: bool = field(
        default=True, metadata={"help": "when the pick has a printed conversion among the row's candidates ('100 g "
                                        "(3.53 oz)'), let a small model fitted on the training rows' pairs choose "
                                        "the unit (product group's unit habit, print order, brackets, metric)"}
    )
    net_rule: bool = field(
        default=True, metadata={"help": "answer the amount declared right after 'Net Wt' (when the image declares "
                                        "one amount) instead of the ranker's pick, unless that pick is the same "
                                        "amount in another unit"}
    )
    wandb_project: str = field(default="amazon-ml-ocr", metadata={"help": "wandb project for the fit run"})

    @classmethod
    def from_settings(cls, **settings: Any) -> RankerConfig:
        """Build from keyword settings; unknown names raise with the valid list."""
        names = {f.name for f in fields(cls)}
        bad = sorted(set(settings) - names)
        if bad:
            raise TypeError(f"unknown OCR backend settings {bad}; valid: {sorted(names)}")
        return cls(**settings)

    def ocr_settings(self) -> OcrSettings:
        return OcrSettings(max_side=self.max_side or None, det_side=self.det_side or None, engine=self.engine,
                           precision=self.precision, rec_batch=self.rec_batch, use_cls=self.use_cls)

    def cache_path(self) -> Path | None:
        return Path(self.cache_dir) if self.cache_dir else default_cache_dir()


# ---- value plausibility priors -----------------------------------------------------------------------------------

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
        from utils.core.units import format_value, parse_value

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
        counts = getattr(self, "group_answers", {}).get((str(group), entity), Counter())
        if sum(counts.values()) < self.MIN_GROUP_ANSWERS:
            counts = getattr(self, "entity_answers", {}).get(entity, Counter())
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


def _bin(v: float) -> int:
    x = math.log10(max(v, 1e-12))
    return int(min(max((x - _LO) / _BIN, 0), (_HI - _LO) / _BIN))


# ---- features ----------------------------------------------------------------------------------------------------

KEYWORDS: dict[str, list[str]] = {
    "weight": ["net wt", "net weight", "netwt", "weight", "peso", "poids", "gewicht", "nettogewicht", "inhalt",
               "net", "n.w", "重量", "净含量", "净重", "wt"],
    "gross": ["gross", "g.w", "brutto"],
    "maxload": ["max load", "load", "capacity", "bearing", "up to", "holds", "support", "tragkraft", "max",
                "belastbar", "承重", "charge"],
    "voltage": ["voltage", "volt", "input", "output", "spannung", "tension", "电压", "ac", "dc", "battery"],
    "wattage": ["power", "watt", "rated", "leistung", "puissance", "功率", "output"],
    "volume": ["volume", "capacity", "contents", "content", "vol", "inhalt", "contenance", "容量", "fl"],
    "width": ["width", "wide", "breite", "largeur", "ancho", "larghezza", "宽"],
    "height": ["height", "high", "tall", "höhe", "hohe", "hauteur", "alto", "altura", "altezza", "高"],
    "depth": ["depth", "deep", "tiefe", "profondeur", "profundidad", "profondità", "thick", "深"],
    "length": ["length", "long", "länge", "longueur", "largo", "lunghezza", "长"],
    "diameter": ["diameter", "dia", "ø", "φ", "直径"],
    "nutrition": ["serving", "calories", "protein", "fat", "carb", "sugar", "sodium", "daily value", "%dv",
                  "fiber", "cholesterol", "per 100"],
}
_LETTERS = {"width": "W", "height": "H", "depth": "D", "length": "L"}
_KW_RE = {k: re.compile("|".join(re.escape(w) for w in ws), re.I) for k, ws in KEYWORDS.items()}
_LETTER_RE = {k: re.compile(rf"(?<![A-Za-z]){c}(?![A-Za-z])") for k, c in _LETTERS.items()}
_SELF_GROUP = {
    "item_weight": "weight", "maximum_weight_recommendation": "maxload", "voltage": "voltage",
    "wattage": "wattage", "item_volume": "volume", "width": "width", "height": "height", "depth": "depth",
}
_DIMS = ("width", "height", "depth")


def _entities() -> list[str]:
    from utils.core.units import ENTITY_UNIT_MAP

    return sorted(ENTITY_UNIT_MAP)


def _all_units() -> list[str]:
    from utils.core.units import ENTITY_UNIT_MAP

    return sorted({u for us in ENTITY_UNIT_MAP.values() for u in us})


def _kw_hits(text: str) -> dict[str, int]:
    hits = {k: int(bool(r.search(text))) for k, r in _KW_RE.items()}
    for k, r in _LETTER_RE.items():
        hits[k] = max(hits[k], int(bool(r.search(text))))
    return hits


def feature_names() -> list[str]:
    """Names of the columns of ``row_features``'s matrix, in order."""
    names = [f"ent_{e}" for e in _entities()] + [f"unit_{u}" for u in _all_units()]
    names += ["log_value", "is_int", "decimals", "unit_share", "value_density", "exact_value", "group_unit_share",
              "group_n", "read_order", "density_rel", "exact_rel", "group_share_rel",
              "height_rel", "height_rank", "height_frac_max", "xc", "yc", "angle_abs", "vertical", "ocr_score",
              "split", "dim_count", "dim_pos", "dim_last", "range_part", "is_range",
              "n_same_answer", "n_same_value", "n_cands", "n_units", "value_rank", "value_rank_rev",
              "is_max_value", "is_min_value", "box_chars", "mention_frac", "order_in_box", "paren",
              "x_edge", "y_edge", "n_boxes", "dim_units_in_box"]
    for where in ("same", "near"):
        names += [f"kw_{where}_{k}" for k in KEYWORDS]
        names += [f"kw_{where}_self", f"kw_{where}_otherdim"]
    names += DECLARED_FEATURES
    names += AMOUNT_FEATURES
    return names


CONVERSION_TOL = 0.04  # printed conversions are rounded ("3.53 oz" for 100 g): the same amount within 4 %

#: Columns of ``declared_features``: a "Net Wt" style declaration right before the mention.
DECLARED_FEATURES = ["net_before", "net_first", "net_rows"]
_NET_RE = re.compile(r"(?<![A-Za-z])(?:net(?![A-Za-z])|n\.\s?w(?![A-Za-z])|netwt|nettogewicht|nettoinhalt|peso\s*neto"
                     r"|poids\s*net|contenu\s*net|contenido\s*neto|净含量|净重)", re.I)
_NET_SPAN = 30  # characters before a mention searched for the declaration


def declared_features(cands: list[Candidate]) -> np.ndarray:
    """Per candidate: a net-quantity declaration ("Net Wt.", "Peso neto", "净含量") within ``_NET_SPAN``
    characters before the mention in its text; whether it is the first mention after that declaration; and how
    many distinct answers of the row are such first mentions (1 = the declaration is unambiguous)."""
    out = np.zeros((len(cands), len(DECLARED_FEATURES)))
    for k, c in enumerate(cands):
        lo = max(0, c.start - _NET_SPAN)
        hits = list(_NET_RE.finditer(c.text[lo: c.start]))
        if not hits:
            continue
        kw_end = lo + hits[-1].end()
        between = any(x.text == c.text and kw_end <= x.start < c.start for x in cands)
        out[k, 0], out[k, 1] = 1.0, float(not between)
    firsts = {c.answer for c, f in zip(cands, out[:, 1]) if f}
    out[:, 2] = len(firsts)
    return out


#: Columns of ``amount_features``: where a candidate's amount stands among the row's distinct amounts, converted so
#: that a printed conversion ("10 cm (3.9 in)") is one amount.
AMOUNT_FEATURES = ["amt_rank", "amt_rank_rev", "amt_is_max", "amt_is_min", "amt_n"]


def _base(c: Candidate) -> float:
    from utils.core.units import to_base

    try:
        return to_base(c.value, c.unit)
    except ValueError:
        return c.value


def amount_features(cands: list[Candidate]) -> np.ndarray:
    """Per candidate (``AMOUNT_FEATURES``): its amount's rank among the row's distinct amounts, largest first, in
    base units with printed conversions merged (within ``CONVERSION_TOL``), scaled to 0-1 from both ends; whether
    it is the largest, the smallest; how many distinct amounts the row reads. ``value_rank`` ranks within one unit
    only, so "30 cm" and "10 in" never meet there. (Which printed length the catalogue calls width, height or depth
    is partly a habit of size: on the dimension rows of dims_real_dev the label is the largest printed length for
    79% of depth rows, 69% of height rows, and spread over all places for width.)"""
    n = len(cands)
    out = np.zeros((n, len(AMOUNT_FEATURES)))
    if n == 0:
        return out
    logs = np.log10(np.array([max(_base(c), 1e-12) for c in cands]))
    tol = math.log10(1 + CONVERSION_TOL)
    distinct: list[float] = []  # log10 amounts, largest first, conversions merged
    for v in sorted(set(np.round(logs, 6).tolist()), reverse=True):
        if not distinct or distinct[-1] - v > tol:
            distinct.append(v)
    m = len(distinct)
    for k, v in enumerate(logs):
        rank = next(i for i, d in enumerate(distinct) if abs(d - v) <= tol + 1e-9)
        out[k] = [rank / max(m - 1, 1), (m - 1 - rank) / max(m - 1, 1), float(rank == 0), float(rank == m - 1), m]
    return out


def row_features(cands: list[Candidate], ocr: OcrResult, entity: str, priors: Priors, group: str = "") -> np.ndarray:
    """Feature matrix (len(cands) x len(feature_names())) for one row's candidates."""
    ents, units = _entities(), _all_units()
    n = len(cands)
    if n == 0:
        return np.zeros((0, len(feature_names())))
    W, H = max(ocr.width, 1), max(ocr.height, 1)
    heights = np.array([max(ocr.boxes[c.boxes[0]].height for _ in [0]) for c in cands], dtype=float)
    hr = heights / H
    order = (-heights).argsort(kind="stable")
    h_rank = np.empty(n)
    h_rank[order] = np.arange(n)
    answers = Counter(c.answer for c in cands)
    values = Counter(round(c.value, 4) for c in cands)
    unit_set = {c.unit for c in cands}
    # keyword hits per box, and box centres for "near" lookups
    box_kw = [_kw_hits(b.text) for b in ocr.boxes]
    centres = [((b.x0 + b.x1) / 2, (b.y0 + b.y1) / 2, max(b.height, 1.0)) for b in ocr.boxes]
    self_g = _SELF_GROUP[entity]
    pri = np.array([priors.features(entity, c.unit, c.value) + priors.group_features(group, entity, c.unit)
                    for c in cands])
    pmax = pri.max(axis=0)
    rows = []
    for k, c in enumerate(cands):
        b = ocr.boxes[c.boxes[0]]
        same_unit_vals = sorted({x.value for x in cands if x.unit == c.unit})
        rank = same_unit_vals.index(c.value)
        f: list[float] = [float(entity == e) for e in ents] + [float(c.unit == u) for u in units]
        f += [math.log10(max(c.value, 1e-6)), float(c.value == int(c.value)),
              float(len(str(c.value).split(".")[1].rstrip("0")) if "." in str(c.value) else 0)]
        f += list(pri[k])
        f += [(c.boxes[0] + c.start / (len(c.text) + 1)) / max(len(ocr.boxes), 1)]
        f += [pri[k, 1] - pmax[1], pri[k, 2] - pmax[2], pri[k, 3] - pmax[3]]
        xc, yc = (b.x0 + b.x1) / 2 / W, (b.y0 + b.y1) / 2 / H
        ang = abs(b.angle)
        ang = min(ang, 180 - ang)
        f += [hr[k], h_rank[k], heights[k] / max(heights.max(), 1e-6), xc, yc, ang, float(ang > 45), b.score]
        f += [float(c.split), c.dim_count, c.dim_pos, float(c.dim_pos == c.dim_count - 1), c.range_part,
              float(c.is_range)]
        f += [answers[c.answer], values[round(c.value, 4)], n, len(unit_set), rank, len(same_unit_vals) - 1 - rank,
              float(rank == len(same_unit_vals) - 1), float(rank == 0)]
        same_q = sum(1 for x in cands if x.boxes[0] == c.boxes[0] and x.start < c.start)
        f += [len(c.text), (c.end - c.start) / max(len(c.text), 1), same_q,
              float("(" in c.text[max(0, c.start - 2): c.start + 1])]
        f += [min(xc, 1 - xc), min(yc, 1 - yc), len(ocr.boxes),
              sum(1 for x in cands if x.boxes[0] == c.boxes[0] and x.unit == c.unit)]
        # keywords: same text (outside the mention itself), and boxes within ~4 text heights
        same = _kw_hits(c.text[: c.start] + " " + c.text[c.end:])
        cx, cy, ch = centres[c.boxes[0]]
        near = {key: 0 for key in KEYWORDS}
        for j, (bx, by, bh) in enumerate(centres):
            if j in c.boxes:
                continue
            if abs(bx - cx) < 6 * ch + (ocr.boxes[j].x1 - ocr.boxes[j].x0) / 2 and abs(by - cy) < 3 * ch:
                for key, v in box_kw[j].items():
                    near[key] = max(near[key], v)
        for hits in (same, near):
            f += [hits[key] for key in KEYWORDS]
            f += [hits[self_g], float(any(hits[d] for d in _DIMS if d != entity) if entity in _DIMS else 0)]
        rows.append(f)
    return np.hstack([np.asarray(rows, dtype=float), declared_features(cands),
                      amount_features(cands)])


# ---- data assembly -----------------------------------------------------------------------------------------------

OcrLookup = Callable[[str], "OcrResult | None"]


@dataclass
class CandidateTable:
    """All candidates of a set of rows: features, labels and the row each belongs to."""

    X: np.ndarray
    y: np.ndarray  # 1 when the candidate equals the row's label
    row: np.ndarray  # position of the row in the input frame
    answers: list[str]
    n_rows: int
    has_truth: np.ndarray  # per row: label non-empty
    oracle: np.ndarray  # per row: some candidate equals the label
    entities: list[str] = field(default_factory=list)  # per row: entity_name ([] for a table built before)
    groups: list[str] = field(default_factory=list)  # per row: group_id as text ("" when unknown)


def build_table(rows: pd.DataFrame, lookup: OcrLookup, priors: Priors) -> CandidateTable:
    """Candidates and features for every row (``image_link,entity_name`` and, if present, ``entity_value``)."""
    Xs, ys, rid, answers = [], [], [], []
    truths = rows["entity_value"].fillna("").astype(str).tolist() if "entity_value" in rows else [""] * len(rows)
    oracle = np.zeros(len(rows), dtype=bool)
    groups = rows["group_id"].astype(str).tolist() if "group_id" in rows else [""] * len(rows)
    for i, (link, ent) in enumerate(zip(rows["image_link"], rows["entity_name"])):
        ocr = lookup(link)
        cands = extract_candidates(ocr, ent)
        if not cands:
            continue
        Xs.append(row_features(cands, ocr, ent, priors, groups[i]))
        lab = [int(same_answer(c.answer, truths[i])) for c in cands]
        oracle[i] = any(lab)
        ys += lab
        rid += [i] * len(cands)
        answers += [c.answer for c in cands]
    X = np.vstack(Xs) if Xs else np.zeros((0, len(feature_names())))
    has = np.array([bool(t) for t in truths], dtype=bool)
    return CandidateTable(X, np.asarray(ys, dtype=int), np.asarray(rid, dtype=int), answers, len(rows), has, oracle,
                          [str(e) for e in rows["entity_name"]], groups)


def build_table_oof_priors(rows: pd.DataFrame, lookup: OcrLookup, extra: pd.DataFrame | None, folds: np.ndarray
                           ) -> CandidateTable:
    """Like ``build_table`` for training rows whose labels feed the priors: each fold's features use priors
    learned without that fold's labels (so a row never sees its own label in "exact value" or group priors)."""
    cols = ["group_id", "entity_name", "entity_value"]
    parts: list[CandidateTable] = []
    order: list[np.ndarray] = []
    for f in np.unique(folds):
        idx = np.where(folds == f)[0]
        lab = [rows.iloc[np.where(folds != f)[0]][[c for c in cols if c in rows]]]
        if extra is not None:
            lab.append(extra)
        pr = Priors.from_labels(pd.concat(lab, ignore_index=True))
        parts.append(build_table(rows.iloc[idx], lookup, pr))
        order.append(idx)
    t = parts[0]
    for p in parts[1:]:
        t = _concat(t, p)
    pos = np.concatenate(order)  # table row r belongs to rows.iloc[pos[r]]
    back = np.argsort(pos)
    return CandidateTable(t.X, t.y, pos[t.row], t.answers, len(rows), t.has_truth[back], t.oracle[back],
                          [t.entities[i] for i in back], [t.groups[i] for i in back])


def _make_model(kind: str, seed: int):
    if kind == "hgb":
        from sklearn.ensemble import HistGradientBoostingClassifier

        return HistGradientBoostingClassifier(max_iter=120, learning_rate=0.06, max_leaf_nodes=15,
                                              min_samples_leaf=8, l2_regularization=1.0, random_state=seed)
    if kind == "logreg":
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        return make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=2000))
    raise ValueError(f"model must be 'hgb' or 'logreg', got {kind!r}")


def _fit_model(X: np.ndarray, y: np.ndarray, kind: str, seed: int, per_family: bool = False):
    """Fit; with a single class present, a constant scorer (so tiny sets still round-trip). ``per_family``: a
    ``FamilyModel`` (one model per entity family where the family has enough rows, the joint one elsewhere)."""
    if len(set(y.tolist())) < 2:
        return _Constant(float(y.mean()) if len(y) else 0.0)
    from threadpoolctl import threadpool_limits

    m = FamilyModel(kind, seed) if per_family else _make_model(kind, seed)
    with threadpool_limits(1):  # small data: one thread is faster than two fighting over a shared machine
        m.fit(X, y)
    return m


#: Entity families that get a model of their own: the label conventions differ (dimensions: the first printed of
#: "10 cm (3.9 in)"; weights: often the second), so one joint model fitted on a mix serves neither well.
FAMILIES: dict[str, tuple[str, ...]] = {"dimension": _DIMS}
MIN_FAMILY_CANDIDATES = 50  # fewer candidates (or one class only): the family is scored by the joint model


class FamilyModel:
    """A joint model plus one model per entity family (``FAMILIES``, and "other" for the rest), each fitted on
    its family's candidates; rows are routed by the entity one-hot columns of the features."""

    def __init__(self, kind: str, seed: int) -> None:
        self.kind, self.seed = kind, seed
        self.joint: Any = None
        self.members: dict[str, Any] = {}

    @staticmethod
    def family_of(X: np.ndarray) -> np.ndarray:
        """Family name per feature row ("other" when the entity is in no family)."""
        names = feature_names()
        fam = np.full(len(X), "other", dtype=object)
        for family, ents in FAMILIES.items():
            cols = [names.index(f"ent_{e}") for e in ents]
            fam[X[:, cols].sum(axis=1) > 0] = family
        return fam

    def fit(self, X: np.ndarray, y: np.ndarray) -> FamilyModel:
        fam = self.family_of(X)
        self.members, self.joint = {}, None
        present = np.unique(fam)
        for f in present if len(present) > 1 else []:
            m = fam == f
            if m.sum() >= MIN_FAMILY_CANDIDATES and len(set(y[m].tolist())) == 2:
                self.members[f] = _make_model(self.kind, self.seed).fit(X[m], y[m])
        if len(self.members) < len(present):  # some family (or all: one family only) is scored jointly
            self.joint = _make_model(self.kind, self.seed).fit(X, y)
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        fam = self.family_of(X)
        p = np.zeros(len(X))
        joint = np.ones(len(X), dtype=bool)
        for f, model in self.members.items():
            m = fam == f
            if m.any():
                p[m] = model.predict_proba(X[m])[:, 1]
                joint &= ~m
        if joint.any():
            if self.joint is None:  # a family never seen in training: the closest fitted member scores it
                p[joint] = next(iter(self.members.values())).predict_proba(X[joint])[:, 1]
            else:
                p[joint] = self.joint.predict_proba(X[joint])[:, 1]
        return np.c_[1 - p, p]


class _Constant:
    """A model that scores every candidate the same (fitted on a set with one class)."""

    def __init__(self, p: float) -> None:
        self.p = p

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return np.tile([1 - self.p, self.p], (len(X), 1))


def best_per_row(table: CandidateTable, scores: np.ndarray) -> tuple[list[str], np.ndarray]:
    """Each row's top-scoring candidate answer ("" when none) and its score (-1 when none)."""
    best_ans = [""] * table.n_rows
    best_sc = np.full(table.n_rows, -1.0)
    for r, s, a in zip(table.row, scores, table.answers):
        if s > best_sc[r]:
            best_sc[r], best_ans[r] = s, a
    return best_ans, best_sc


def prior_answers(table: CandidateTable, best_sc: np.ndarray, answers: list[str], priors: Priors,
                  threshold: float) -> list[str]:
    """``answers`` where each row without a candidate (best score -1: nothing read, no image) answers the prior's
    commonest label for its group and entity (``Priors.prior_answer``) when that label's share passes
    ``threshold`` (0: always)."""
    out = list(answers)
    for r in np.where(best_sc < 0)[0]:
        if out[r]:
            continue
        answer, share = priors.prior_answer(table.groups[r] if table.groups else "", table.entities[r])
        if answer and share >= threshold:
            out[r] = answer
    return out


def apply_net_rule(table: CandidateTable, answers: list[str]) -> list[str]:
    """Per answered row: when exactly one distinct answer directly follows a net-quantity declaration ("NET WT.
    3 kg") and the ranker picked a different amount, answer the declared one. A pick that is the declared amount in
    another unit ("100 g" for "Net Wt 3.53 oz") is kept: which unit labels take is the ranker's call."""
    names = feature_names()
    first, rows_n = table.X[:, names.index("net_first")], table.X[:, names.index("net_rows")]
    out = list(answers)
    for r in np.unique(table.row[(first == 1) & (rows_n == 1)]) if len(table.row) else []:
        a = out[r]
        if not a:
            continue
        net = table.answers[int(np.where((table.row == r) & (first == 1))[0][0])]
        if net != a and _same_amount(a, net) is False:
            out[r] = net
    return out


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


def _row_correct(rows: pd.DataFrame, answers: list[str]) -> np.ndarray:
    truths = rows["entity_value"].fillna("").astype(str).tolist()
    return np.array([same_answer(a, t) for a, t in zip(answers, truths)], dtype=bool)


def group_folds(groups: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold number per row: whole groups to one fold, balanced by row count, shuffled by seed."""
    rng = np.random.default_rng(seed)
    uniq, counts = np.unique(groups, return_counts=True)
    perm = rng.permutation(len(uniq))
    load = np.zeros(k)
    fold_of: dict[Any, int] = {}
    for i in sorted(perm, key=lambda i: -counts[i]):
        f = int(load.argmin())
        fold_of[uniq[i]] = f
        load[f] += counts[i]
    return np.array([fold_of[g] for g in groups])


def oof_scores(table: CandidateTable, folds: np.ndarray, kind: str, seed: int, per_family: bool = False
               ) -> np.ndarray:
    """Out-of-fold candidate scores (each candidate scored by a model not trained on its row's fold)."""
    scores = np.zeros(len(table.y))
    cand_fold = folds[table.row] if len(table.row) else np.zeros(0, dtype=int)
    for f in np.unique(folds):
        te = cand_fold == f
        if not te.any():
            continue
        m = _fit_model(table.X[~te], table.y[~te], kind, seed, per_family)
        scores[te] = m.predict_proba(table.X[te])[:, 1]
    return scores


def _same_amount(a: str, b: str) -> bool | None:
    """Whether answers ``a`` and ``b`` are the same amount within ``CONVERSION_TOL`` (any units); None when one of
    them does not parse or names a unit without a conversion."""
    from utils.core.units import parse_value, same_amount

    pa, pb = parse_value(a), parse_value(b)
    if pa is None or pb is None:
        return None
    try:
        return same_amount(pa, pb, CONVERSION_TOL)
    except ValueError:
        return None


def _conversion(a: str, b: str) -> bool:
    """Whether answers ``a`` and ``b`` are the same amount in two units (a printed conversion)."""
    from utils.core.units import parse_value

    pa, pb = parse_value(a), parse_value(b)
    return pa is not None and pb is not None and pa[1] != pb[1] and bool(_same_amount(a, b))


def _box_index(table: CandidateTable, k: int) -> int:
    """The OCR box (line) candidate ``k`` was read from (its first box), from the ``read_order`` feature."""
    names = feature_names()
    return int(math.floor(table.X[k, names.index("read_order")] * table.X[k, names.index("n_boxes")] + 1e-6))


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
        from utils.core.units import METRIC_UNITS, parse_value

        names = feature_names()
        d = [table.X[i, names.index(c)] - table.X[j, names.index(c)] for c in PairModel.COLUMNS]
        order = names.index("read_order")
        d.append(float(np.sign(table.X[j, order] - table.X[i, order])))  # +1: i printed first
        ui, uj = parse_value(table.answers[i]), parse_value(table.answers[j])
        d.append(float(bool(ui and ui[1] in METRIC_UNITS)) - float(bool(uj and uj[1] in METRIC_UNITS)))
        # printed in one text line ("10 cm (3.9 in)"), the label leans to the first; in two lines, to the second
        # (dims_real_dev: first 71% of 58 one-line pairs, 35% of 31 two-line pairs)
        d.append(float(_box_index(table, i) == _box_index(table, j)) * d[len(PairModel.COLUMNS)])
        dims = float(any(table.X[i, names.index(f"ent_{e}")] for e in _DIMS))
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
        from sklearn.linear_model import LogisticRegression

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


@dataclass
class Ranker:
    """A fitted ranker: the model, its abstain threshold, the priors used for features and the pair model."""

    model: Any
    threshold: float
    priors: Priors
    config: dict[str, Any]
    metrics: dict[str, float]
    pairs: PairModel | None = None

    def predict_table(self, table: CandidateTable) -> list[str]:
        """Answers for the rows of a table ("" = abstain)."""
        scores = self.model.predict_proba(table.X)[:, 1] if len(table.X) else np.zeros(0)
        ans, sc = best_per_row(table, scores)
        out = [a if s >= self.threshold and s >= 0 else "" for a, s in zip(ans, sc)]
        if self.config.get("net_rule", False):
            out = apply_net_rule(table, out)
        pairs = getattr(self, "pairs", None)  # a ranker saved before pair models has none
        out = pairs.resolve(table, scores, out) if pairs is not None else out
        if self.config.get("prior_answer", False) and table.entities:
            out = prior_answers(table, sc, out, self.priors, self.threshold)
        return out

    def predict_rows(self, rows: pd.DataFrame, lookup: OcrLookup) -> list[str]:
        return self.predict_table(build_table(rows, lookup, self.priors))


def fit_ranker(rows: pd.DataFrame, lookup: OcrLookup, cfg: RankerConfig, priors: Priors,
               table: CandidateTable | None = None) -> Ranker:
    """Fit on labelled rows: tune the threshold on out-of-fold scores by group_id, then fit on all rows."""
    table = table or build_table(rows, lookup, priors)
    k = max(2, min(cfg.folds, rows["group_id"].nunique())) if len(rows) else 2
    metrics: dict[str, float] = {"rows": float(len(rows)), "candidates": float(len(table.y)),
                                 "oracle": float(table.oracle.mean()) if len(rows) else 0.0}
    empty_share = expected_empty_share(rows, cfg)
    metrics["empty_share"] = empty_share
    if cfg.threshold is None and empty_share > 0 and rows["group_id"].nunique() >= 2:
        folds = group_folds(rows["group_id"].to_numpy(), k, cfg.seed)
        sc = oof_scores(table, folds, cfg.model, cfg.seed, cfg.per_family)
        ans, best = best_per_row(table, sc)
        correct = _row_correct(rows, ans)
        thr, f1 = abstain_threshold(best, correct, table.has_truth, empty_share)
        metrics.update(oof_f1=f1, oof_f1_no_abstain=f1_counts(correct, best >= 0, table.has_truth))
    else:  # nothing to tune: a fixed threshold, or never abstain
        thr = float(cfg.threshold if cfg.threshold is not None else 0.0)
    model = _fit_model(table.X, table.y, cfg.model, cfg.seed, cfg.per_family)
    metrics["threshold"] = thr
    pairs = PairModel().fit(table) if cfg.pair_model else None
    if pairs is not None:
        metrics["pairs"] = float(pairs.n_pairs)
    return Ranker(model, thr, priors, asdict(cfg), metrics, pairs)


def expected_empty_share(rows: pd.DataFrame, cfg: RankerConfig) -> float:
    """``cfg.empty_share``, or (None) the share of ``rows`` whose label is empty."""
    if cfg.empty_share is not None:
        if not 0.0 <= cfg.empty_share < 1.0:
            raise ValueError(f"empty_share must be in [0, 1), not {cfg.empty_share!r}")
        return float(cfg.empty_share)
    if not len(rows):
        return 0.0
    return float((rows["entity_value"].fillna("").astype(str) == "").mean())


def cross_validate(rows: pd.DataFrame, lookup: OcrLookup, cfg: RankerConfig, priors: Priors,
                   train_only: pd.DataFrame | None = None) -> list[str]:
    """Out-of-fold answers for ``rows`` (folds by group_id; the threshold tuned inside each training part).

    ``train_only`` rows are added to every training part but never predicted (e.g. another labelled set)."""
    rows = rows.reset_index(drop=True)
    folds = group_folds(rows["group_id"].to_numpy(), cfg.folds, cfg.seed)
    table = build_table(rows, lookup, priors)
    extra = build_table(train_only.reset_index(drop=True), lookup, priors) if train_only is not None else None
    out = [""] * len(rows)
    for f in range(cfg.folds):
        te_rows = np.where(folds == f)[0]
        if len(te_rows) == 0:
            continue
        tr_rows = np.where(folds != f)[0]
        tr = _subset(table, tr_rows)
        tr_df = rows.iloc[tr_rows]
        if extra is not None:
            tr = _concat(tr, extra)
            tr_df = pd.concat([tr_df, train_only], ignore_index=True)
        rk = fit_ranker(tr_df.reset_index(drop=True), lookup, cfg, priors, table=tr)
        ans = rk.predict_table(_subset(table, te_rows))
        for i, a in zip(te_rows, ans):
            out[i] = a
    return out


def _subset(t: CandidateTable, row_idx: np.ndarray) -> CandidateTable:
    pos = {int(r): i for i, r in enumerate(row_idx)}
    keep = np.array([int(r) in pos for r in t.row], dtype=bool)
    return CandidateTable(t.X[keep], t.y[keep], np.array([pos[int(r)] for r in t.row[keep]], dtype=int),
                          [a for a, k in zip(t.answers, keep) if k], len(row_idx), t.has_truth[row_idx],
                          t.oracle[row_idx], [t.entities[int(i)] for i in row_idx] if t.entities else [],
                          [t.groups[int(i)] for i in row_idx] if t.groups else [])


def _concat(a: CandidateTable, b: CandidateTable) -> CandidateTable:
    return CandidateTable(np.vstack([a.X, b.X]), np.concatenate([a.y, b.y]),
                          np.concatenate([a.row, b.row + a.n_rows]).astype(int), a.answers + b.answers,
                          a.n_rows + b.n_rows, np.concatenate([a.has_truth, b.has_truth]),
                          np.concatenate([a.oracle, b.oracle]), a.entities + b.entities, a.groups + b.groups)


# ---- OCR lookups -------------------------------------------------------------------------------------------------

FALLBACK_ROTATIONS = (90,)  # 270 too: nothing more (the 180-degree classifier turns such lines)


def reads_a_quantity(ocr: OcrResult) -> bool:
    """Whether the boxes hold any candidate for any entity (a number with a unit some entity allows)."""
    from utils.core.units import ENTITY_UNIT_MAP

    one_per_unit_set = {units: ent for ent, units in sorted(ENTITY_UNIT_MAP.items())}.values()
    return any(extract_candidates(ocr, ent) for ent in one_per_unit_set)


def ocr_lookup(links: list[str], image_dir: Path, cfg: RankerConfig, progress: Progress | None = None
               ) -> dict[str, OcrResult | None]:
    """OCR (through the cache) every distinct image of ``links``; a dict link -> result (None = no image).

    With ``cfg.rotate_fallback``, an image whose upright boxes read no quantity at all (``reads_a_quantity``) is
    OCR'd again turned by each of ``FALLBACK_ROTATIONS``, and its result holds the boxes of all passes (in upright
    coordinates). The decision rests on the image alone, so a row's answer never depends on which rows share its
    batch or shard. On dev, 71 of 494 images were OCR'd again, and the share of rows whose answer is among the
    candidates rose from 82.4% to 83.4%. ``progress(done, total)`` follows the upright pass's cache misses (see
    ``utils.models.ocr.engine.ocr_many``; ``utils.models.ocr.engine.tqdm_progress()`` draws a bar on stderr).
    """
    uniq = list(dict.fromkeys(links))
    paths = {u: cached_image(image_dir, u) for u in uniq}  # None: a link naming no usable file
    usable = [p for p in paths.values() if p is not None]
    settings = cfg.ocr_settings()
    res = dict(ocr_many(usable, cfg.cache_path(), settings, cfg.workers, cfg.threads, progress))
    out = {u: (None if p is None else res[p]) for u, p in paths.items()}
    again = [u for u, r in out.items() if r is not None and not reads_a_quantity(r)] if cfg.rotate_fallback else []
    if not again:
        return out
    turned = [dict(ocr_many([paths[u] for u in again], cfg.cache_path(), replace(settings, rotate=r), cfg.workers,
                            cfg.threads)) for r in FALLBACK_ROTATIONS]
    for u in again:
        first, more = out[u], [t[paths[u]] for t in turned]
        boxes = first.boxes + [b for m in more if m is not None for b in m.boxes]
        out[u] = OcrResult(first.width, first.height, boxes, first.seconds + sum(m.seconds for m in more if m))
    return out


# ---- the backend -------------------------------------------------------------------------------------------------

def _check_rows(df: pd.DataFrame, need: list[str], what: str) -> None:
    miss = [c for c in need if c not in df.columns]
    if miss:
        raise ValueError(f"{what} lacks columns {miss}; has {list(df.columns)}")


class OcrBackend:
    """The CPU backend: rapidocr + learned candidate ranking (see ``utils.models.backend``)."""

    name = "ocr"

    def fit(self, train: pd.DataFrame, val: pd.DataFrame, image_dir: Path, out_dir: Path,
            progress: Progress | None = None, **settings: Any) -> Path:
        """Fit the ranker on ``train`` (abstain policy per ``empty_share``), report ``val``, refit on both, save.

        The OCR of the training images shows ``progress(done, total)`` (default: a tqdm bar on stderr); the saved
        metrics hold ``fit_images``, ``fit_ocr_seconds``, ``fit_images_per_s`` and ``fit_seconds`` (the total)."""
        import joblib

        cfg = RankerConfig.from_settings(**settings)
        need = ["image_link", "group_id", "entity_name", "entity_value"]
        _check_rows(train, need, "train")
        val = val if val is not None else train.iloc[:0]
        if len(val):
            _check_rows(val, need, "val")
        t0 = time.perf_counter()
        train = train.assign(entity_value=train["entity_value"].fillna("").astype(str)).reset_index(drop=True)
        val = val.assign(entity_value=val["entity_value"].fillna("").astype(str)).reset_index(drop=True)
        cols = ["group_id", "entity_name", "entity_value"]
        extra = None
        if cfg.prior_csv:  # the extra label table, minus the images we fit on
            extra = pd.read_csv(cfg.prior_csv, dtype=str).fillna("")
            _check_rows(extra, ["entity_name", "entity_value"], f"prior_csv {cfg.prior_csv}")
            extra = extra[~extra["image_link"].isin(set(train["image_link"]) | set(val["image_link"]))] \
                if "image_link" in extra else extra
            extra = extra[[c for c in cols if c in extra]]
        extra_l = [extra] if extra is not None else []
        priors = Priors.from_labels(pd.concat([train[cols]] + extra_l, ignore_index=True))  # val labels unseen
        t_ocr = time.perf_counter()
        ocr = ocr_lookup(list(train["image_link"]) + list(val["image_link"]), Path(image_dir), cfg,
                         progress=progress if progress is not None else tqdm_progress("fit OCR"))
        ocr_seconds = time.perf_counter() - t_ocr
        lookup = ocr.get
        k = max(2, min(cfg.folds, train["group_id"].nunique()))
        folds = group_folds(train["group_id"].to_numpy(), k, cfg.seed)
        ranker = fit_ranker(train, lookup, cfg, priors, table=build_table_oof_priors(train, lookup, extra, folds))
        metrics = {f"train/{k}": v for k, v in ranker.metrics.items()}
        if len(val):
            ans = ranker.predict_rows(val, lookup)
            correct = _row_correct(val, ans)
            pred = np.array([bool(a) for a in ans])
            has = val["entity_value"].astype(bool).to_numpy()
            metrics["val/f1"] = f1_counts(correct, pred, has)
            metrics["val/rows"] = float(len(val))
            both = pd.concat([train, val], ignore_index=True)
            priors = Priors.from_labels(pd.concat([both[cols]] + extra_l, ignore_index=True))
            folds = group_folds(both["group_id"].to_numpy(), k, cfg.seed)
            final = fit_ranker(both, lookup, RankerConfig(**{**asdict(cfg), "threshold": ranker.threshold}), priors,
                               table=build_table_oof_priors(both, lookup, extra, folds))
            final.metrics = {**ranker.metrics}
            ranker = final
        metrics["fit_seconds"] = time.perf_counter() - t0
        # each training image is read once (the lookup above); images/s over the OCR step, cache hits included
        metrics.update(fit_images=float(len(ocr)), fit_ocr_seconds=ocr_seconds,
                       fit_images_per_s=len(ocr) / max(ocr_seconds, 1e-9))
        ranker.metrics = {k: float(v) for k, v in metrics.items()}
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        joblib.dump(ranker, out_dir / ARTIFACT_MODEL)
        (out_dir / ARTIFACT_JSON).write_text(json.dumps(
            {"backend": self.name, "settings": asdict(cfg), "threshold": ranker.threshold, "metrics": ranker.metrics,
             "features": feature_names()}, indent=2))
        _log_run(cfg, ranker.metrics, out_dir)
        return out_dir

    def predict(self, rows: pd.DataFrame, image_dir: Path, artifact_dir: Path, **settings: Any
                ) -> Iterator[list[tuple[int, str]]]:
        """Yield ``(index, raw answer)`` per batch; ``""`` for a missing image or when the ranker abstains."""
        ranker = load_ranker(artifact_dir)
        cfg = RankerConfig.from_settings(**{**_saved_runtime(ranker), **settings})
        _check_rows(rows, ["index", "image_link", "entity_name"], "rows")
        for s in range(0, len(rows), max(1, cfg.batch_size)):
            batch = rows.iloc[s: s + cfg.batch_size]
            ocr = ocr_lookup(list(batch["image_link"]), Path(image_dir), cfg)
            ans = ranker.predict_rows(batch, ocr.get)
            yield [(int(i), a) for i, a in zip(batch["index"], ans)]


def _saved_runtime(ranker: Ranker) -> dict[str, Any]:
    """The OCR settings the ranker was fitted with (so predict OCRs the same way unless overridden)."""
    keys = ("max_side", "det_side", "rotate_fallback", "cache_dir", "engine", "precision", "rec_batch", "use_cls")
    saved = {k: ranker.config[k] for k in keys if k in ranker.config}
    saved.setdefault("engine", "onnxruntime")  # a ranker saved before engines were a setting OCR'd with it
    return saved


def load_ranker(artifact_dir: Path) -> Ranker:
    """Load a fitted ranker from an artifact folder written by ``OcrBackend.fit``."""
    import joblib

    f = Path(artifact_dir) / ARTIFACT_MODEL
    if not f.is_file():
        raise FileNotFoundError(f"no fitted OCR ranker at {f}; run the fit stage (02) with --backend ocr first")
    return joblib.load(f)


def _log_run(cfg: RankerConfig, metrics: dict[str, float], out_dir: Path) -> None:
    """Log config and metrics with utils.env.tracking (mode from the environment; never hangs or fails the fit)."""
    if os.environ.get("WANDB_MODE", "").lower() == "disabled":
        return
    try:
        from utils.env.tracking import init_run

        run = init_run(cfg.wandb_project, asdict(cfg), "fit-ocr", dir=str(out_dir))
    except Exception as e:  # tracking must never break a fit
        print(f"wandb logging skipped: {e}")
        return
    if run is None:
        return
    try:
        run.log(metrics)
        for k, v in metrics.items():
            run.summary[k] = v
    finally:
        run.finish()
