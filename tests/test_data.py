"""utils.data.tables: loading with row-level validation errors, balanced sampling, group split, the prompt."""

from __future__ import annotations

import time
from pathlib import Path

import pandas as pd
import pytest

import utils.data.tables as data
from utils.core.units import ENTITIES
from utils.data.tables import (
    DataValidationError,
    balanced_sample,
    group_split,
    label_ok,
    label_unit_allowed,
    label_units,
    load_test,
    load_train,
    make_prompt,
)

TRAIN_ROWS = [
    ("https://m.media-amazon.com/images/I/a.jpg", "748919", "item_weight", "500.0 gram"),
    ("https://m.media-amazon.com/images/I/b.jpg", "916768", "item_volume", "1.0 cup"),
    ("https://m.media-amazon.com/images/I/c.jpg", "459516", "voltage", "[100.0, 240.0] volt"),
    ("https://m.media-amazon.com/images/I/d.jpg", "459516", "item_weight", "10 kilogram to 15 kilogram"),
    ("https://m.media-amazon.com/images/I/e.jpg", "675317", "wattage", ""),
]
TEST_ROWS = [
    ("0", "https://m.media-amazon.com/images/I/a.jpg", "156839", "height"),
    ("7", "https://m.media-amazon.com/images/I/b.jpg", "792578", "width"),
    ("3", "https://m.media-amazon.com/images/I/c.jpg", "792578", "depth"),
]


def write_csv(path: Path, header: list[str], rows: list[tuple]) -> Path:
    pd.DataFrame(rows, columns=header).to_csv(path, index=False)
    return path


def make_train_csv(tmp_path: Path, rows: list[tuple] = TRAIN_ROWS, header: list[str] | None = None) -> Path:
    return write_csv(tmp_path / "train.csv", header or list(data.TRAIN_COLUMNS), rows)


def make_test_csv(tmp_path: Path, rows: list[tuple] = TEST_ROWS, header: list[str] | None = None) -> Path:
    return write_csv(tmp_path / "test.csv", header or list(data.TEST_COLUMNS), rows)


# --- loading ---------------------------------------------------------------------------------------------------------


def test_load_train_keeps_text_labels(tmp_path: Path) -> None:
    df = load_train(make_train_csv(tmp_path))
    assert list(df.columns) == list(data.TRAIN_COLUMNS)
    assert df["entity_value"].tolist() == [r[3] for r in TRAIN_ROWS]  # "" stays "", never NaN
    assert df["group_id"].dtype == "int64"


def test_load_train_keeps_an_index_column(tmp_path: Path) -> None:
    rows = [(str(10 + k), *r) for k, r in enumerate(TRAIN_ROWS)]
    df = load_train(write_csv(tmp_path / "t.csv", ["index", *data.TRAIN_COLUMNS], rows))
    assert df["index"].tolist() == [10, 11, 12, 13, 14]


def test_load_test_types(tmp_path: Path) -> None:
    df = load_test(make_test_csv(tmp_path))
    assert list(df.columns) == list(data.TEST_COLUMNS)
    assert df["index"].dtype == "int64" and df["index"].tolist() == [0, 7, 3]


def _bad_train(column: int, value: str, line: int = 4) -> list[tuple]:
    rows = [list(r) for r in TRAIN_ROWS]
    rows[line - 2][column] = value
    return [tuple(r) for r in rows]


@pytest.mark.parametrize(
    ("column", "value", "problem"),
    [
        (2, "colour", "unknown entity_name"),
        (0, "", "empty image_link"),
        (0, "   ", "empty image_link"),
        (1, "", "empty group_id"),
        (3, "heavy", "unparsable entity_value"),
        (3, "12", "unparsable entity_value"),
        (3, "[1.0, x] volt", "unparsable entity_value"),
    ],
)
def test_train_errors_name_file_line_and_problem(tmp_path: Path, column: int, value: str, problem: str) -> None:
    path = make_train_csv(tmp_path, _bad_train(column, value))
    with pytest.raises(DataValidationError) as err:
        load_train(path)
    msg = str(err.value)
    assert str(path) in msg and "line 4:" in msg and problem in msg
    assert "more rows" not in msg


