"""Entity and unit knowledge, and the cleaning step that turns any answer into a submission value.

* ``ENTITY_UNIT_MAP`` / ``ENTITIES``: the allowed (full-name) units per entity, as in the data README.
* ``parse_quantities(text)``: every number+unit mention in free text (model answers, OCR lines), in order.
* ``normalize_prediction(entity, text)``: any answer to ``"<float> <unit>"`` with an allowed unit, or ``""``.
  It never raises, and reads at most ``MAX_ANSWER_CHARS`` (1,000) characters of ``text``, so it takes milliseconds
  on any input; ``parse_quantities`` itself has no cap and is linear in the text length.
* ``format_value`` / ``parse_value`` / ``parse_range``: the canonical spelling and its inverse.

What the parser understands:

* numbers: ``500``, ``0.709``, ``.5``, US thousands ``1,000`` / ``1,000.5``, European ``1.234,5``, a decimal comma
  ``1,5`` (a comma followed by exactly three digits is a thousands separator, by one, two or four+ digits a decimal
  comma; ``0,709`` is 0.709; ``1.000`` is read as 1.0), space thousands ``1 000`` / ``12 500`` (a 1-2 digit head,
  so ``100 240 V`` is not one number), unicode fractions ``½`` / ``1½`` / ``1 ½``, ascii fractions ``1/2``,
  ``1 1/2``, ``1-1/2`` (a proper fraction with denominator 2-16, 32 or 64; any other ``a/b`` before a unit, like
  ``110/220V``, is read as a range);
* units: abbreviations and spellings in any case, singular or plural, US/UK spellings, with or without a space (or a
  hyphen, "5-inch") after the number; ``"`` / ``''`` / ``″`` are inch, ``'`` / ``′`` foot; see ``_ALIASES``;
* ranges ``100-240V``, ``100V-240V``, ``10 to 15 kg``, ``110/220V``, ``[100.0, 240.0] volt`` and the label spelling
  ``10 kilogram to 15 kilogram``: one :class:`Quantity` with ``is_range``, ``low`` and ``high``; which number a
  range answers is the *range rule* (``RANGE_RULE``, overridable per call): ``"high"`` (default), ``"low"``,
  ``"mean"`` or ``"empty"`` (a range answers ``""``);
* dimension strings ``10 x 20 x 30 cm`` / ``10x20x30cm`` / ``10 L x 20 W x 30 H cm``: one quantity per number, all
  in the final unit (only when that unit is a length, so ``3 x 100 g`` is just ``100 g``);
* look-alikes: a bare ``W`` / ``L`` after a number is a width/length marker, not watt/litre, when an ``x`` follows
  or a number and then a marker letter or ``x`` (``10 W x 20 H``, ``10 W 20 H 30 cm``; ``12V 60W 5A`` stays 60 watt);
  watt/kilowatt followed by ``h``/``hour`` is energy and skipped (``5 kWh``, ``0.352 kilowatt hour``), as are
  ``mAh``, ``ft²``, ``m³``; ``4G``/``5G`` (an integer up to 6 with a capital G attached) is a network generation, not
  grams; a number glued to a longer word (``SKU123 g``) is skipped, except after ``AC``/``DC`` (``AC100-240V``);
  a minus sign is not read (quantities are never negative); ``GSM`` (fabric/paper weight, g/m²) reads as gram, as the
  challenge's labels do (``200GSM`` -> ``200.0 gram``).

One module on purpose (over 400 lines): the number grammar, the unit aliases, ranges and dimension strings are one
parser, and every rule here was measured against every real label and thousands of OCR lines.

Entity fitting (:func:`unit_for_entity`): the unit must be allowed for the entity, except that ``ounce`` for
``item_volume`` means ``fluid ounce``. Anything else that does not fit gives ``""`` (``normalize_prediction`` then
tries the next mention in the text).
"""

from __future__ import annotations

import math
import re
from bisect import bisect_right
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction

# --------------------------------------------------------------------------------------------------------------
# Entities and their units

_LENGTH = frozenset({"centimetre", "foot", "inch", "metre", "millimetre", "yard"})
_MASS = frozenset({"gram", "kilogram", "microgram", "milligram", "ounce", "pound", "ton"})
_VOLTAGE = frozenset({"kilovolt", "millivolt", "volt"})
_POWER = frozenset({"kilowatt", "watt"})
_VOLUME = frozenset(
    {
        "centilitre", "cubic foot", "cubic inch", "cup", "decilitre", "fluid ounce", "gallon",
        "imperial gallon", "litre", "microlitre", "millilitre", "pint", "quart",
    }
)  # fmt: skip

