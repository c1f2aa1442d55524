"""utils.core.sanity: the challenge's submission check, stricter, and its CLI (on the real test set when present)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from utils.core.sanity import Problem, check_submission
from utils.core.units import ENTITY_UNIT_MAP, format_value, normalize_prediction
from utils.data.tables import load_test
from utils.sanity import main

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


# --- issue point 11: bad files and indices give one clear line, never a traceback ------------------------------


@pytest.mark.parametrize(
    ("index", "reason"),
    [("99999999999999999999", "out of range"), (str(2**64 + 3), "out of range"), (str(2**63), "out of range"),
     ("inf", "not an integer"), ("1e5", "not an integer"), ("10.0", "not an integer"), ("", "not an integer")],
)
def test_index_that_does_not_fit_is_an_index_problem_never_wrapped(index: str, reason: str) -> None:
    # 2**64 + 3 used to wrap around to a negative number (or, in int64 arithmetic, to another row's index)
    values = GOOD + ["1.0 gram"]
    p = preds(values, index=[str(i) for i in TEST["index"]] + [index])
    problems = check_submission(TEST, p)
    assert kinds(problems) == [(None, "index")]
    assert f"line 7: index {index!r} {'is ' + reason if reason else ''}" in problems[0].detail
    big = str(2**63 - 1)  # the largest index that fits is fine (not in the test set: an extra row)
    assert kinds(check_submission(TEST, preds(values, index=list(TEST["index"]) + [big]))) == [(2**63 - 1, "extra")]


def _bytes_cli(tmp_path: Path, test: bytes | None, pred: bytes | None) -> subprocess.CompletedProcess:
    """Run the CLI on the given bytes (None: a folder at that path)."""
    paths = []
    for name, data in (("test.csv", test), ("pred.csv", pred)):
        path = tmp_path / name
        if data is None:
            path.mkdir()
        else:
            path.write_bytes(data)
        paths.append(path)
    return _cli(*paths)


def _test_bytes() -> bytes:
    return TEST.to_csv(index=False).encode()


def _pred_bytes(trailing: str = "") -> bytes:
    lines = ["index,prediction"] + [f"{i},{v}" for i, v in zip(TEST["index"], GOOD)]
    return "".join(line + trailing + "\n" for line in lines).encode()


@pytest.mark.parametrize(
    ("test", "pred", "message"),
    [
        (None, _pred_bytes(), "INVALID: test file {t}: is a folder, not a CSV file"),
        (_test_bytes(), None, "INVALID: predictions file {p}: is a folder, not a CSV file"),
        (_test_bytes(), _pred_bytes().replace(b"500.0 gram", b"500.0 gr\xe4mm"),
         "INVALID: predictions file {p}: line 3, byte 11 of that line: not UTF-8 text (byte 0xe4 in "),
        (_test_bytes().replace(b"item_weight", b"item_w\xe9ight"), _pred_bytes(),
         "INVALID: test file {t}: line 3, byte "),
        (_test_bytes(), b"\xef\xbb\xbf" + _pred_bytes().replace(b"60 watt", b"60 w\xffatt"),
         "INVALID: predictions file {p}: line 6, byte 8 of that line"),  # after a BOM: still counted in the file
        (_test_bytes(), _pred_bytes(trailing=","),
         "INVALID: predictions file {p}: every line ends in a comma (the header's last column has no name)"),
        (_test_bytes(), _pred_bytes().replace(b"\n", b",\n").replace(b"prediction,\n", b"prediction\n"),
         "INVALID: predictions file {p}: line 2 has 3 cells but the header has 2 (index,prediction) (5 lines like "
         "this); every such line ends in a comma: remove the trailing commas"),
        (_test_bytes(), _pred_bytes().replace(b"\n42,\n", b"\n42,,\n"),
         "INVALID: predictions file {p}: line 4 has 3 cells but the header has 2 (index,prediction); it ends in a "
         "comma: remove it"),
        (_test_bytes(), b"", "INVALID: predictions file {p}: empty file"),
        (_test_bytes(), b"index,prediction\n10,12 gram\n3," + b"x" * 200_000 + b"\n",
         "INVALID: predictions file {p}: line 3: not a readable CSV line (field larger than field limit"),
        (_test_bytes().replace(b"\n42,", b"\n99999999999999999999999,"), _pred_bytes(),
         "INVALID: {t}: line 4: index is out of range (a 64-bit integer, at most 9223372036854775807): "
         "'99999999999999999999999'"),  # an OverflowError "unexpected error" with no file or line before
        (_test_bytes().replace(b",3,voltage", b"," + b"7" * 5000 + b",voltage"), _pred_bytes(),
         "INVALID: {t}: line 4: group_id is out of range (a 64-bit integer"),  # "Exceeds the limit (4300 digits)"
    ],
    ids=["test-folder", "pred-folder", "pred-latin1", "test-latin1", "pred-bom-then-bad-byte", "trailing-commas",
         "trailing-commas-data-only", "one-trailing-comma", "empty", "huge-cell", "test-index-overflow",
         "test-group-id-5000-digits"],
)
def test_cli_unreadable_input_is_one_line(tmp_path: Path, test: bytes | None, pred: bytes | None, message: str) -> None:
    result = _bytes_cli(tmp_path, test, pred)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == "" and "Traceback" not in result.stderr
    err = result.stderr.strip()
    expected = message.format(t=tmp_path / "test.csv", p=tmp_path / "pred.csv")
    assert len(err.splitlines()) == 1 and err.startswith(expected), err


def test_a_huge_group_id_names_its_line_and_column(tmp_path: Path) -> None:
    """A 1 MB group_id, where stage 01 reads the test CSV (pandas, no field limit): named, not "Exceeds the limit
    (4300 digits)" from int()."""
    from utils.data.tables import DataValidationError

    path = tmp_path / "test.csv"
    path.write_bytes(_test_bytes().replace(b",3,voltage", b"," + b"7" * 1_000_000 + b",voltage"))
    with pytest.raises(DataValidationError, match=r"test.csv: line 4: group_id is out of range .*'7777.*\.\.\.'$"):
        load_test(path)


