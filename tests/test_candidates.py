"""Tests for utils.models.ocr.candidates: mentions per box, split across boxes, ranges, dimension strings, unit filter."""

from __future__ import annotations

import pytest

from utils.models.ocr.candidates import allowed_units, extract_candidates, fix_ocr_text, loosen_text, same_answer
from utils.models.ocr.engine import OcrBox, OcrResult


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
    # stacked lines whose boxes overlap by a third of the smaller height (a real dev image: "440" over "Ibs")
    stacked = OcrResult(400, 400, [box("440", 135, 809, 90, 44), box("Ibs", 143, 843, 58, 32)])
    assert answers(stacked, "maximum_weight_recommendation") == ["440.0 pound"]


def test_ounce_on_a_volume_row_is_a_fluid_ounce() -> None:
    """The cleaning step's entity fit (utils.core.units.unit_for_entity) applies to candidates too."""
    res = OcrResult(400, 400, [box("Makes 1 cup (10oz)", 10, 10, 200), box("with 8-12 oz of water", 10, 60, 200)])
    assert answers(res, "item_volume") == ["1.0 cup", "10.0 fluid ounce", "8.0 fluid ounce", "12.0 fluid ounce"]
    assert answers(res, "item_weight") == ["10.0 ounce", "8.0 ounce", "12.0 ounce"]


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


@pytest.mark.parametrize("raw,fixed", [
    ("200 mI water", "200 ml water"), ("50m1", "50ml"), ("NET WT. 3 kg (6.6 b)", "NET WT. 3 kg (6.6lb)"),
    ("I 8OKG LOAD", "I 80KG LOAD"), ("22OGSM", "220GSM"), ("1OOg", "100g"),
])
def test_ocr_confusions_are_undone_in_place(raw: str, fixed: str) -> None:
    assert fix_ocr_text(raw) == fixed and len(fixed) == len(raw)


@pytest.mark.parametrize("text", ["5 Oz", "5OZ", "ROOM 2O", "Model m1", "Tab b)"])
def test_ocr_fixes_leave_other_text_alone(text: str) -> None:
    assert fix_ocr_text(text) == text


def test_loosen_text_spaces_glued_numbers() -> None:
    assert loosen_text("Net Weight200gm") == "Net Weight 200gm"
    assert loosen_text("48V250W") == "48V 250W"
    assert loosen_text("Net Qty. 25gX4 Each") == "Net Qty. 25g X 4 Each"
    assert loosen_text("NET WT:100ge(3.5oz)") == "NET WT:100g e(3.5oz)"
    assert loosen_text("50g - 1.802") == "50g - 1.8oz"
    assert loosen_text("10 x 20 cm") == ""  # nothing glued: no second pass


def test_glued_mentions_are_kept_flagged_as_loose() -> None:
    res = OcrResult(600, 600, [box("Net Weight200gm", 10, 10, 200), box("Net Qty. 25gX4 Each", 10, 60, 200),
                               box("500 g", 10, 110, 60)])
    c = extract_candidates(res, "item_weight")
    assert [(x.answer, x.extra.get("loose", 0.0)) for x in c] == [
        ("200.0 gram", 1.0), ("25.0 gram", 1.0), ("500.0 gram", 0.0)]
    assert c[0].text == "Net Weight 200gm" and c[0].text[c[0].start:c[0].end] == "200gm"
    watt = OcrResult(300, 300, [box("48V250W", 10, 10, 100)])
    assert answers(watt, "wattage") == ["250.0 watt"] and answers(watt, "voltage") == ["48.0 volt"]


def test_loose_pass_does_not_repeat_strict_mentions() -> None:
    res = OcrResult(300, 300, [box("NetWt 16 oz", 10, 10, 120)])  # strict already reads it; loose adds nothing
    assert answers(res, "item_weight") == ["16.0 ounce"]


def test_weight_misreads_give_flagged_candidates() -> None:
    res = OcrResult(600, 600, [box("3G PER SERVING", 10, 10, 150), box("NET WT. 3.28 OZ (939)", 10, 60, 200),
                               box("25 Sachets - 50g -1.802", 10, 110, 220)])
    got = {(x.answer, x.extra.get("loose", 0.0)) for x in extract_candidates(res, "item_weight")}
    assert {("3.0 gram", 1.0), ("93.0 gram", 1.0), ("1.8 ounce", 1.0), ("3.28 ounce", 0.0),
            ("50.0 gram", 0.0)} <= got
    assert answers(OcrResult(300, 300, [box("3G PER SERVING", 10, 10, 150)]), "voltage") == []


def test_g_read_as_9_after_a_weight_declaration() -> None:
    below = OcrResult(600, 600, [box("Weight", 10, 10, 100, 30), box("5909", 10, 45, 80, 30)])
    c = extract_candidates(below, "item_weight")
    assert [(x.answer, x.boxes, x.extra.get("loose")) for x in c] == [("590.0 gram", [0, 1], 1.0)]
    same = OcrResult(600, 600, [box("NET WT: 1009", 10, 10, 150)])
    assert answers(same, "item_weight") == ["100.0 gram"]
    assert answers(OcrResult(600, 600, [box("Model 5909", 10, 10, 150)]), "item_weight") == []
    far = OcrResult(900, 900, [box("Weight", 10, 10, 100, 30), box("5909", 600, 700, 80, 30)])
    assert answers(far, "item_weight") == []
