"""Tests for utils.core.metrics: equality, the F1 counts per entity, range labels and the CLI."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from utils.core import metrics
from utils.core.metrics import F1Report, score, values_equal
from utils.core.units import normalize_prediction, parse_range, parse_value, unit_for_entity

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
    # the range label of row 20 is not a valid submission value: copied as a prediction it is an FP
    assert rep.table.loc["ALL", ["tp", "fp", "fn"]].tolist() == [6, 1, 0] and rep.invalid == 1
    keep = labels["index"] != 20
    rep = score(perfect[keep], labels[keep])
    assert rep.f1 == 1.0 and rep.f1_strict == 1.0 and rep.invalid == 0
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


# issue point 11: the metric and the sanity check agree on what a valid prediction is; every CLI failure is one line


@pytest.mark.parametrize(
    "entity,truth,prediction",
    [
        ("item_weight", "100000.0 gram", "1e5 gram"),  # an exponent: the sanity check's format error
        ("item_weight", "100000.0 gram", "1E+5 gram"),
        ("item_weight", "100000.0 gram", "100000.0 grams"),  # not the unit's full name
        ("item_weight", "1000.0 gram", "1,000 gram"),
        ("item_weight", "5.0 gram", "5.0\u00a0gram"),  # no-break space
        ("voltage", "[100.0, 240.0] volt", "[100.0, 240.0] volt"),  # a range is not a submission value
        ("voltage", "10 volt to 15 volt", "10 volt to 15 volt"),
        ("item_volume", "8.0 ounce", "8.0 ounce"),  # a unit not allowed for the entity (a noisy label)
        ("wattage", "5 horsepower", "5 horsepower"),
    ],
)
def test_a_prediction_the_sanity_check_rejects_never_scores_tp(entity, truth, prediction):
    from utils.core.sanity import check_submission
    from utils.core.submission_format import prediction_problem

    test = pd.DataFrame({"index": [1], "entity_name": [entity]})
    sub = pd.DataFrame({"index": [1], "prediction": [prediction]})
    assert [p.kind for p in check_submission(test, sub)] in (["format"], ["unit"])
    assert prediction_problem(prediction, entity) in ("format", "unit")
    rep = score(sub, pd.DataFrame({"index": [1], "entity_name": [entity], "entity_value": [truth]}))
    row = rep.rows.iloc[0]
    assert (row["outcome"], bool(row["valid"]), bool(row["correct"]), bool(row["correct_strict"])) == (
        "FP", False, False, False
    )
    assert rep.table.loc["ALL", ["tp", "fp", "fn"]].tolist() == [0, 1, 0] and rep.invalid == 1


def test_metric_and_sanity_agree_on_generated_predictions():
    """One definition: for every prediction, 'the sanity check accepts it' == 'the metric may score it TP'."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from utils.core.sanity import check_submission

    pieces = st.sampled_from(["5", "5.0", "-1.5", "1e5", ".5", "1,5", " ", "  ", "\t", "\u00a0", "gram", "grams",
                              "kilogram", "fluid ounce", "fluid  ounce", "ounce", "volt", "cm", "[", "]", ",", "x"])
    entities = st.sampled_from(["item_weight", "item_volume", "voltage", "width"])

    @settings(max_examples=300, deadline=None)
    @given(st.lists(pieces, max_size=5).map("".join), entities)
    def agree(prediction, entity):
        test = pd.DataFrame({"index": [1], "entity_name": [entity]})
        sub = pd.DataFrame({"index": [1], "prediction": [prediction]})
        accepted = check_submission(test, sub) == []
        # the label is the prediction itself: the metric scores TP exactly when the prediction is valid
        labels = pd.DataFrame({"index": [1], "entity_name": [entity], "entity_value": [prediction]})
        row = score(sub, labels).rows.iloc[0]
        assert bool(row["valid"]) == accepted, (prediction, entity)
        if prediction.strip():
            assert (row["outcome"] == "TP") == accepted, (prediction, entity)

    agree()


