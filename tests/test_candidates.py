"""Tests for utils.candidates: mentions per box, split across boxes, ranges, dimension strings, unit filter."""

from __future__ import annotations

import pytest

from utils.candidates import allowed_units, extract_candidates, same_answer
from utils.ocr import OcrBox, OcrResult


def box(text: str, x: float, y: float, w: float = 80, h: float = 20) -> OcrBox:
    return OcrBox(text, 0.95, [[x, y], [x + w, y], [x + w, y + h], [x, y + h]])


def answers(res: OcrResult, entity: str) -> list[str]:
    return [c.answer for c in extract_candidates(res, entity)]


def test_every_mention_that_fits_the_entity() -> None:
    res = OcrResult(500, 500, [box("Net Wt. 16 oz (454 g)", 10, 10, 200), box("220-240V 1200W", 10, 60, 150)])
    assert answers(res, "item_weight") == ["16.0 ounce", "454.0 gram"]
    assert answers(res, "wattage") == ["1200.0 watt"]
    assert answers(res, "width") == []  # no length unit anywhere


def test_ranges_give_both_ends() -> None:
    res = OcrResult(300, 300, [box("AC 220-240V", 10, 10, 120)])
    cands = extract_candidates(res, "voltage")
    assert [(c.value, c.range_part, c.is_range) for c in cands] == [(220.0, 1, True), (240.0, 2, True)]


def test_dimension_string_numbers_share_the_unit() -> None:
    res = OcrResult(400, 400, [box("Size: 10 x 20 x 30 cm", 10, 10, 220)])
    cands = extract_candidates(res, "height")
    assert [c.answer for c in cands] == ["10.0 centimetre", "20.0 centimetre", "30.0 centimetre"]
    assert [(c.dim_pos, c.dim_count) for c in cands] == [(0, 3), (1, 3), (2, 3)]


def test_number_and_unit_split_across_neighbouring_boxes() -> None:
    same_line = OcrResult(400, 400, [box("Net Wt 16", 10, 10, 90), box("oz", 105, 11, 25)])
    c = extract_candidates(same_line, "item_weight")
    assert [x.answer for x in c] == ["16.0 ounce"] and c[0].split and c[0].boxes == [0, 1]
    below = OcrResult(400, 400, [box("75", 50, 100, 30), box("cm", 50, 125, 30)])
    assert answers(below, "width") == ["75.0 centimetre"]
    far = OcrResult(800, 800, [box("75", 10, 10, 30), box("cm", 600, 600, 30)])
    assert answers(far, "width") == []


def test_split_join_does_not_duplicate_whole_mentions() -> None:
    res = OcrResult(400, 400, [box("500 g", 10, 10, 60), box("ml", 75, 10, 30)])
    assert answers(res, "item_weight") == ["500.0 gram"]


def test_no_ocr_and_unknown_entity() -> None:
    assert extract_candidates(None, "item_weight") == []
    with pytest.raises(ValueError, match="unknown entity"):
        extract_candidates(OcrResult(1, 1, []), "colour")
    assert "ounce" in allowed_units("item_weight") and "ounce" not in allowed_units("voltage")


def test_same_answer() -> None:
    assert same_answer("16.0 ounce", "16 ounce")
    assert not same_answer("16.0 ounce", "16.0 gram")
    assert not same_answer("", "16 ounce") and not same_answer("16.0 ounce", "")
