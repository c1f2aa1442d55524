"""utils.sanity: the challenge's submission check, stricter, and its CLI (on the real test set when present)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from utils.data import load_test
from utils.sanity import Problem, check_submission, main
from utils.units import ENTITY_UNIT_MAP, format_value, normalize_prediction

REPO = Path(__file__).resolve().parents[1]

TEST = pd.DataFrame(
    {
        "index": [10, 3, 42, 7, 99],
        "image_link": [f"https://x/{i}.jpg" for i in range(5)],
        "group_id": [1, 2, 3, 4, 5],
        "entity_name": ["width", "item_weight", "voltage", "item_volume", "wattage"],
    }
)
GOOD = ["12.5 centimetre", "500.0 gram", "", "8.0 fluid ounce", "60 watt"]


def preds(values: list[str] | None = None, index: list | None = None) -> pd.DataFrame:
    return pd.DataFrame({"index": TEST["index"].tolist() if index is None else index, "prediction": values or GOOD})


def kinds(problems: list[Problem]) -> list[tuple[int | None, str]]:
    return [(p.index, p.kind) for p in problems]


def test_valid_submission_has_no_problems() -> None:
    assert check_submission(TEST, preds()) == []
    assert check_submission(TEST, preds([""] * 5)) == []
    shuffled = preds().sample(frac=1.0, random_state=0)  # row order does not matter, only the index
    assert check_submission(TEST, shuffled) == []


def test_challenge_leniencies_are_kept() -> None:
    # the challenge stripped values and allowed integers, negatives and runs of spaces before the unit
    values = ["  12 centimetre ", "-1.5   gram", "", "8.0 fluid ounce", "60 watt"]
    assert check_submission(TEST, preds(values)) == []
    with_nan = preds().astype(object)
    with_nan.loc[2, "prediction"] = np.nan  # NaN (what pandas reads for an empty cell) means empty
    assert check_submission(TEST, with_nan) == []


BAD_FORMATS = ["12.5centimetre", "12,5 centimetre", "centimetre", "12.5", "1e5 centimetre", "12.5 cm.",
               "about 12 centimetre", "12.5 centimetre/inch", "nan", "12.5\u00a0centimetre"]


@pytest.mark.parametrize("value", BAD_FORMATS)
def test_bad_format(value: str) -> None:
    problems = check_submission(TEST, preds([value] + GOOD[1:]))
    assert kinds(problems) == [(10, "format")]
    assert "line 2" in problems[0].detail and repr(value.strip()) in problems[0].detail


@pytest.mark.parametrize(
    ("pos", "value"),
    [(0, "12.5 gram"), (0, "12.5 cm"), (0, "12.5 centimeter"), (1, "5.0 volt"), (3, "8.0 ounce"),
     (4, "1.0 horsepower")],
)
def test_unit_not_allowed_for_that_entity(pos: int, value: str) -> None:
    values = list(GOOD)
    values[pos] = value
    problems = check_submission(TEST, preds(values))
    assert kinds(problems) == [(int(TEST["index"][pos]), "unit")]
    assert TEST["entity_name"][pos] in problems[0].detail


def test_missing_duplicate_extra_and_bad_index() -> None:
    p = pd.DataFrame(
        {
            "index": ["10", "3", "3", "1000", "7", "seven", "42"],
            "prediction": ["12.5 centimetre", "500.0 gram", "600.0 gram", "1.0 gram", "", "", ""],
        }
    )
    problems = check_submission(TEST, p)
    assert kinds(problems) == [(3, "duplicate"), (1000, "extra"), (None, "index"), (99, "missing")]
    assert "line 4" in problems[0].detail and "line 5" in problems[1].detail and "'seven'" in problems[2].detail


@pytest.mark.parametrize(
    ("columns", "fatal"),
    [(["index", "predictions"], True), (["idx", "prediction"], True), (["index", "prediction", "entity_name"], False)],
)
def test_wrong_columns(columns: list[str], fatal: bool) -> None:
    # plus a duplicate row: reported only when the columns can be read
    p = preds(GOOD[:4] + ["1.0 cup"], index=[10, 3, 42, 7, 7])
    for extra in columns[2:]:
        p[extra] = "x"
    p.columns = columns
    problems = check_submission(TEST, p)
    assert problems[0].kind == "columns" and problems[0].index is None
    assert kinds(problems[1:]) == ([] if fatal else [(7, "duplicate"), (99, "missing")])


def test_normalized_answers_always_pass() -> None:
    """Whatever normalize_prediction makes of an answer is accepted for that entity."""
    rows, answers = [], []
    for entity, units in ENTITY_UNIT_MAP.items():
        for unit in sorted(units):
            for raw in (format_value(3.25, unit), f"The {entity} is 1,5 {unit}s.", f"{unit} 7", "N/A"):
                rows.append(entity)
                answers.append(normalize_prediction(entity, raw))
    test = pd.DataFrame({"index": range(len(rows)), "entity_name": rows})
    assert check_submission(test, pd.DataFrame({"index": range(len(rows)), "prediction": answers})) == []
    assert sum(a != "" for a in answers) >= len(rows) // 4


# --- CLI -------------------------------------------------------------------------------------------------------------


def _cli(test_csv: Path, pred_csv: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "utils.sanity", str(test_csv), str(pred_csv)],
        cwd=REPO, capture_output=True, text=True, timeout=120,
    )


def test_cli_in_process(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    test_csv = tmp_path / "test.csv"
    TEST.to_csv(test_csv, index=False)
    good, bad = tmp_path / "good.csv", tmp_path / "bad.csv"
    preds().to_csv(good, index=False)
    preds(["1 inch", "2 gram", "3 volt", "4 cup", "5 cup"], index=[10, 3, 42, 7, 7]).to_csv(bad, index=False)
    assert main([str(test_csv), str(good)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 1 and out[0].startswith("OK") and "4 non-empty" in out[0]
    assert main([str(test_csv), str(bad)]) == 1
    out = capsys.readouterr().out
    assert "2 problems (duplicate: 1, missing: 1)" in out and "index 7: duplicate" in out and "index 99: missing" in out
    assert main([str(test_csv), str(tmp_path / "nope.csv")]) == 2


@pytest.fixture(scope="module")
def real(amazon_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame, Path]:
    test_csv = amazon_dir / "test.csv"
    test = load_test(test_csv)
    empty = tmp_path_factory.mktemp("sanity") / "all_empty.csv"
    pd.DataFrame({"index": test["index"], "prediction": ""}).to_csv(empty, index=False)
    return test_csv, test, empty


def test_real_all_empty_submission_is_valid_and_fast(real: tuple[Path, pd.DataFrame, Path]) -> None:
    test_csv, test, empty = real
    start = time.perf_counter()
    result = _cli(test_csv, empty)
    wall = time.perf_counter() - start
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 1 and "131187 rows" in lines[0], lines
    assert wall < 10.0, f"CLI took {wall:.2f}s"  # ~1 s including interpreter and pandas start-up
    preds_df = pd.read_csv(empty, dtype=str, keep_default_na=False)
    start = time.perf_counter()
    assert check_submission(test, preds_df) == []
    assert time.perf_counter() - start < 2.0


def _mutate(kind: str, sub: pd.DataFrame, test: pd.DataFrame) -> tuple[pd.DataFrame, str]:
    """One bad submission of the given kind, and what the CLI output must mention."""
    sub = sub.copy()
    if kind == "missing":
        return sub.drop(index=500), f"index {sub['index'][500]}: missing"
    if kind == "duplicate":
        return pd.concat([sub, sub.iloc[[7]]]), f"index {sub['index'][7]}: duplicate"
    if kind == "extra":
        return pd.concat([sub, pd.DataFrame({"index": [10**9], "prediction": [""]})]), f"index {10**9}: extra"
    if kind == "format":
        sub.loc[3, "prediction"] = "12,5cm"
        return sub, f"index {sub['index'][3]}: format"
    if kind == "unit":
        row = int(np.flatnonzero(test["entity_name"].to_numpy() == "width")[0])
        sub.loc[row, "prediction"] = "5.0 gram"
        return sub, f"index {sub['index'][row]}: unit: line {row + 2}: unit 'gram' is not allowed for width"
    if kind == "columns":
        return sub.rename(columns={"prediction": "entity_value"}), "file: columns"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["missing", "duplicate", "extra", "format", "unit", "columns"])
def test_real_cli_rejects_each_kind(real: tuple[Path, pd.DataFrame, Path], tmp_path: Path, kind: str) -> None:
    test_csv, test, empty = real
    sub = pd.read_csv(empty, dtype=str, keep_default_na=False)
    bad, expect = _mutate(kind, sub, test)
    path = tmp_path / f"{kind}.csv"
    bad.to_csv(path, index=False)
    result = _cli(test_csv, path)
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout.startswith("INVALID") and f"{kind}: 1" in result.stdout.splitlines()[0]
    assert expect in result.stdout, result.stdout