#: The allowed (full-name) units per entity, as the challenge defines them.
ENTITY_UNIT_MAP: dict[str, frozenset[str]] = {
    "width": _LENGTH,
    "depth": _LENGTH,
    "height": _LENGTH,
    "item_weight": _MASS,
    "maximum_weight_recommendation": _MASS,
    "voltage": _VOLTAGE,
    "wattage": _POWER,
    "item_volume": _VOLUME,
}
ENTITIES: tuple[str, ...] = tuple(ENTITY_UNIT_MAP)
#: Every canonical unit name any entity allows.
ALL_UNITS: frozenset[str] = frozenset().union(*ENTITY_UNIT_MAP.values())

#: How a range ("100-240V") answers a single value: "high", "low", "mean" or "empty" (answer ""). Change it here
#: for the whole suite, or pass ``range_rule=`` per call.
RANGE_RULE = "high"
RANGE_RULES: tuple[str, ...] = ("high", "low", "mean", "empty")

# Spellings per canonical unit. Matching ignores case, dots and spaces inside an alias ("fl. oz." == "floz").
_ALIASES: dict[str, tuple[str, ...]] = {
    "gram": ("g", "gm", "gms", "gr", "grs", "gsm", "gram", "grams", "gramme", "grammes"),
    "kilogram": ("kg", "kgs", "kilo", "kilos", "kilogram", "kilograms", "kilogramme", "kilogrammes"),
    "milligram": ("mg", "mgs", "milligram", "milligrams", "milligramme", "milligrammes"),
    "microgram": ("mcg", "µg", "μg", "ug", "microgram", "micrograms", "microgramme", "microgrammes"),
    "ounce": ("oz", "ozs", "ounce", "ounces"),
    "pound": ("lb", "lbs", "pound", "pounds"),
    "ton": ("ton", "tons", "tonne", "tonnes"),
    "centimetre": ("cm", "cms", "centimeter", "centimeters", "centimetre", "centimetres"),
    "millimetre": ("mm", "millimeter", "millimeters", "millimetre", "millimetres"),
    "metre": ("m", "mtr", "mtrs", "meter", "meters", "metre", "metres"),
    "inch": ("in", "inch", "inches", "inchs", '"', "''", "”", "“", "″"),
    "foot": ("ft", "foot", "feet", "'", "’", "′"),
    "yard": ("yd", "yds", "yard", "yards"),
    "volt": ("v", "volt", "volts", "vac", "vdc", "v ac", "v dc"),
    "kilovolt": ("kv", "kilovolt", "kilovolts"),
    "millivolt": ("mv", "millivolt", "millivolts"),
    "watt": ("w", "watt", "watts"),
    "kilowatt": ("kw", "kilowatt", "kilowatts"),
    "millilitre": ("ml", "mls", "milliliter", "milliliters", "millilitre", "millilitres", "cc", "cm3", "cm³"),
    "litre": ("l", "ltr", "ltrs", "lt", "liter", "liters", "litre", "litres"),
    "centilitre": ("cl", "centiliter", "centiliters", "centilitre", "centilitres"),
    "decilitre": ("dl", "deciliter", "deciliters", "decilitre", "decilitres"),
    "microlitre": ("µl", "μl", "ul", "microliter", "microliters", "microlitre", "microlitres"),
    "fluid ounce": ("fl oz", "fl ozs", "floz", "fluid ounce", "fluid ounces", "fl ounce", "fl ounces"),
    "gallon": ("gal", "gals", "gallon", "gallons"),
    "imperial gallon": ("imp gal", "imperial gallon", "imperial gallons", "uk gal", "uk gallon", "uk gallons"),
    "quart": ("qt", "qts", "quart", "quarts"),
    "pint": ("pt", "pts", "pint", "pints"),
    "cup": ("cup", "cups"),
    "cubic foot": ("cu ft", "cubic foot", "cubic feet", "ft3", "ft³"),
    "cubic inch": ("cu in", "cubic inch", "cubic inches", "in3", "in³"),
}


def _alias_key(s: str) -> str:
    return re.sub(r"[\s.]+", "", s.casefold())