def test_error_counts_further_rows(tmp_path: Path) -> None:
    rows = [r[:2] + ("weight",) + r[3:] for r in TRAIN_ROWS]
    expect = r"line 2: unknown entity_name.*'weight' \(and 4 more rows.*lines 3, 4, 5\)"
    with pytest.raises(DataValidationError, match=expect):
        load_train(make_train_csv(tmp_path, rows))


def test_missing_columns(tmp_path: Path) -> None:
    path = make_train_csv(tmp_path, [r[:3] for r in TRAIN_ROWS], header=["image_link", "group_id", "entity_name"])
    with pytest.raises(DataValidationError, match=r"train\.csv: line 1 \(header\): missing column\(s\) entity_value"):
        load_train(path)
    path = make_test_csv(tmp_path, [r[1:] for r in TEST_ROWS], header=["image_link", "group_id", "entity_name"])
    with pytest.raises(DataValidationError, match=r"test\.csv: line 1 \(header\): missing column\(s\) index"):
        load_test(path)


def test_duplicate_test_index(tmp_path: Path) -> None:
    rows = TEST_ROWS + [("7", "https://x/y.jpg", "1", "width")]
    with pytest.raises(DataValidationError, match=r"test\.csv: line 5: duplicate index \(first seen on line 3\): '7'"):
        load_test(make_test_csv(tmp_path, rows))


def test_non_integer_test_index(tmp_path: Path) -> None:
    rows = TEST_ROWS + [("7.5", "https://x/y.jpg", "1", "width")]
    with pytest.raises(DataValidationError, match=r"line 5: index is not an integer: '7.5'"):
        load_test(make_test_csv(tmp_path, rows))


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(DataValidationError, match="file not found"):
        load_test(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataValidationError, match="not a readable CSV"):
        load_train(tmp_path / "empty.csv")


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("", True),
        ("500 gram", True),
        ("500.0 gram", True),
        ("[100.0, 240.0] volt", True),
        ("10 kilogram to 15 kilogram", True),
        ("0 kilogram to 2kilogram", True),
        ("2.2223333344444455e+20 gram", True),
        ("5 horsepower", True),  # parsable; not allowed for wattage (see label_unit_allowed)
        ("gram", False),
        ("12", False),
        ("1,5 kg!", False),
    ],
)
def test_label_ok(value: str, ok: bool) -> None:
    assert label_ok(value) is ok


def test_label_units_and_allowed_mask() -> None:
    df = pd.DataFrame(
        {
            "entity_name": ["voltage", "wattage", "item_weight", "width", "item_volume"],
            "entity_value": ["[100.0, 240.0] volt", "5 horsepower", "10 kilogram to 15 kilogram", "", "2 fluid ounce"],
        }
    )
    assert label_units(df["entity_value"]).tolist() == ["volt", "horsepower", "kilogram", "", "fluid ounce"]
    assert label_unit_allowed(df).tolist() == [True, False, True, True, True]


def test_real_files_load_fast(amazon_dir: Path) -> None:
    start = time.perf_counter()
    train = load_train(amazon_dir / "train.csv")
    test = load_test(amazon_dir / "test.csv")
    elapsed = time.perf_counter() - start
    assert len(train) == 192_521 and len(test) == 131_187
    assert test["index"].is_unique and set(test["entity_name"]) <= set(ENTITIES)
    assert (train["entity_value"] != "").all()
    assert elapsed < 6.0, f"loading took {elapsed:.2f}s"  # ~0.6 s on an idle core
    # the real labels include ~1% ranges and a few hundred units outside their entity's list
    assert 0 < (~label_unit_allowed(train)).sum() < 0.01 * len(train)


# --- sampling and split ----------------------------------------------------------------------------------------------


