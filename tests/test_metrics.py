"""Tests for utils.metrics: equality, the F1 counts per entity, range labels and the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from utils import metrics
from utils.metrics import F1Report, score, values_equal
from utils.units import normalize_prediction, parse_range, parse_value, unit_for_entity

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------------------------
# values_equal


@pytest.mark.parametrize(
    "pred,truth",
    [
        ("500 gram", "500.0 gram"),
        ("500.0 gram", "500 gram"),
        (" 500.0  gram ", "500.0 gram"),
        ("0.709 kilogram", "0.7090 kilogram"),
        ("222233333444444550000.0 gram", "2.2223333344444455e+20 gram"),
        ("100.0 volt", "[100.0, 240.0] volt"),
        ("240.0 volt", "[100.0, 240.0] volt"),
        ("15.0 kilogram", "10 kilogram to 15 kilogram"),
        ("10 kilogram", "10 kilogram to 15 kilogram"),
        ("[100.0, 240.0] volt", "[100, 240] volt"),
        ("5 horsepower", "5.0 horsepower"),
    ],
)
def test_values_equal(pred, truth):
    assert values_equal(pred, truth)


@pytest.mark.parametrize(
    "pred,truth",
    [
        ("500.0 gram", "500.0 kilogram"),
        ("500.1 gram", "500.0 gram"),
        ("500 g", "500.0 gram"),
        ("8.0 fluid ounce", "8.0 ounce"),
        ("", "500.0 gram"),
        ("500.0 gram", ""),
        ("", ""),
        ("170.0 volt", "[100.0, 240.0] volt"),
        ("100.0 kilovolt", "[100.0, 240.0] volt"),
        ("12.0 kilogram", "10 kilogram to 15 kilogram"),
        ("garbage", "500.0 gram"),
    ],
)
def test_values_not_equal(pred, truth):
    assert not values_equal(pred, truth)


def test_range_match_none_never_matches_a_range_label():
    assert values_equal("240.0 volt", "[100.0, 240.0] volt", range_match="endpoint")
    assert not values_equal("240.0 volt", "[100.0, 240.0] volt", range_match="none")
    assert values_equal("500 gram", "500.0 gram", range_match="none")
    with pytest.raises(ValueError, match="range_match"):
        values_equal("1 volt", "1 volt", range_match="any")


def test_unparsable_truth_compares_as_text():
    assert values_equal("some odd label", "some  odd label")
    assert not values_equal("500.0 gram", "about 500 grams")


# ---------------------------------------------------------------------------------------------------------------
# score


def _frames(rows: list[tuple[int, str, str, str]]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(index, entity, truth, prediction) rows to the two frames score() takes."""
    labels = pd.DataFrame([(i, e, t) for i, e, t, _ in rows], columns=["index", "entity_name", "entity_value"])
    preds = pd.DataFrame([(i, p) for i, _, _, p in rows], columns=["index", "prediction"])
    return preds, labels


CASES = [
    # index, entity, truth, prediction           -> outcome (parsed) / strict
    (10, "item_weight", "500.0 gram", "500.0 gram"),  # TP / TP
    (11, "item_weight", "500 gram", "500.0 gram"),  # TP / FP (strings differ)
    (12, "item_weight", "500.0 gram", "5.0 gram"),  # FP / FP
    (13, "item_weight", "500.0 gram", ""),  # FN / FN
    (14, "item_weight", "", "5.0 gram"),  # FP / FP
    (15, "item_weight", "", ""),  # TN / TN
    (20, "voltage", "[100.0, 240.0] volt", "240.0 volt"),  # TP / FP (range)
    (21, "voltage", "12.0 volt", "12.0 volt"),  # TP / TP
    (22, "voltage", "12.0 volt", ""),  # FN / FN
]