_UNIT_BY_KEY: dict[str, str] = {}
for _unit, _spellings in _ALIASES.items():
    for _s in _spellings:
        _UNIT_BY_KEY[_alias_key(_s)] = _unit
    _UNIT_BY_KEY[_alias_key(_unit)] = _unit  # the canonical name itself always works


def _alias_pattern(alias: str) -> str:
    words = alias.split()
    pat = r"\.?[ \t]*".join(re.escape(w) for w in words)  # "fl oz" also matches "fl. oz", "fl.oz", "floz"
    if alias[-1].isalnum():
        pat += r"(?![A-Za-z0-9²³µμ])"
    return pat


_ALL_ALIASES = sorted(
    {s for spellings in _ALIASES.values() for s in spellings} | set(_ALIASES), key=lambda s: (-len(s), s)
)
_WS = r"[ \t\u00a0\u2009\u202f]"
_UNIT_RE = re.compile(
    rf"{_WS}*(?:-{_WS}*)?(?P<unit>" + "|".join(_alias_pattern(a) for a in _ALL_ALIASES) + ")", re.IGNORECASE
)

# --------------------------------------------------------------------------------------------------------------
# Numbers

_VULGAR: dict[str, Fraction] = {
    "½": Fraction(1, 2), "⅓": Fraction(1, 3), "⅔": Fraction(2, 3), "¼": Fraction(1, 4), "¾": Fraction(3, 4),
    "⅕": Fraction(1, 5), "⅖": Fraction(2, 5), "⅗": Fraction(3, 5), "⅘": Fraction(4, 5), "⅙": Fraction(1, 6),
    "⅚": Fraction(5, 6), "⅐": Fraction(1, 7), "⅛": Fraction(1, 8), "⅜": Fraction(3, 8), "⅝": Fraction(5, 8),
    "⅞": Fraction(7, 8), "⅑": Fraction(1, 9), "⅒": Fraction(1, 10),
}  # fmt: skip
_VF = "[" + "".join(_VULGAR) + "]"
_FRACTION_DENOMINATORS = frozenset({2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 32, 64})
_MAX_DIGITS = 40  # longer digit runs are identifiers, not quantities (and keep int() far from its limits)

_DEC = (
    r"[1-9][0-9]{0,2}(?:,[0-9]{3})+(?:\.[0-9]+)?(?![0-9])"  # 1,000  1,000.5      (US thousands)
    r"|[1-9][0-9]{0,2}(?:\.[0-9]{3})+,[0-9]+"  # 1.234,5              (European)
    r"|[1-9][0-9]{0,2}(?:[\u00a0\u2009\u202f][0-9]{3})+(?:[.,][0-9]+)?(?![0-9/⁄])"  # 1 000 (no-break space)
    r"|[1-9][0-9]?(?: [0-9]{3})+(?:[.,][0-9]+)?(?![0-9/⁄])"  # 1 000  12 500         (space thousands)
    r"|0,[0-9]+|[0-9]+,(?:[0-9]{1,2}|[0-9]{4,})(?![0-9])"  # 0,709  1,5  1,25   (decimal comma)
    r"|[0-9]*\.[0-9]+"  # 0.709  .5
    r"|[0-9]+"
)
_NUM_RE = re.compile(
    r"(?P<mi>[0-9]+)(?:[ \t]+|-)(?P<mn>[0-9]+)[ \t]*[/⁄][ \t]*(?P<md>[0-9]+)(?![0-9])"  # 1 1/2, 1-1/2
    r"|(?P<fn>[0-9]+)[ \t]*[/⁄][ \t]*(?P<fd>[0-9]+)(?![0-9])"  # 1/2
    rf"|(?P<d>{_DEC})(?:{_WS}*(?P<dv>{_VF}))?"  # 500, 1½, 1 ½
    rf"|(?P<v>{_VF})"  # ½
)
_RANGE_SEP_RE = re.compile(rf"{_WS}*(?:-|–|—|~|to(?![A-Za-z])|/){_WS}*", re.IGNORECASE)
_DIM_SEP_RE = re.compile(rf"(?:{_WS}*[LWHD](?![A-Za-z]))?{_WS}*[xX×*]{_WS}*")
_DIM_MARKER_RE = re.compile(rf"{_WS}*[LWHD](?![A-Za-z])")
# after a bare "W"/"L": an "x", or a number followed by a marker letter or an "x" ("10 W x 20", "10 W 20 H 30 cm")
_MARKER_NEXT_RE = re.compile(
    rf"{_WS}*(?:[xX×*](?![A-Za-z])|[0-9][0-9.,]*{_WS}*(?:[LWHDlwhd](?![A-Za-z])|[xX×*](?![A-Za-z])))"
)
_HOUR_NEXT_RE = re.compile(rf"{_WS}*-?{_WS}*(?:hours?|hrs?|h)(?![A-Za-z])", re.IGNORECASE)
_BRACKET_RE = re.compile(rf"\[{_WS}*(?P<a>{_DEC}){_WS}*[,;]{_WS}*(?P<b>{_DEC}){_WS}*\]")


