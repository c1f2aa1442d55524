"""Candidate answers from OCR boxes: every number+unit mention that fits the entity, with where it was found.

Units are recognised only by ``utils.core.units.parse_quantities`` (no unit tables here). This module adds what a
single-string parser cannot see: mentions split across neighbouring boxes ("16" | "oz"), and the leading numbers of
dimension strings ("10 x 20 x 30 cm" gives 10, 20 and 30 cm). Each candidate keeps its box geometry and nearby
text so that ``utils.models.ocr.ranker`` can compute features.

OCR misreads are handled in two tiers: letter/digit confusions that are safe to undo in place (``fix_ocr_text``:
"0Z", "Ibs", "mI", "8OKG") feed the normal parse; riskier readings (a number glued to a word, "Weight200gm",
"48V250W", "25gX4"; "3G" for 3 g; "g" read as "9" after a weight declaration, "Weight | 5909"; "OZ" read as "02")
come from a second pass and are marked ``extra["loose"] = 1.0``. On the 500 dev rows this raised the share of rows
whose answer is among the candidates from 76.4% to 82.0% (OCR at 1280 px).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import utils.core.units as units
from utils.core.metrics import values_equal
from utils.models.ocr.engine import OcrBox, OcrResult

_ENDS_WITH_NUMBER = re.compile(r"\d\s*$")
# Common OCR confusions in units, fixed without changing the text length (spans stay valid):
# "31 0Z" -> "31 OZ", "2.2Ibs" / "2.2 1bs" -> "2.2lbs", "200 mI" -> "200 ml", "(6.6 b)" -> "(6.6lb)",
# "8OKG" / "22OGSM" -> "80KG" / "220GSM" (a letter O between a digit and a digit or a unit other than "oz").
_O_AS_ZERO = re.compile(r"(?<=\d)[Oo](?=[Oo]*(?:\d|(?i:kgs?|gsm|gms?|g|mg|ml|mm|cm|w|v)(?![A-Za-z])))")
_OCR_FIXES = (
    (re.compile(r"(?<=\d)(\s?)0([Zz])(?![A-Za-z])"), lambda m: m.group(1) + "O" + m.group(2)),
    (re.compile(r"(?<=\d)(\s?)[I1|](bs|BS)(?![A-Za-z])"), lambda m: m.group(1) + "l" + m.group(2)),
    (re.compile(r"(?<=\d)(\s?)([mM])[I1|](?![A-Za-z0-9])"), lambda m: m.group(1) + m.group(2) + "l"),
    (re.compile(r"(?<=\d) b(?=\))"), lambda m: "lb"),
)


def fix_ocr_text(text: str) -> str:
    """Undo common OCR letter/digit confusions next to numbers; the result has the same length."""
    for rx, rep in _OCR_FIXES:
        text = rx.sub(rep, text)
    for _ in range(3):  # "1OOg": each O needs a digit before it
        fixed = _O_AS_ZERO.sub("0", text)
        if fixed == text:
            break
        text = fixed
    return text


# What a strict parse skips as glued, spaced apart for a second, flagged pass: a number glued to a word before it
# ("Net Weight200gm", "48V250W", "ProCORE18V") and a multiplier glued after a unit ("25gX4").
_GLUED_BEFORE = re.compile(r"(?<=[A-Za-z])(?=\d)")
_GLUED_AFTER = re.compile(r"(?<=[A-Za-z])(?=[xX×*]\d)")
# a stray letter glued after "g" ("100ge(3.5oz)", "Weight200gh", "160GSMJAQUARD")
_GLUED_AFTER_G = re.compile(r"(?:(?<=\d[gG])|(?<=\d[gG][sS][mM]))(?=[A-Za-z])(?!(?i:ms?|rs?|rams?|sm)(?![A-Za-z]))")
# "OZ" read as "02" after a decimal ("50g - 1.802")
_OZ_AS_02 = re.compile(r"(?<=\d\.\d)(\d?)02(?![\dA-Za-z])")
# "g" read as "9" in a printed conversion: "3.28 OZ (939)" is 93 g
_G_AS_9 = re.compile(r"(?i)(?:oz|lbs?)\s*[(\[]\s*(\d{1,4})9\s*[)\]]")
# ... and after a weight declaration, in the same box or in a box of its own just below / right of it
# ("Weight | 5909" is 590 g in a script font)
_WEIGHT_KW = r"(?:weight|net\s*wt|peso|poids|gewicht)"
_G_AS_9_AFTER_KW = re.compile(r"(?i)" + _WEIGHT_KW + r"\.?\s*[:.]?\s*(\d{1,4})9(?![\d.,A-Za-z])")
_G_AS_9_ALONE = re.compile(r"\s*(\d{1,4})9\s*")
_ENDS_WITH_WEIGHT_KW = re.compile(r"(?i)" + _WEIGHT_KW + r"\.?\s*[:.]?\s*$")
# "3G PER SERVING": utils.core.units drops "<=6" + "G" as a network generation; for weights it is kept, flagged.
_SMALL_G = re.compile(r"(?<![\w.,])([1-6])G(?![A-Za-z0-9])")


def loosen_text(text: str) -> str:
    """``text`` with a space at each glued number boundary a strict parse skips; "" when nothing changes."""
    loose = _GLUED_BEFORE.sub(" ", _GLUED_AFTER_G.sub(" ", _GLUED_AFTER.sub(" ", text)))
    loose = _OZ_AS_02.sub(lambda m: m.group(1) + "oz", loose)
    return loose if loose != text else ""


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
        return units.format_value(self.value, self.unit)


def allowed_units(entity: str) -> frozenset[str]:
    """The units allowed for an entity (from utils.core.units); ValueError for an unknown entity."""
    m = units.ENTITY_UNIT_MAP
    if entity not in m:
        raise ValueError(f"unknown entity {entity!r}; expected one of {sorted(m)}")
    return m[entity]


def _from_text(text: str, boxes: list[int], entity: str, split_at: int | None = None) -> list[Candidate]:
    """Candidates in one string; with ``split_at`` only mentions crossing that offset (a joined pair of boxes)."""
    out: list[Candidate] = []
    for q in units.parse_quantities(fix_ocr_text(text)):
        unit = units.unit_for_entity(q.unit, entity)  # the cleaning step's fit: "oz" on item_volume is fl oz
        if unit is None:
            continue
        if split_at is not None and not (q.start < split_at < q.end):
            continue
        split = split_at is not None
        if q.is_range and q.low is not None and q.high is not None:
            for part, v in ((1, q.low), (2, q.high)):
                out.append(Candidate(float(v), unit, text, boxes, q.start, q.end, True, part, split))
            continue
        # utils.core.units reads "10 x 20 x 30 cm" as three quantities, each with its place in the string
        out.append(Candidate(float(q.value), unit, text, boxes, q.start, q.end, False, 0, split,
                             int(q.dim_count), int(q.dim_pos)))
    return out


def _neighbours(a: OcrBox, b: OcrBox) -> bool:
    """b continues a: right of it on the same line, or just below it, within about one text height."""
    h = max(min(a.height, b.height), 1.0)
    v_overlap = min(a.y1, b.y1) - max(a.y0, b.y0)
    if v_overlap > 0.5 * min(a.y1 - a.y0, b.y1 - b.y0) and -0.5 * h <= b.x0 - a.x1 <= 2.0 * h:
        return True
    h_overlap = min(a.x1, b.x1) - max(a.x0, b.x0)
    return h_overlap > 0 and -0.5 * h <= b.y0 - a.y1 <= 1.0 * h


def extract_candidates(ocr: OcrResult | None, entity: str) -> list[Candidate]:
    """Every mention in the OCR boxes whose unit fits ``entity``, including split and dimension-string ones."""
    allowed = allowed_units(entity)
    if ocr is None:
        return []
    out: list[Candidate] = []
    for i, b in enumerate(ocr.boxes):
        strict = _from_text(b.text, [i], entity)
        out.extend(strict)
        seen = {(c.value, c.unit) for c in strict}
        loose = loosen_text(fix_ocr_text(b.text))
        for c in _from_text(loose, [i], entity) if loose else []:
            if (c.value, c.unit) not in seen:
                c.extra["loose"] = 1.0
                out.append(c)
        if "gram" in allowed:
            for m in _SMALL_G.finditer(b.text):
                if (float(m.group(1)), "gram") not in seen:
                    out.append(Candidate(float(m.group(1)), "gram", b.text, [i], m.start(), m.end(),
                                         extra={"loose": 1.0}))
            for rx in (_G_AS_9, _G_AS_9_AFTER_KW):
                for m in rx.finditer(b.text):
                    if (float(m.group(1)), "gram") not in seen:
                        out.append(Candidate(float(m.group(1)), "gram", b.text, [i], m.start(1), m.end(1) + 1,
                                             extra={"loose": 1.0}))
    if "gram" in allowed:  # "Weight" | "5909"
        for i, a in enumerate(ocr.boxes):
            if not _ENDS_WITH_WEIGHT_KW.search(a.text):
                continue
            for j, b in enumerate(ocr.boxes):
                m = _G_AS_9_ALONE.fullmatch(b.text)
                if i != j and m and _neighbours(a, b):
                    joined = a.text.rstrip() + " " + b.text.strip()
                    st = len(a.text.rstrip()) + 1
                    out.append(Candidate(float(m.group(1)), "gram", joined, [i, j], st, len(joined), split=True,
                                         extra={"loose": 1.0}))
    for i, a in enumerate(ocr.boxes):
        if not _ENDS_WITH_NUMBER.search(a.text):
            continue
        for j, b in enumerate(ocr.boxes):
            if i == j or not b.text or b.text[0].isdigit() or not _neighbours(a, b):
                continue
            joined = a.text.rstrip() + " " + b.text.lstrip()
            out.extend(_from_text(joined, [i, j], entity, split_at=len(a.text.rstrip()) + 1))
    return out


def same_answer(answer: str, truth: str) -> bool:
    """Whether a candidate answer equals a label (same unit, values equal as floats); ranges never match."""
    if not answer or not truth:
        return False
    return bool(values_equal(answer, truth))
