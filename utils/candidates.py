"""Candidate answers from OCR boxes: every number+unit mention that fits the entity, with where it was found.

Units are recognised only by ``utils.units.parse_quantities`` (no unit tables here). This module adds what a
single-string parser cannot see: mentions split across neighbouring boxes ("16" | "oz"), and the leading numbers of
dimension strings ("10 x 20 x 30 cm" gives 10, 20 and 30 cm). Each candidate keeps its box geometry and nearby
text so that ``utils.ranker`` can compute features.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from utils.ocr import OcrBox, OcrResult

# A number as printed on packaging ("1,5" is 1.5; "1,000" is a thousands separator handled by utils.units).
_NUM = r"(\d+(?:[.,]\d+)?)"
# "10 x 20 x" directly before a quantity: the numbers of a dimension string sharing the quantity's unit.
_DIM_TAIL = re.compile(_NUM + r"\s*(?:[xX×*]|by)\s*$")
_ENDS_WITH_NUMBER = re.compile(r"\d\s*$")
# Common OCR confusions in units, fixed without changing the text length (spans stay valid):
# "31 0Z" -> "31 OZ", "2.2Ibs" / "2.2 1bs" -> "2.2lbs".
_OCR_FIXES = (
    (re.compile(r"(?<=\d)(\s?)0([Zz])(?![A-Za-z])"), lambda m: m.group(1) + "O" + m.group(2)),
    (re.compile(r"(?<=\d)(\s?)[I1|](bs|BS)(?![A-Za-z])"), lambda m: m.group(1) + "l" + m.group(2)),
)


def fix_ocr_text(text: str) -> str:
    """Undo common OCR letter/digit confusions next to numbers; the result has the same length."""
    for rx, rep in _OCR_FIXES:
        text = rx.sub(rep, text)
    return text


@dataclass
class Candidate:
    """One possible answer for one row, with provenance for feature extraction."""

    value: float
    unit: str
    text: str  # the text the mention was read from (a box, or two joined boxes)
    boxes: list[int]  # indices into OcrResult.boxes
    start: int = 0  # span of the mention in ``text``
    end: int = 0
    is_range: bool = False
    range_part: int = 0  # 0 = not a range, 1 = low end, 2 = high end
    split: bool = False  # number and unit came from two boxes
    dim_count: int = 1  # how many numbers share the unit in a "a x b x c" string
    dim_pos: int = 0  # this number's place in that string (0-based)
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def answer(self) -> str:
        """The submission spelling, ``"<float> <unit>"``."""
        return _format_value(self.value, self.unit)


def _units():
    import utils.units as units

    return units


def _format_value(value: float, unit: str) -> str:
    try:
        return _units().format_value(value, unit)
    except (ImportError, AttributeError):  # pragma: no cover - utils.units always has it per DESIGN.md
        return f"{float(value)} {unit}"


def allowed_units(entity: str) -> frozenset[str]:
    """The units allowed for an entity (from utils.units); ValueError for an unknown entity."""
    m = _units().ENTITY_UNIT_MAP
    if entity not in m:
        raise ValueError(f"unknown entity {entity!r}; expected one of {sorted(m)}")
    return m[entity]


def _to_float(s: str) -> float | None:
    try:
        return float(s.replace(",", "."))
    except ValueError:
        return None


def _from_text(text: str, boxes: list[int], allowed: frozenset[str], split_at: int | None = None) -> list[Candidate]:
    """Candidates in one string; with ``split_at`` only mentions crossing that offset (a joined pair of boxes)."""
    out: list[Candidate] = []
    for q in _units().parse_quantities(fix_ocr_text(text)):
        if q.unit not in allowed:
            continue
        if split_at is not None and not (q.start < split_at < q.end):
            continue
        split = split_at is not None
        if getattr(q, "is_range", False) and getattr(q, "low", None) is not None:
            for part, v in ((1, q.low), (2, q.high)):
                out.append(Candidate(float(v), q.unit, text, boxes, q.start, q.end, True, part, split))
            continue
        if hasattr(q, "dim_count"):  # utils.units reads "10 x 20 x 30 cm" as three quantities
            out.append(Candidate(float(q.value), q.unit, text, boxes, q.start, q.end, False, 0, split,
                                 int(q.dim_count), int(q.dim_pos)))
            continue
        # adapter for a units module without dimension strings: leading numbers of "10 x 20 x 30 cm"
        lead: list[float] = []
        head = text[: q.start]
        while True:
            m = _DIM_TAIL.search(head)
            if not m:
                break
            v = _to_float(m.group(1))
            if v is None:
                break
            lead.insert(0, v)
            head = head[: m.start()]
        n = len(lead) + 1
        for i, v in enumerate(lead):
            out.append(Candidate(v, q.unit, text, boxes, q.start, q.end, False, 0, split, n, i))
        out.append(Candidate(float(q.value), q.unit, text, boxes, q.start, q.end, False, 0, split, n, n - 1))
    return out


def _neighbours(a: OcrBox, b: OcrBox) -> bool:
    """b continues a: right of it on the same line, or just below it, within about one text height."""
    h = max(min(a.height, b.height), 1.0)
    v_overlap = min(a.y1, b.y1) - max(a.y0, b.y0)
    if v_overlap > 0.5 * min(a.y1 - a.y0, b.y1 - b.y0) and -0.5 * h <= b.x0 - a.x1 <= 2.0 * h:
        return True
    h_overlap = min(a.x1, b.x1) - max(a.x0, b.x0)
    return h_overlap > 0 and -0.3 * h <= b.y0 - a.y1 <= 1.0 * h


def extract_candidates(ocr: OcrResult | None, entity: str) -> list[Candidate]:
    """Every mention in the OCR boxes whose unit fits ``entity``, including split and dimension-string ones."""
    allowed = allowed_units(entity)
    if ocr is None:
        return []
    out: list[Candidate] = []
    for i, b in enumerate(ocr.boxes):
        out.extend(_from_text(b.text, [i], allowed))
    for i, a in enumerate(ocr.boxes):
        if not _ENDS_WITH_NUMBER.search(a.text):
            continue
        for j, b in enumerate(ocr.boxes):
            if i == j or not b.text or b.text[0].isdigit() or not _neighbours(a, b):
                continue
            joined = a.text.rstrip() + " " + b.text.lstrip()
            out.extend(_from_text(joined, [i, j], allowed, split_at=len(a.text.rstrip()) + 1))
    return out


def same_answer(answer: str, truth: str) -> bool:
    """Whether a candidate answer equals a label (same unit, values equal as floats); ranges never match."""
    if not answer or not truth:
        return False
    try:
        from utils.metrics import values_equal

        return bool(values_equal(answer, truth))
    except ImportError:  # pragma: no cover - metrics is part of the suite
        pass
    pa, pt = _units().parse_value(answer), _units().parse_value(truth)
    return pa is not None and pt is not None and pa[1] == pt[1] and abs(pa[0] - pt[0]) < 1e-9 * max(1, abs(pt[0]))