def _dec(s: str) -> Fraction:
    """A decimal token (see ``_DEC``) to an exact Fraction."""
    s = s.replace(" ", "").replace("\u00a0", "").replace("\u2009", "").replace("\u202f", "")
    if "," in s:
        if re.fullmatch(r"[1-9][0-9]{0,2}(?:,[0-9]{3})+(?:\.[0-9]+)?", s):
            s = s.replace(",", "")
        else:  # decimal comma, possibly with dot thousands
            s = s.replace(".", "").replace(",", ".")
    return Fraction(s)


def _num_value(m: re.Match[str]) -> Fraction | None:
    """The value of a ``_NUM_RE`` match, or None when it is not a usable number (too long, not a fraction)."""
    if len(m.group(0)) > _MAX_DIGITS:
        return None
    if m.group("mi") is not None:
        n, d = int(m.group("mn")), int(m.group("md"))
        if d not in _FRACTION_DENOMINATORS or not 0 < n < d:
            return None
        return int(m.group("mi")) + Fraction(n, d)
    if m.group("fn") is not None:
        n, d = int(m.group("fn")), int(m.group("fd"))
        if d not in _FRACTION_DENOMINATORS or not 0 < n < d:
            return None
        return Fraction(n, d)
    if m.group("d") is not None:
        v = _dec(m.group("d"))
        if m.group("dv"):
            v += _VULGAR[m.group("dv")]
        return v
    return _VULGAR[m.group("v")]


# --------------------------------------------------------------------------------------------------------------
# Quantities


@dataclass(frozen=True, slots=True)
class Quantity:
    """One number+unit mention: ``unit`` is the full canonical name (any entity); ``start:end`` its span in the text.

    For a range ``low``/``high`` are its ends and ``value`` the end chosen by the range rule in force when parsed
    ("mean" gives the midpoint; "empty" keeps ``high`` here, and :func:`quantity_for_entity` answers ``""``).
    In a dimension string ``dim_count`` is how many numbers share the unit and ``dim_pos`` this one's place
    (0-based); each quantity's span covers its own number (the last one's also covers the unit).
    """

    value: float
    unit: str
    start: int
    end: int
    is_range: bool = False
    low: float | None = None
    high: float | None = None
    dim_count: int = 1
    dim_pos: int = 0

    def pick(self, range_rule: str | None = None) -> float | None:
        """The single value this quantity answers under ``range_rule`` (None for a range under "empty")."""
        if not self.is_range or self.low is None or self.high is None:
            return self.value
        return _pick(Fraction(repr(self.low)), Fraction(repr(self.high)), _rule(range_rule))


def _rule(range_rule: str | None) -> str:
    rule = RANGE_RULE if range_rule is None else range_rule
    if rule not in RANGE_RULES:
        raise ValueError(f"unknown range rule {rule!r}; expected one of {', '.join(RANGE_RULES)}")
    return rule


def _pick(low: Fraction, high: Fraction, rule: str) -> float | None:
    if rule == "low":
        return float(low)
    if rule == "mean":
        return float((low + high) / 2)
    if rule == "empty":
        return None
    return float(high)


def _finite(v: Fraction) -> float | None:
    try:
        f = float(v)
    except (OverflowError, ValueError, ZeroDivisionError):
        return None
    return f if math.isfinite(f) else None


def _unit_at(text: str, pos: int) -> tuple[str, int, int] | None:
    """A unit right after position ``pos``: (canonical, unit_start, end), honouring the marker rules."""
    m = _UNIT_RE.match(text, pos)
    if m is None:
        return None
    raw = m.group("unit")
    unit = _UNIT_BY_KEY.get(_alias_key(raw))
    if unit is None:
        return None
    if raw in ("W", "L", "w", "l") and _MARKER_NEXT_RE.match(text, m.end()):
        return None  # "10 W x 20 H", "L 10 W 20": a width/length marker
    if unit in _POWER and _HOUR_NEXT_RE.match(text, m.end()):
        return None  # "0.352 kilowatt hour", "60 W h": energy, not power
    return unit, m.start("unit"), m.end()


