"""The evaluation report on fake predictions: bar chart, worst mistakes, gallery, browser, report.md."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from utils.core.metrics import score
from utils.pipeline import gallery, outcomes, report

LINK = "https://demo.invalid/images/{}.jpg"


@pytest.fixture()
def case(tmp_path: Path) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame, Path]:
    """Test rows, labels and predictions with every kind of outcome; images for all but one row."""
    image_dir = tmp_path / "images"
    image_dir.mkdir()
    rows = [  # index, entity, truth, prediction
        (10, "item_weight", "500.0 gram", "500.0 gram"),  # correct
        (12, "item_weight", "16.0 ounce", "454.0 gram"),  # wrong value, other unit
        (15, "width", "30.0 centimetre", "31.0 centimetre"),  # wrong value, 3% off
        (17, "width", "20.0 centimetre", "80.0 centimetre"),  # wrong value, 300% off
        (21, "voltage", "12.0 volt", ""),  # missed
        (22, "wattage", "", "100.0 watt"),  # false alarm
        (30, "wattage", "", ""),  # correct (both empty)
        (31, "voltage", "230.0 volt", "230.0 volt"),  # correct
    ]
    test = pd.DataFrame(
        {"index": [r[0] for r in rows], "image_link": [LINK.format(f"x{r[0]}") for r in rows],
         "group_id": 1, "entity_name": [r[1] for r in rows]}
    )
    labels = test[["index", "entity_name"]].assign(entity_value=[r[2] for r in rows])
    predictions = pd.DataFrame({"index": test["index"], "prediction": [r[3] for r in rows]})
    for number, link in enumerate(test["image_link"][:-1]):
        Image.new("RGB", (60, 40), (number * 30, 100, 200)).save(image_dir / link.rsplit("/", 1)[-1])
    return test, labels, predictions, image_dir


def test_worst_mistakes_order(case) -> None:  # type: ignore[no-untyped-def]
    test, labels, predictions, _ = case
    result = score(predictions, labels)
    worst = outcomes.worst_mistakes(outcomes.normalize_rows(result.rows, test), n=10)
    assert list(worst["index"]) == [12, 17, 15, 21, 22]
    assert list(worst["kind"]) == ["wrong value"] * 3 + ["missed", "false alarm"]
    assert list(outcomes.worst_mistakes(result.rows, n=2)["index"]) == [12, 17]


def test_mistake_kind() -> None:
    assert outcomes.mistake_kind("1.0 volt", "2.0 volt") == "wrong value"
    assert outcomes.mistake_kind("", "2.0 volt") == "missed"
    assert outcomes.mistake_kind("1.0 volt", "") == "false alarm"


def test_normalize_rows_joins_links_and_rejects_bad_input(case) -> None:  # type: ignore[no-untyped-def]
    test, labels, predictions, _ = case
    rows = outcomes.normalize_rows(score(predictions, labels).rows, test)
    assert set(outcomes.ROW_COLUMNS) <= set(rows.columns) and "image_link" in rows.columns
    assert rows.set_index("index").loc[17, "image_link"] == LINK.format("x17")
    with pytest.raises(ValueError, match="prediction"):
        outcomes.normalize_rows(pd.DataFrame({"index": [1], "entity_value": ["1.0 volt"]}))


def test_plot_f1_writes_a_png(case, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    test, labels, predictions, _ = case
    table = score(predictions, labels).table
    path = report.plot_f1(table, tmp_path / "plots" / "f1.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 300
    frame = report.f1_by_entity(table)
    assert frame["entity"].iloc[-1] == "ALL"
    per_entity = frame["f1"].iloc[:-1].tolist()
    assert per_entity == sorted(per_entity, reverse=True)


def test_write_report(case, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    test, labels, predictions, image_dir = case
    result = score(predictions, labels)
    files = report.write_report(tmp_path / "out", result, test, image_dir, n_worst=3)
    text = files.report_md.read_text()
    assert f"{result.f1:.4f}" in text
    for entity in ("item_weight", "width", "voltage", "wattage", "ALL"):
        assert f"| {entity} |" in text
    assert "Worst mistakes (3)" in text and "| 12 | item_weight | wrong value |" in text
    assert "| 21 |" not in text  # only the 3 worst
    for png in (files.f1_png, files.mistakes_png):
        assert png is not None
        with Image.open(png) as image:
            assert image.format == "PNG"
    table = pd.read_csv(files.table_csv)
    assert "ALL" in set(table["entity_name"])
    gallery = files.gallery_html.read_text()
    assert gallery.count("data:image/jpeg;base64,") == len(test) - 1
    assert "image not available" in gallery  # the one row without an image


def test_gallery_puts_mistakes_first(case) -> None:  # type: ignore[no-untyped-def]
    test, labels, predictions, image_dir = case
    html = gallery.gallery_html(score(predictions, labels).rows, image_dir, max_rows=5)
    assert "5 of 8 rows" in html
    assert html.count("#d62728") == 5  # the five mistakes, no correct row


def test_browser_static_fallback(case) -> None:  # type: ignore[no-untyped-def]
    test, labels, predictions, image_dir = case
    shown = gallery.browser(outcomes.normalize_rows(score(predictions, labels).rows, test), image_dir, interactive=False)
    assert "data:image/jpeg;base64," in shown.data


def test_browser_widgets(case) -> None:  # type: ignore[no-untyped-def]
    pytest.importorskip("ipywidgets")
    test, labels, predictions, image_dir = case
    box = gallery.browser(outcomes.normalize_rows(score(predictions, labels).rows, test), image_dir, interactive=True)
    (show, slider), picture, caption = box.children[0].children, box.children[1], box.children[2]
    assert "#10" in caption.value and picture.value[:2] == b"\xff\xd8"  # first row by index, a JPEG
    show.value = "mistakes"
    assert slider.max == 4 and "#12" in caption.value and "wrong value" in caption.value
    slider.value = 3
    assert "#21" in caption.value and "missed" in caption.value
    show.value = "correct"
    assert slider.max == 2 and "correct" in caption.value


def test_unit_confusion_counts_answered_against_labelled_units(case) -> None:  # type: ignore[no-untyped-def]
    test, labels, predictions, _ = case
    conf = report.unit_confusion(score(predictions, labels).rows)
    cell = conf.set_index(["entity_name", "label_unit", "answer_unit"])["n"]
    assert cell[("item_weight", "gram", "gram")] == 1
    assert cell[("item_weight", "ounce", "gram")] == 1  # "16.0 ounce" answered in grams
    assert cell[("width", "centimetre", "centimetre")] == 2
    assert cell[("voltage", "volt", report.NO_UNIT)] == 1  # missed
    assert "wattage" not in set(conf["entity_name"])  # its labels are empty: no labelled unit
    assert int(conf["n"].sum()) == 6


def test_write_report_shows_the_unit_confusion(case, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    test, labels, predictions, image_dir = case
    files = report.write_report(tmp_path / "out", score(predictions, labels), test, image_dir, n_worst=0)
    assert files.units_png is not None and files.units_png.name in files.report_md.read_text()
    with Image.open(files.units_png) as image:
        assert image.format == "PNG" and image.width > 300
    nothing = labels.assign(entity_value="")
    assert report.plot_unit_confusion(score(predictions, nothing).rows, tmp_path / "none.png") is None


def test_a_hostile_image_never_fails_a_display(case, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A tiny PNG claiming 50000x50000 pixels in the image folder: the grids, the report and the notebook's shard
    display show "image not available" (the gallery's thumbnail let ``DecompressionBombError`` through, which failed
    the shard notebook after its done marker, on every rerun)."""
    from tests.test_images import _bomb_png
    from utils.pipeline import show
    from utils.pipeline.stages import ShardDone

    test, labels, predictions, images = case
    for link in test["image_link"]:
        (images / link.rsplit("/", 1)[1]).write_bytes(_bomb_png())
    rows = outcomes.normalize_rows(score(predictions, labels).rows, test)
    gallery.image_grid(rows, images, [""] * len(rows))
    report.write_report(tmp_path / "out", score(predictions, labels), test, images)
    shard_rows = test.assign(prediction="1.0 gram", raw="1 g")
    show.shard(ShardDone(tmp_path / "shard.csv", shard_rows, images))


def test_the_report_counts_the_rows_answered_without_an_image(  # type: ignore[no-untyped-def]
        case, tmp_path: Path) -> None:
    test, labels, predictions, images = case  # the last row (index 31, answered) has no image
    files = report.write_report(tmp_path / "out", score(predictions, labels), test, images)
    text = files.report_md.read_text()
    assert f"Rows without an image in {images}: 1 of 8, 1 of them answered anyway" in text
    (images / test["image_link"].iloc[-1].rsplit("/", 1)[1]).mkdir()  # a folder is no image either
    assert "1 of 8" in report.write_report(tmp_path / "o2", score(predictions, labels), test, images
                                           ).report_md.read_text()
