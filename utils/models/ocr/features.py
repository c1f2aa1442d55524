"""Features of each OCR candidate, as named columns, and the candidate table a ranker learns from.

Per row (image + entity) every candidate from ``utils.models.ocr.candidates`` gets one row of features: entity and
unit, value plausibility from the training labels (``utils.models.ocr.priors``), text height and place, orientation,
neighbouring keywords (same text and boxes nearby), repetition, rank by size within its unit and by amount across
units (``amount_features``), its place in a dimension string, a "Net Wt" declaration before it
(``declared_features``). ``feature_names()`` names the columns; models are fitted on the named table and check the
names when they score.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from utils.core.units import ENTITY_UNIT_MAP, to_base
from utils.models.ocr.candidates import Candidate, extract_candidates, same_answer
from utils.models.ocr.engine import OcrResult
from utils.models.ocr.priors import Priors

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
DIMS = ("width", "height", "depth")


def _entities() -> list[str]:
    return sorted(ENTITY_UNIT_MAP)


def _all_units() -> list[str]:
    return sorted({u for us in ENTITY_UNIT_MAP.values() for u in us})


def _kw_hits(text: str) -> dict[str, int]:
    hits = {k: int(bool(r.search(text))) for k, r in _KW_RE.items()}
    for k, r in _LETTER_RE.items():
        hits[k] = max(hits[k], int(bool(r.search(text))))
    return hits


def feature_names() -> list[str]:
    """The columns of ``row_features``'s table, in order (a fitted model checks them by name at predict)."""
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


def row_features(cands: list[Candidate], ocr: OcrResult, entity: str, priors: Priors, group: str = ""
                 ) -> pd.DataFrame:
    """One row of features per candidate, one named column per feature (``feature_names()``)."""
    ents, units = _entities(), _all_units()
    n = len(cands)
    if n == 0:
        return _no_features()
    W, H = max(ocr.width, 1), max(ocr.height, 1)
    heights = np.array([ocr.boxes[c.boxes[0]].height for c in cands], dtype=float)
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
            f += [hits[self_g], float(any(hits[d] for d in DIMS if d != entity) if entity in DIMS else 0)]
        rows.append(f)
    values = np.hstack([np.asarray(rows, dtype=float), declared_features(cands), amount_features(cands)])
    return pd.DataFrame(values, columns=feature_names())


def _no_features() -> pd.DataFrame:
    return pd.DataFrame(np.zeros((0, len(feature_names()))), columns=feature_names())


# ---- the candidate table ------------------------------------------------------------------------------------------

OcrLookup = Callable[[str], "OcrResult | None"]


@dataclass
class CandidateTable:
    """All candidates of a set of rows: features, labels and the row each belongs to."""

    X: pd.DataFrame  # one row per candidate (index 0..n-1), columns ``feature_names()``
    y: np.ndarray  # 1 when the candidate equals the row's label
    row: np.ndarray  # position of the row in the input frame
    answers: list[str]
    n_rows: int
    has_truth: np.ndarray  # per row: label non-empty
    oracle: np.ndarray  # per row: some candidate equals the label
    entities: list[str] = field(default_factory=list)  # per row: entity_name
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
    X = pd.concat(Xs, ignore_index=True) if Xs else _no_features()
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
        t = concat_tables(t, p)
    pos = np.concatenate(order)  # table row r belongs to rows.iloc[pos[r]]
    back = np.argsort(pos)
    return CandidateTable(t.X, t.y, pos[t.row], t.answers, len(rows), t.has_truth[back], t.oracle[back],
                          [t.entities[i] for i in back], [t.groups[i] for i in back])


def subset_rows(t: CandidateTable, row_idx: np.ndarray) -> CandidateTable:
    """The candidates of the rows ``row_idx`` (positions in ``t``), renumbered in that order."""
    pos = {int(r): i for i, r in enumerate(row_idx)}
    keep = np.array([int(r) in pos for r in t.row], dtype=bool)
    return CandidateTable(t.X[keep].reset_index(drop=True), t.y[keep],
                          np.array([pos[int(r)] for r in t.row[keep]], dtype=int),
                          [a for a, k in zip(t.answers, keep) if k], len(row_idx), t.has_truth[row_idx],
                          t.oracle[row_idx], [t.entities[int(i)] for i in row_idx] if t.entities else [],
                          [t.groups[int(i)] for i in row_idx] if t.groups else [])


def concat_tables(a: CandidateTable, b: CandidateTable) -> CandidateTable:
    """``a``'s rows, then ``b``'s."""
    return CandidateTable(pd.concat([a.X, b.X], ignore_index=True), np.concatenate([a.y, b.y]),
                          np.concatenate([a.row, b.row + a.n_rows]).astype(int), a.answers + b.answers,
                          a.n_rows + b.n_rows, np.concatenate([a.has_truth, b.has_truth]),
                          np.concatenate([a.oracle, b.oracle]), a.entities + b.entities, a.groups + b.groups)