def _glued_to_word(text: str, start: int) -> bool:
    """Whether the number at ``start`` is glued to a longer word ("SKU123"), not "W30" / "x20" / "AC100"."""
    i = start
    while i > 0 and text[i - 1].isalpha():
        i -= 1
    word = text[i:start]
    if not word:
        return start > 0 and text[start - 1].isdigit()
    if i > 0 and text[i - 1].isdigit():
        return True
    return len(word) > 1 and word.upper() not in ("AC", "DC")


def parse_quantities(text: str, range_rule: str | None = None) -> list[Quantity]:
    """Every number+unit mention in ``text``, in order (see the module docstring for what is understood).

    ``range_rule`` sets ``Quantity.value`` for ranges (default ``RANGE_RULE``). Never raises on a string.
    """
    if not isinstance(text, str) or not text:
        return []
    rule = _rule(range_rule)
    out: list[Quantity] = []
    if "[" in text:
        for m in _BRACKET_RE.finditer(text):
            u = _unit_at(text, m.end())
            if u is None or len(m.group(0)) > 2 * _MAX_DIGITS:
                continue
            lo, hi = sorted((_dec(m.group("a")), _dec(m.group("b"))))
            q = _range_quantity(lo, hi, u[0], m.start(), u[2], rule)
            if q is not None:
                out.append(q)
    # bracket spans are sorted and disjoint: one bisect per number, not a scan of all of them
    taken_starts = [q.start for q in out]
    taken_ends = [q.end for q in out]
    dead_chains: set[int] = set()  # see _after_number
    pos, n = 0, len(text)
    while pos < n:
        m = _NUM_RE.search(text, pos)
        if m is None:
            break
        start, end = m.span()
        pos = end
        k = bisect_right(taken_starts, start) - 1
        if (k >= 0 and start < taken_ends[k]) or _glued_to_word(text, start):
            continue
        v1 = _num_value(m)
        if v1 is None:
            # "110/220V": not a fraction, so maybe a range written with a slash
            if m.group("fn") is not None:
                got = _slash_range(text, m, rule)
                if got is not None:
                    out.append(got)
                    pos = got.end
            continue
        got_list = _after_number(text, m, v1, rule, dead_chains)
        if got_list:
            out.extend(got_list)
            pos = got_list[-1].end
    out.sort(key=lambda q: q.start)
    return out


def _range_quantity(lo: Fraction, hi: Fraction, unit: str, start: int, end: int, rule: str) -> Quantity | None:
    flo, fhi = _finite(lo), _finite(hi)
    if flo is None or fhi is None:
        return None
    value = _pick(lo, hi, "high" if rule == "empty" else rule)
    return Quantity(value, unit, start, end, True, flo, fhi)  # type: ignore[arg-type]


def _slash_range(text: str, m: re.Match[str], rule: str) -> Quantity | None:
    if len(m.group(0)) > _MAX_DIGITS:
        return None
    u = _unit_at(text, m.end())
    if u is None:
        return None
    a, b = sorted((Fraction(int(m.group("fn"))), Fraction(int(m.group("fd")))))
    return _range_quantity(a, b, u[0], m.start(), u[2], rule)