def test_load_test_names_the_line_of_a_byte_that_is_not_utf8(tmp_path: Path) -> None:
    """Stage 01 reads the test CSV with ``load_test``: "position 6" (of a pandas chunk) before, the line now."""
    from utils.data.tables import DataValidationError

    path = tmp_path / "test.csv"
    path.write_bytes(_test_bytes().replace(b"item_weight", b"item_w\xe9ight"))
    with pytest.raises(DataValidationError, match=r"test.csv: line 3, byte \d+ of that line: not UTF-8 text"):
        load_test(path)


def test_cli_reads_a_pipe(tmp_path: Path) -> None:
    """``python -m utils.sanity <(cat test.csv) <(cat pred.csv)``: process substitution hands pipes, which were
    refused as "file not found" (and a pipe can be read only once)."""
    import os

    (tmp_path / "test.csv").write_bytes(_test_bytes())
    (tmp_path / "pred.csv").write_bytes(_pred_bytes())
    command = f"{sys.executable} -m utils.sanity <(cat {tmp_path / 'test.csv'}) <(cat {tmp_path / 'pred.csv'})"
    result = subprocess.run(["bash", "-c", command], capture_output=True, text=True, cwd=REPO, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 0 and result.stdout.startswith("OK /dev/fd/"), result.stdout + result.stderr


def test_cli_good_bytes_still_pass_and_a_bom_is_fine(tmp_path: Path) -> None:
    result = _bytes_cli(tmp_path, _test_bytes(), b"\xef\xbb\xbf" + _pred_bytes())
    assert result.returncode == 0 and result.stdout.startswith("OK"), result.stdout + result.stderr


def test_repeated_required_column_is_a_columns_problem_not_a_crash() -> None:
    p = pd.DataFrame([[10, "12.5 centimetre", 10]], columns=["index", "prediction", "index"])
    problems = check_submission(TEST, p)
    assert kinds(problems) == [(None, "columns")] and "index is repeated" in problems[0].detail