def _write(path: Path, data: bytes | str) -> Path:
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


LABELS_CSV = "index,entity_name,entity_value\n5,item_weight,100000.0 gram\n6,width,\n"


@pytest.mark.parametrize(
    "pred,message",
    [
        ("index,prediction\ninf,5 gram\n6,\n", "predictions: index 'inf' (row 1, CSV line 2) is not an integer"),
        ("index,prediction\n5,5 gram\n99999999999999999999,\n",
         "index '99999999999999999999' (row 2, CSV line 3) is out of range"),
        ("index,prediction\n5,5 gram\n1e5,\n", "index '1e5' (row 2, CSV line 3) is not an integer"),
        (b"index,prediction\n5,5 gram\n6,caf\xe9\n", "line 3, byte 6 of that line: not UTF-8"),
        ("index,prediction\n5,5 gram,\n6,,\n", "every such line ends in a comma"),
        ("index,prediction,\n5,5 gram,\n6,,\n", "every line ends in a comma"),
        ("", "empty file"),
        (None, "is a folder, not a CSV file"),
    ],
    ids=["inf", "20-digits", "exponent", "latin-1", "trailing-commas", "trailing-commas-header", "empty", "folder"],
)
def test_cli_bad_input_is_one_clear_line(tmp_path, pred, message):
    labels = _write(tmp_path / "l.csv", LABELS_CSV)
    bad = tmp_path / "p.csv"
    if pred is None:
        bad.mkdir()
    else:
        _write(bad, pred)
    calls = [([str(bad), str(labels)], "predictions")]
    if "index" not in message:  # a file-level problem: the same one line when the labels file has it
        calls.append(([str(_write(tmp_path / "ok.csv", "index,prediction\n5,5 gram\n")), str(bad)], "labels"))
    for args, role in calls:
        res = _run_cli(*args)
        assert res.returncode == 2, res.stdout + res.stderr
        assert res.stdout == "" and "Traceback" not in res.stderr
        err = res.stderr.strip()
        assert len(err.splitlines()) == 1 and err.startswith(f"error: {role}") and message in err, err


def test_cli_notes_invalid_predictions(tmp_path):
    labels = _write(tmp_path / "l.csv", LABELS_CSV)
    res = _run_cli(str(_write(tmp_path / "p.csv", "index,prediction\n5,1e5 gram\n6,\n")), str(labels))
    assert res.returncode == 0, res.stderr
    assert "note: 1 predictions are not valid submission values" in res.stdout and "'1e5 gram'" in res.stdout
    assert res.stdout.strip().splitlines()[-1] == "F1 0.000000"


# ---------------------------------------------------------------------------------------------------------------
# the real labels


def test_real_dev_labels_score_themselves_perfectly(amazon_dir, tmp_path):
    """Each dev label as its own prediction: TP exactly where the sanity check accepts the label as a submission
    value; the rest (range labels, a unit not allowed for the entity) are FP, and F1 is 1 without them."""
    from utils.core.submission_format import check_predictions

    labels = pd.read_csv(amazon_dir / "dev" / "labels.csv", dtype=str, keep_default_na=False)
    preds = labels[["index", "entity_value"]].rename(columns={"entity_value": "prediction"})
    valid = check_predictions(labels["entity_value"], labels["entity_name"]).valid
    filled = (labels["entity_value"].str.strip() != "").to_numpy()
    rep = score(preds, labels)
    assert rep.table.loc["ALL", ["tp", "fp", "fn"]].tolist() == [int((valid & filled).sum()), int((~valid).sum()), 0]
    assert 0 < (~valid).sum() < 20  # the 8 range labels and one 'ounce' for item_volume
    preds[valid].to_csv(tmp_path / "p.csv", index=False)
    labels[valid].to_csv(tmp_path / "l.csv", index=False)
    res = _run_cli(str(tmp_path / "p.csv"), str(tmp_path / "l.csv"))
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