def _after_number(
    text: str, m: re.Match[str], v1: Fraction, rule: str, dead_chains: set[int] | None = None
) -> list[Quantity]:
    """What follows a number: a range, a dimension string, a plain unit, or nothing.

    ``dead_chains`` (shared by one ``parse_quantities`` call) holds the positions right after a number from which
    a dimension chain was already followed to its end and found no length unit there. Where a chain goes from a
    position depends on the text after it only, so a later number ending at such a position (the 2nd, 3rd, ...
    number of ``1 x 1 x ... x cm``) cannot start a dimension string either, and its chain is not walked again:
    that keeps the parse linear instead of quadratic in the chain length.
    """
    start, end = m.span()
    u1 = _unit_at(text, end)
    # a range: "100-240V", "100V-240V", "10 to 15 kg"
    sep = _RANGE_SEP_RE.match(text, u1[2] if u1 else end)
    if sep is not None:
        m2 = _NUM_RE.match(text, sep.end())
        if m2 is not None:
            v2 = _num_value(m2)
            u2 = _unit_at(text, m2.end()) if v2 is not None else None
            if u2 is not None and (u1 is None or u1[0] == u2[0]) and v2 is not None:
                lo, hi = sorted((v1, v2))
                q = _range_quantity(lo, hi, u2[0], start, u2[2], rule)
                if q is not None:
                    return [q]
    # a dimension string: "10 x 20 x 30 cm", "10 L x 20 W x 30 H cm"
    if u1 is None:
        nums: list[tuple[Fraction, int, int]] = [(v1, start, end)]
        p = end
        visited = [end]
        while True:
            if dead_chains is not None and p in dead_chains:
                return []  # this chain ends where an earlier one did: at no length unit
            s = _DIM_SEP_RE.match(text, p)
            if s is None:
                break
            mn = _NUM_RE.match(text, s.end())
            vn = None if mn is None else _num_value(mn)
            if mn is None or vn is None:
                break
            nums.append((vn, mn.start(), mn.end()))
            p = mn.end()
            visited.append(p)
        if len(nums) > 1:
            mk = _DIM_MARKER_RE.match(text, p)
            un = _unit_at(text, mk.end() if mk else p)
            if (un is None or un[0] not in _LENGTH) and dead_chains is not None:
                dead_chains.update(visited)
            if un is not None and un[0] in _LENGTH:
                vals = [_finite(v) for v, _, _ in nums]
                if all(x is not None for x in vals):
                    k = len(nums)
                    return [
                        Quantity(x, un[0], s0, un[2] if i == k - 1 else e0, dim_count=k, dim_pos=i)  # type: ignore
                        for i, (x, (_, s0, e0)) in enumerate(zip(vals, nums))
                    ]
        return []
    # a plain unit
    unit, ustart, uend = u1
    if unit == "gram" and text[ustart:uend] == "G" and ustart == end and m.group("d") is not None:
        if re.fullmatch(r"[0-9]+", m.group(0)) and int(m.group(0)) <= 6:
            return []  # "4G", "5G": a network generation
    v = _finite(v1)
    return [] if v is None else [Quantity(v, unit, start, uend)]


# --------------------------------------------------------------------------------------------------------------
# Canonical values


def format_value(value: float, unit: str) -> str:
    """The one submission spelling: ``format_value(500, "gram") == "500.0 gram"``; never exponent notation."""
    try:
        v = float(value)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"format_value: value {value!r} is not a number") from exc
    if not math.isfinite(v):
        raise ValueError(f"format_value: value {value!r} is not finite")
    if not isinstance(unit, str) or not re.fullmatch(r"[A-Za-z]+(?: [A-Za-z]+)*", unit):
        raise ValueError(f"format_value: unit {unit!r} is not a unit name (letters and single spaces)")
    s = repr(v)
    if "e" in s or "E" in s:
        s = format(Decimal(s), "f")
        if "." not in s:
            s += ".0"
    return f"{s} {unit}"


_NUMBER_TEXT = r"[0-9]+(?:\.[0-9]*)?(?:[ ]?[eE][+-]?[0-9]+)?|\.[0-9]+(?:[ ]?[eE][+-]?[0-9]+)?"
_VALUE_RE = re.compile(rf"\s*(?P<n>-?(?:{_NUMBER_TEXT}))\s*(?P<u>[A-Za-z]+(?:\s+[A-Za-z]+)*)\s*")
_RANGE_LABEL_RE = re.compile(
    rf"\s*\[\s*(?P<a>-?(?:{_NUMBER_TEXT}))\s*,\s*(?P<b>-?(?:{_NUMBER_TEXT}))\s*\]"
    rf"\s*(?P<u>[A-Za-z]+(?:\s+[A-Za-z]+)*)\s*"
    rf"|\s*(?P<c>-?(?:{_NUMBER_TEXT}))\s*(?P<u1>[A-Za-z]+(?:\s+[A-Za-z]+)*?)\s+to\s+(?P<d>-?(?:{_NUMBER_TEXT}))\s*"
    rf"(?P<u2>[A-Za-z]+(?:\s+[A-Za-z]+)*)\s*"
)


_MAX_LABEL_CHARS = 1000  # a fixed-notation float is at most ~330 characters (subnormals)


def _label_number(s: str) -> float | None:
    try:
        f = float(s.replace(" ", ""))
    except ValueError:
        return None
    return f if math.isfinite(f) else None