def frame(counts: dict[str, dict[str, int]]) -> pd.DataFrame:
    """Rows per entity per unit, each with its own group id block."""
    rows = []
    for entity, units in counts.items():
        for unit, n in units.items():
            rows += [(f"u{len(rows) + k}", (len(rows) + k) // 3, entity, f"{k + 1} {unit}") for k in range(n)]
    return pd.DataFrame(rows, columns=list(data.TRAIN_COLUMNS))


def test_balanced_sample_same_number_per_entity_capped() -> None:
    df = frame({"width": {"centimetre": 50}, "voltage": {"volt": 8}, "wattage": {"watt": 30}})
    out = balanced_sample(df, per_entity=20, seed=3)
    assert out.groupby("entity_name").size().to_dict() == {"voltage": 8, "wattage": 20, "width": 20}
    assert out.index.is_unique
    pd.testing.assert_frame_equal(out, df.loc[out.index])  # original rows, original labels
    again = balanced_sample(df, per_entity=20, seed=3)
    pd.testing.assert_frame_equal(out, again)
    other = balanced_sample(df, per_entity=20, seed=4)
    assert set(other.index) != set(out.index)
    assert len(balanced_sample(df, per_entity=0)) == 0
    with pytest.raises(ValueError):
        balanced_sample(df, per_entity=-1)


def test_balanced_sample_units() -> None:
    df = frame({"item_weight": {"gram": 100, "ton": 5, "pound": 50}, "voltage": {"volt": 40}})
    plain = balanced_sample(df, per_entity=60, seed=0)
    out = balanced_sample(df, per_entity=60, seed=0, balance_units=True)
    assert out.groupby("entity_name").size().to_dict() == {"item_weight": 60, "voltage": 40}
    units = label_units(out.loc[out["entity_name"] == "item_weight", "entity_value"]).value_counts().to_dict()
    assert units == {"gram": 28, "pound": 27, "ton": 5}  # the rare unit gives all it has, the rest shared evenly
    plain_units = label_units(plain.loc[plain["entity_name"] == "item_weight", "entity_value"]).value_counts()
    assert plain_units.to_dict() != units  # plain sampling follows the data's skew instead


def test_group_split_keeps_groups_whole() -> None:
    df = frame({"width": {"centimetre": 300}, "height": {"inch": 301}})
    train, val = group_split(df, val_fraction=0.2, seed=1)
    assert set(train["group_id"]).isdisjoint(val["group_id"])
    assert len(train) + len(val) == len(df) and set(train.index) | set(val.index) == set(df.index)
    assert abs(len(val) - 0.2 * len(df)) <= 3  # groups of 3 rows: as close as whole groups allow
    again = group_split(df, val_fraction=0.2, seed=1)[1]
    assert val.index.tolist() == again.index.tolist()
    assert group_split(df, val_fraction=0.2, seed=2)[1].index.tolist() != val.index.tolist()
    assert len(group_split(df, val_fraction=0.0)[1]) == 0
    tiny = df.head(6)  # two groups: both sides get one even when the fraction asks for everything
    t, v = group_split(tiny, val_fraction=0.9)
    assert len(t) == 3 and len(v) == 3
    for bad in (-0.1, 1.0):
        with pytest.raises(ValueError):
            group_split(df, val_fraction=bad)


def test_real_train_sample_and_split(amazon_dir: Path) -> None:
    train = load_train(amazon_dir / "train.csv")
    sample = balanced_sample(train, per_entity=5000, seed=0, balance_units=True)
    sizes = sample.groupby("entity_name").size()
    assert sizes["maximum_weight_recommendation"] == 3252 and sizes["width"] == 5000
    tr, va = group_split(train, val_fraction=0.1, seed=0)
    assert set(tr["group_id"]).isdisjoint(va["group_id"])
    assert 0.05 < len(va) / len(train) < 0.15


# --- prompt ----------------------------------------------------------------------------------------------------------


def test_prompt_per_entity() -> None:
    assert make_prompt("item_weight") == "What is the item weight?"
    assert make_prompt("maximum_weight_recommendation") == "What is the maximum weight recommendation?"
    prompts = {make_prompt(e) for e in ENTITIES}
    assert len(prompts) == len(ENTITIES) and all("_" not in p for p in prompts)
    with pytest.raises(ValueError, match="unknown entity"):
        make_prompt("colour")


def test_prompt_template_is_the_one_place(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data, "PROMPT_TEMPLATE", "answer en {entity}")
    assert make_prompt("width") == "answer en width"