def test_score_counts_per_entity_and_overall():
    preds, labels = _frames(CASES)
    rep = score(preds, labels)
    assert isinstance(rep, F1Report)
    t = rep.table
    assert list(t.columns) == ["n", "tp", "fp", "fn", "precision", "recall", "f1", "f1_strict"]
    assert list(t.index) == ["item_weight", "voltage", "ALL"]
    assert t.loc["item_weight", ["n", "tp", "fp", "fn"]].tolist() == [6, 2, 2, 1]
    assert t.loc["voltage", ["n", "tp", "fp", "fn"]].tolist() == [3, 2, 0, 1]
    assert t.loc["ALL", ["n", "tp", "fp", "fn"]].tolist() == [9, 4, 2, 2]
    p, r = 4 / 6, 4 / 6
    assert rep.f1 == pytest.approx(2 * p * r / (p + r))
    assert t.loc["item_weight", "precision"] == pytest.approx(0.5)
    assert t.loc["item_weight", "recall"] == pytest.approx(2 / 3)
    # strict: only rows 10 and 21 are TP; row 11 and 20 become FP
    ps, rs = 2 / 6, 2 / 4
    assert rep.f1_strict == pytest.approx(2 * ps * rs / (ps + rs))
    assert t.loc["voltage", "f1_strict"] == pytest.approx(2 * 0.5 * 0.5 / 1.0)


def test_score_rows_frame():
    preds, labels = _frames(CASES)
    rows = score(preds, labels).rows.set_index("index")
    assert rows.loc[[10, 11, 12, 13, 14, 15, 20], "outcome"].tolist() == ["TP", "TP", "FP", "FN", "FP", "TN", "TP"]
    assert rows["correct"].dtype == bool
    assert rows.loc[[10, 11, 12, 13, 14, 15], "correct"].tolist() == [True, True, False, False, False, True]
    assert rows.loc[[10, 11, 20], "correct_strict"].tolist() == [True, False, False]
    assert {"entity_name", "entity_value", "prediction"} <= set(rows.columns)


def test_score_range_match_none_turns_range_hits_into_false_positives():
    preds, labels = _frames(CASES)
    rep = score(preds, labels, range_match="none")
    assert rep.table.loc["voltage", ["tp", "fp", "fn"]].tolist() == [1, 1, 1]


def test_score_perfect_and_empty():
    preds, labels = _frames(CASES)
    perfect = preds.assign(prediction=labels["entity_value"])
    rep = score(perfect, labels)
    assert rep.f1 == 1.0 and rep.f1_strict == 1.0
    empty = preds.assign(prediction="")
    rep = score(empty, labels)
    assert rep.f1 == 0.0
    assert rep.table.loc["ALL", "fn"] == 7


def test_score_missing_and_extra_predictions():
    preds, labels = _frames(CASES)
    preds = preds[preds["index"] != 10]  # 10 lost: scored as empty -> FN
    preds = pd.concat([preds, pd.DataFrame({"index": [999], "prediction": ["1.0 gram"]})])  # not in labels: ignored
    rep = score(preds, labels)
    assert (rep.missing, rep.extra) == (1, 1)
    assert rep.table.loc["ALL", ["n", "tp", "fp", "fn"]].tolist() == [9, 3, 2, 3]


def test_score_accepts_string_indices_and_nan_predictions():
    preds, labels = _frames(CASES)
    preds = preds.astype({"index": str})
    preds.loc[preds["index"] == "13", "prediction"] = float("nan")
    rep = score(preds, labels)
    assert rep.table.loc["ALL", "tp"] == 4


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda p, l: (p.drop(columns="prediction"), l), "predictions: missing column"),
        (lambda p, l: (p, l.drop(columns="entity_name")), "labels: missing column"),
        (lambda p, l: (pd.concat([p, p.head(1)]), l), "predictions: index 10 appears more than once"),
        (lambda p, l: (p, pd.concat([l, l.head(1)])), "labels: index 10 appears more than once"),
        (lambda p, l: (p.assign(index="x"), l), "not an integer"),
    ],
)
def test_score_rejects_bad_frames(mutate, match):
    preds, labels = mutate(*_frames(CASES))
    with pytest.raises(ValueError, match=match):
        score(preds, labels)