def parse_value(value: str) -> tuple[float, str] | None:
    """Parse a canonical label/prediction (``"500 gram"``, ``"500.0 gram"``, ``"2.2e+20 gram"``) to (value, unit).

    The unit is returned as written (whitespace collapsed), whether or not it is allowed for any entity
    (``"5 horsepower"`` parses). Ranges, abbreviations and anything else return None. Never raises.
    """
    if not isinstance(value, str) or len(value) > _MAX_LABEL_CHARS:
        return None
    m = _VALUE_RE.fullmatch(value)
    if m is None or re.search(r"\bto\b", m.group("u")):
        return None
    v = _label_number(m.group("n"))
    return None if v is None else (v, " ".join(m.group("u").split()))


def parse_range(value: str) -> tuple[float, float, str] | None:
    """Parse a range label, ``"[100.0, 240.0] volt"`` or ``"10 kilogram to 15 kilogram"``, to (low, high, unit).

    Both ends of the "to" spelling must have the same unit. Anything else returns None. Never raises.
    """
    if not isinstance(value, str) or len(value) > _MAX_LABEL_CHARS:
        return None
    m = _RANGE_LABEL_RE.fullmatch(value)
    if m is None:
        return None
    if m.group("a") is not None:
        a, b, unit = _label_number(m.group("a")), _label_number(m.group("b")), " ".join(m.group("u").split())
    else:
        unit = " ".join(m.group("u1").split())
        if unit != " ".join(m.group("u2").split()):
            return None
        a, b = _label_number(m.group("c")), _label_number(m.group("d"))
    if a is None or b is None:
        return None
    lo, hi = sorted((a, b))
    return lo, hi, unit


# --------------------------------------------------------------------------------------------------------------
# Conversions between units of one kind

#: Per unit: (kind, size in that kind's base unit). Bases: mass gram, length metre, volume millilitre, voltage volt,
#: power watt. ``ton`` is the metric tonne; ``cup`` the US cup; ``gallon`` / ``pint`` / ``quart`` US liquid measures.
UNIT_BASE: dict[str, tuple[str, float]] = {
    "gram": ("mass", 1.0), "kilogram": ("mass", 1000.0), "milligram": ("mass", 1e-3),
    "microgram": ("mass", 1e-6), "ounce": ("mass", 28.349523125), "pound": ("mass", 453.59237),
    "ton": ("mass", 1e6),
    "metre": ("length", 1.0), "centimetre": ("length", 0.01), "millimetre": ("length", 1e-3),
    "inch": ("length", 0.0254), "foot": ("length", 0.3048), "yard": ("length", 0.9144),
    "millilitre": ("volume", 1.0), "litre": ("volume", 1000.0), "centilitre": ("volume", 10.0),
    "decilitre": ("volume", 100.0), "microlitre": ("volume", 1e-3), "fluid ounce": ("volume", 29.5735295625),
    "gallon": ("volume", 3785.411784), "imperial gallon": ("volume", 4546.09), "quart": ("volume", 946.352946),
    "pint": ("volume", 473.176473), "cup": ("volume", 236.5882365), "cubic foot": ("volume", 28316.846592),
    "cubic inch": ("volume", 16.387064),
    "volt": ("voltage", 1.0), "kilovolt": ("voltage", 1000.0), "millivolt": ("voltage", 1e-3),
    "watt": ("power", 1.0), "kilowatt": ("power", 1000.0),
}  # fmt: skip
#: Units that belong to the metric system (the rest are US/imperial).
METRIC_UNITS: frozenset[str] = frozenset(
    u for u in UNIT_BASE if u not in {"ounce", "pound", "inch", "foot", "yard", "fluid ounce", "gallon",
                                      "imperial gallon", "quart", "pint", "cup", "cubic foot", "cubic inch"}
)


def unit_kind(unit: str) -> str:
    """The kind of a canonical unit: "mass", "length", "volume", "voltage" or "power"; ValueError if unknown."""
    if unit not in UNIT_BASE:
        raise ValueError(f"unknown unit {unit!r}; expected one of {sorted(UNIT_BASE)}")
    return UNIT_BASE[unit][0]


def to_base(value: float, unit: str) -> float:
    """``value`` in ``unit`` expressed in its kind's base unit (mass in grams, length in metres, volume in
    millilitres, voltage in volts, power in watts): ``to_base(1, "pound") == 453.59237``. ValueError on an unknown
    unit or a value that is not a finite number."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"value must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"value must be finite, got {value!r}")
    unit_kind(unit)
    return v * UNIT_BASE[unit][1]


def same_amount(a: tuple[float, str], b: tuple[float, str], rel_tol: float = 0.03) -> bool:
    """Whether two (value, unit) amounts of the same kind agree within ``rel_tol`` after conversion (a label's
    "100 g / 3.53 oz" pair: printed conversions are rounded, so exact equality is too strict)."""
    if unit_kind(a[1]) != unit_kind(b[1]):
        return False
    x, y = to_base(*a), to_base(*b)
    if x <= 0 or y <= 0:
        return x == y
    return abs(x - y) <= rel_tol * max(x, y)


# --------------------------------------------------------------------------------------------------------------
# Entity fitting and the cleaning step


def unit_for_entity(unit: str, entity_name: str) -> str | None:
    """The unit as it must be written for ``entity_name`` ("ounce" -> "fluid ounce" for item_volume), or None."""
    allowed = ENTITY_UNIT_MAP.get(entity_name)
    if allowed is None:
        return None
    if unit in allowed:
        return unit
    if entity_name == "item_volume" and unit == "ounce":
        return "fluid ounce"
    return None


def quantity_for_entity(q: Quantity, entity_name: str, range_rule: str | None = None) -> str:
    """``q`` as a submission value for ``entity_name`` (``"500.0 gram"``), or ``""`` when its unit does not fit.

    A range answers the value chosen by ``range_rule`` (default ``RANGE_RULE``; "empty" gives ``""``).
    """
    unit = unit_for_entity(q.unit, entity_name)
    if unit is None:
        return ""
    value = q.pick(range_rule)
    if value is None or not math.isfinite(value) or value < 0:
        return ""
    return format_value(value, unit)


_EMPTY_ANSWERS = frozenset({"", "none", "n/a", "na", "nan", "null", "unknown", "-", "not available", "no"})

#: ``normalize_prediction`` reads at most this many characters of an answer (its head; a word cut at the limit is
#: dropped). Answers and labels are a few dozen characters; the cap bounds the time a runaway answer can cost.
MAX_ANSWER_CHARS = 1000


def _answer_head(s: str) -> str:
    """The first ``MAX_ANSWER_CHARS`` characters of ``s``, without a word the limit cuts in two ("5 gal" must not
    become "5 g")."""
    if len(s) <= MAX_ANSWER_CHARS:
        return s
    head = s[:MAX_ANSWER_CHARS]
    if not s[MAX_ANSWER_CHARS].isspace():
        m = re.search(r"\s\S*\Z", head)
        head = head[: m.start()] if m else ""
    return head.rstrip()


def normalize_prediction(entity_name: str, text: str, range_rule: str | None = None) -> str:
    """Turn any model/OCR answer into ``"<float> <unit>"`` with a unit allowed for ``entity_name``, or ``""``.

    The first mention in ``text`` whose unit fits the entity wins (a canonical value, ``"[a, b] unit"`` and
    ``"a unit to b unit"`` labels included). Never raises, on any input; an unknown entity or an unknown
    ``range_rule`` gives ``""``. Only the first ``MAX_ANSWER_CHARS`` characters are read, so the time per call is
    bounded whatever the input (a few milliseconds at most).
    """
    try:
        if not isinstance(text, str) or not isinstance(entity_name, str):
            return ""
        entity = entity_name.strip()
        if entity not in ENTITY_UNIT_MAP:
            return ""
        rule = _rule(range_rule)
        s = _answer_head(text.strip())
        if s.casefold().strip(" .") in _EMPTY_ANSWERS:
            return ""
        exact = parse_value(s)
        if exact is not None:
            unit = unit_for_entity(exact[1], entity)
            if unit is not None and exact[0] >= 0:
                return format_value(exact[0], unit)
        rng = parse_range(s)
        if rng is not None:
            unit = unit_for_entity(rng[2], entity)
            if unit is not None and rng[0] >= 0:
                v = _pick(Fraction(repr(rng[0])), Fraction(repr(rng[1])), rule)
                return "" if v is None else format_value(v, unit)
        for q in parse_quantities(s, rule):
            answer = quantity_for_entity(q, entity, rule)
            if answer:
                return answer
            if q.is_range and rule == "empty" and unit_for_entity(q.unit, entity) is not None:
                return ""
        return ""
    except Exception:  # the cleaning step must never take a run down
        return ""