def test_score_rejects_unknown_range_match():
    with pytest.raises(ValueError, match="range_match"):
        score(*_frames(CASES), range_match="either")


# ---------------------------------------------------------------------------------------------------------------
# CLI


def _run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "utils.metrics", *args], cwd=REPO, capture_output=True, text=True, timeout=120
    )


def test_cli_prints_table_and_last_line_f1(tmp_path):
    preds, labels = _frames(CASES)
    preds.to_csv(tmp_path / "p.csv", index=False)
    labels.to_csv(tmp_path / "l.csv", index=False)
    res = _run_cli(str(tmp_path / "p.csv"), str(tmp_path / "l.csv"))
    assert res.returncode == 0, res.stderr
    lines = res.stdout.strip().splitlines()
    name, value = lines[-1].split()
    assert name == "F1"
    assert float(value) == pytest.approx(score(preds, labels).f1, abs=1e-6)
    assert any(line.startswith("item_weight") for line in lines)
    assert any(line.startswith("ALL") for line in lines)
    res = _run_cli(str(tmp_path / "p.csv"), str(tmp_path / "l.csv"), "--range-match", "none")
    assert float(res.stdout.strip().splitlines()[-1].split()[1]) == pytest.approx(
        score(preds, labels, range_match="none").f1, abs=1e-6
    )


def test_cli_errors_exit_nonzero(tmp_path):
    res = _run_cli(str(tmp_path / "missing.csv"), str(tmp_path / "also_missing.csv"))
    assert res.returncode == 2
    assert "not found" in res.stderr
    pd.DataFrame({"index": [1], "oops": ["x"]}).to_csv(tmp_path / "p.csv", index=False)
    pd.DataFrame({"index": [1], "entity_name": ["voltage"], "entity_value": ["1 volt"]}).to_csv(
        tmp_path / "l.csv", index=False
    )
    res = _run_cli(str(tmp_path / "p.csv"), str(tmp_path / "l.csv"))
    assert res.returncode == 2
    assert "missing column(s) prediction" in res.stderr


# ---------------------------------------------------------------------------------------------------------------
# the real labels


def test_real_dev_labels_score_themselves_perfectly(amazon_dir, tmp_path):
    labels = pd.read_csv(amazon_dir / "dev" / "labels.csv", dtype=str, keep_default_na=False)
    preds = labels[["index", "entity_value"]].rename(columns={"entity_value": "prediction"})
    preds.to_csv(tmp_path / "p.csv", index=False)
    res = _run_cli(str(tmp_path / "p.csv"), str(amazon_dir / "dev" / "labels.csv"))
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip().splitlines()[-1] == "F1 1.000000"


def test_normalized_real_labels_score_as_their_labels(amazon_dir):
    """Cleaning each real label and scoring it against itself: only labels whose unit no answer may use are lost."""
    train = pd.read_csv(amazon_dir / "train.csv", dtype=str, keep_default_na=False)
    labels = train[["entity_name", "entity_value"]].rename_axis("index").reset_index()
    preds = pd.DataFrame(
        {
            "index": labels["index"],
            "prediction": [normalize_prediction(e, v) for e, v in zip(labels["entity_name"], labels["entity_value"])],
        }
    )
    rep = score(preds, labels)
    units_written = [
        (parse_value(v) or parse_range(v) or (None, ""))[-1] for v in labels["entity_value"]
    ]  # fmt: skip
    fits = [unit_for_entity(u, e) for u, e in zip(units_written, labels["entity_name"])]
    # item_volume labels written "ounce" clean to "fluid ounce", which the metric (exact units) does not equate
    exact = sum(f is not None and f == u for f, u in zip(fits, units_written))
    renamed = sum(f is not None and f != u for f, u in zip(fits, units_written))
    unusable = sum(f is None for f in fits)
    t = rep.table.loc["ALL"]
    assert (t["tp"], t["fp"], t["fn"]) == (exact, renamed, unusable)
    assert rep.f1 > 0.99
    assert metrics.RANGE_MATCH == "endpoint"
