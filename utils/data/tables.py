"""Loading, validation, sampling and the prompt.

* ``load_train`` / ``load_test`` read the challenge CSVs as text (no NaN guessing: an empty cell stays ``""``) and
  validate them. A problem raises :class:`DataValidationError` naming the file, the first offending CSV line
  (1-based, the header is line 1) and what is wrong, plus how many more rows share the problem.
* ``balanced_sample`` draws the same number of rows per entity (capped by what exists, seeded), as the reference
  notebook did, optionally spreading each entity's rows evenly over its label units too.
* ``group_split`` splits train/validation so that each ``group_id`` lands on one side only.
* ``PROMPT_TEMPLATE`` / ``make_prompt`` are the one prompt used by training and inference alike.

Label values: ``""`` (the image does not say), a single value ``"<number> <unit>"`` (anything
``utils.core.units.parse_value`` accepts, e.g. ``"500 gram"``, ``"2.2e+20 gram"``), or one of the two range spellings
found in the real labels, as ``utils.core.units.parse_range`` reads them: ``"[100.0, 240.0] volt"`` and
``"10 kilogram to 15 kilogram"``. A label whose unit is a word but not one allowed for its entity (650 rows of the
real train set, e.g. ``"5 horsepower"`` for wattage) loads fine; :func:`label_unit_allowed` finds them for callers
who want them out of training.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pandas as pd

from utils.core.units import ENTITIES, ENTITY_UNIT_MAP, parse_range, parse_value
from utils.env.csv_input import CsvInputError, decode_utf8, read_input_bytes

TRAIN_COLUMNS: tuple[str, ...] = ("image_link", "group_id", "entity_name", "entity_value")
TEST_COLUMNS: tuple[str, ...] = ("index", "image_link", "group_id", "entity_name")

#: The one prompt, for training and inference. ``{entity}`` is the entity name with underscores turned into
#: spaces ("item_weight" -> "What is the item weight?"). Change it here and nowhere else.
PROMPT_TEMPLATE = "What is the {entity}?"
#: How the question is put to the model. ``question``: the bare question (the seed's prompt). ``docvqa``: big_vision's
#: task prefix, the format PaliGemma's docvqa checkpoint was fine-tuned on (``answer en <question>``).
PROMPT_FORMATS = {"question": "{question}", "docvqa": "answer en {question}"}

_LABEL_UNIT = r"([a-zA-Z]+(?: [a-zA-Z]+)*)\s*$"

_SHOW_MORE = 3  # how many further offending lines an error message lists


class DataValidationError(ValueError):
    """A CSV that does not fit the expected shape; the message names the file, the row and the problem."""


def _line(pos: int) -> int:
    """The 1-based CSV line of the row at 0-based position ``pos`` (header is line 1, no multi-line cells)."""
    return int(pos) + 2


def _fail(path: Path, positions: np.ndarray, problem: str, values: pd.Series | None = None) -> None:
    """Raise a :class:`DataValidationError` for the rows at ``positions`` (non-empty), first one named."""
    first = int(positions[0])
    shown = f" {values.iloc[first]!r}" if values is not None else ""
    msg = f"{path}: line {_line(first)}: {problem}{shown}"
    if len(positions) > 1:
        more = ", ".join(str(_line(p)) for p in positions[1 : 1 + _SHOW_MORE])
        msg += f" (and {len(positions) - 1} more rows with this problem, e.g. lines {more})"
    raise DataValidationError(msg)


def _read(path: str | Path, required: tuple[str, ...], data: bytes | None = None) -> tuple[Path, pd.DataFrame]:
    """Read a CSV as strings, ``""`` for empty cells; check the required columns are present. Any readable path
    (a pipe too; ``data``: its bytes, already read); bytes that are not UTF-8 are named by line and byte."""
    path = Path(path)
    try:
        text = decode_utf8("CSV", path, read_input_bytes(path) if data is None else data)
    except CsvInputError as exc:
        raise DataValidationError(str(exc).removeprefix("CSV ")) from None
    try:
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_filter=False, engine="c")
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataValidationError(f"{path}: not a readable CSV: {exc}") from exc
    missing = [c for c in required if c not in df.columns]
    if missing:
        raise DataValidationError(
            f"{path}: line 1 (header): missing column(s) {', '.join(missing)}; found {', '.join(map(str, df.columns))}"
        )
    return path, df


def _check_common(path: Path, df: pd.DataFrame) -> None:
    """Checks shared by train and test: known entity names, non-empty links, non-empty group ids."""
    bad = np.flatnonzero(~df["entity_name"].isin(ENTITIES).to_numpy())
    if len(bad):
        _fail(path, bad, f"unknown entity_name (expected one of {', '.join(ENTITIES)}):", df["entity_name"])
    bad = np.flatnonzero((df["image_link"].str.strip() == "").to_numpy())
    if len(bad):
        _fail(path, bad, "empty image_link")
    bad = np.flatnonzero((df["group_id"].str.strip() == "").to_numpy())
    if len(bad):
        _fail(path, bad, "empty group_id")


def _int_column(path: Path, df: pd.DataFrame, column: str) -> pd.Series:
    """``df[column]`` as int64, failing on the first row that is not an integer."""
    col = df[column].str.strip()
    ok = col.str.fullmatch(r"-?\d+").to_numpy(dtype=bool)
    bad = np.flatnonzero(~ok)
    if len(bad):
        _fail(path, bad, f"{column} is not an integer:", df[column])
    _check_int64(path, col, column)
    return col.astype("int64")


_INT64_DIGITS = len(str(2**63 - 1))


def _check_int64(path: Path, col: pd.Series, column: str) -> None:
    """Fail naming the line of the first integer (text) outside int64 (which ``astype`` would not say)."""
    long = col.str.lstrip("-").str.len().to_numpy() >= _INT64_DIGITS
    if long.any():
        big = np.flatnonzero(long)
        big = big[[not -(2**63) <= int(v) < 2**63 for v in col.iloc[big].str[: _INT64_DIGITS + 2]]]
        if len(big):
            shown = col.str.slice(0, 30) + np.where(col.str.len() > 30, "...", "")
            _fail(path, big, f"{column} is out of range (a 64-bit integer, at most {2**63 - 1}):", shown)


def _group_ids(path: Path, df: pd.DataFrame) -> pd.Series:
    """group_id as int64 when every value is an integer (the challenge data), else kept as text."""
    col = df["group_id"].str.strip()
    if col.str.fullmatch(r"-?\d+").all():
        _check_int64(path, col, "group_id")
        return col.astype("int64")
    return col


def label_ok(value: str) -> bool:
    """Whether ``value`` is a valid label: empty, a single value, or one of the two range spellings."""
    value = value.strip()
    return value == "" or parse_value(value) is not None or parse_range(value) is not None


def label_units(values: pd.Series) -> pd.Series:
    """The unit of each label value (the trailing words: ``"[1.0, 2.0] volt"`` -> ``"volt"``), ``""`` if none."""
    return values.astype(str).str.extract(_LABEL_UNIT, expand=False).fillna("")


def label_unit_allowed(df: pd.DataFrame) -> pd.Series:
    """Boolean mask: the row's label is empty or its unit is allowed for its entity (``ENTITY_UNIT_MAP``)."""
    units = label_units(df["entity_value"])
    pairs = df["entity_name"].astype(str) + "|" + units
    allowed = {f"{e}|{u}" for e, us in ENTITY_UNIT_MAP.items() for u in us}
    return (df["entity_value"].astype(str).str.strip() == "") | pairs.isin(allowed)


def load_train(path: str | Path) -> pd.DataFrame:
    """Load and validate a train CSV: ``image_link,group_id,entity_name,entity_value`` (+ ``index`` if present).

    ``entity_value`` is text, ``""`` where the image does not say; ``group_id`` is int64 when all values are
    integers. Raises :class:`DataValidationError` on missing columns, unknown entity names, empty links or group
    ids, a non-integer ``index`` or an unparsable label value.
    """
    path, df = _read(path, TRAIN_COLUMNS)
    _check_common(path, df)
    values = df["entity_value"].str.strip()
    uniques = values.unique()
    bad_values = [v for v in uniques if not label_ok(v)]
    if bad_values:
        bad = np.flatnonzero(values.isin(bad_values).to_numpy())
        _fail(path, bad, 'unparsable entity_value (want "<number> <unit>", a range, or empty):', df["entity_value"])
    out = pd.DataFrame(
        {
            "image_link": df["image_link"].str.strip(),
            "group_id": _group_ids(path, df),
            "entity_name": df["entity_name"],
            "entity_value": values,
        }
    )
    if "index" in df.columns:
        out.insert(0, "index", _int_column(path, df, "index"))
    return out


def load_test(path: str | Path, data: bytes | None = None) -> pd.DataFrame:
    """Load and validate a test CSV: ``index,image_link,group_id,entity_name``; ``index`` int64 and unique.

    Extra columns (e.g. ``entity_value`` in a labelled dev file) are kept as text. Raises
    :class:`DataValidationError` on missing columns, unknown entity names, empty links or group ids, a non-integer
    or duplicated ``index``. ``data``: the file's bytes, already read (a pipe can be read once).
    """
    path, df = _read(path, TEST_COLUMNS, data)
    _check_common(path, df)
    index = _int_column(path, df, "index")
    dup = np.flatnonzero(index.duplicated(keep="first").to_numpy())
    if len(dup):
        first_seen = int(np.flatnonzero((index == index.iloc[dup[0]]).to_numpy())[0])
        _fail(path, dup, f"duplicate index (first seen on line {_line(first_seen)}):", df["index"])
    out = df.copy()
    out["index"] = index
    out["image_link"] = df["image_link"].str.strip()
    out["group_id"] = _group_ids(path, df)
    cols = list(TEST_COLUMNS) + [c for c in df.columns if c not in TEST_COLUMNS]
    return out[cols]


def _allocate(counts: list[int], total: int) -> list[int]:
    """Split ``total`` over strata as evenly as possible, each capped by its count (water-filling)."""
    alloc = [0] * len(counts)
    remaining = total
    order = sorted(range(len(counts)), key=lambda k: counts[k])
    for done, k in enumerate(order):
        share = remaining // (len(counts) - done)
        alloc[k] = min(counts[k], share)
        remaining -= alloc[k]
    return alloc


def balanced_sample(df: pd.DataFrame, per_entity: int, seed: int = 0, balance_units: bool = False) -> pd.DataFrame:
    """The same number of rows per entity (``min(per_entity, rows of that entity)``), drawn with ``seed``.

    With ``balance_units`` an entity's quota is spread as evenly as possible over its label units (a rare unit
    gives all it has, the rest is shared by the others). The result is shuffled (seeded) and keeps the original
    row labels of ``df`` so rows can be traced back.
    """
    if per_entity < 0:
        raise ValueError(f"per_entity must be >= 0, got {per_entity}")
    if "entity_name" not in df.columns:
        raise ValueError("balanced_sample needs an entity_name column")
    parts: list[pd.DataFrame] = []
    for _, group in df.groupby("entity_name", sort=True):
        n = min(per_entity, len(group))
        if not balance_units:
            parts.append(group.sample(n=n, random_state=seed))
            continue
        if "entity_value" not in group.columns:
            raise ValueError("balance_units needs an entity_value column")
        units = label_units(group["entity_value"])
        strata = sorted(units.unique())
        counts = [int((units == u).sum()) for u in strata]
        for unit, take in zip(strata, _allocate(counts, n)):
            parts.append(group[units == unit].sample(n=take, random_state=seed))
    if not parts:
        return df.iloc[0:0].copy()
    out = pd.concat(parts)
    return out.sample(frac=1.0, random_state=seed)


def group_split(df: pd.DataFrame, val_fraction: float = 0.1, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split into (train, val) with every ``group_id`` on one side only.

    Groups are shuffled with ``seed`` and taken into validation until its row count is closest to
    ``val_fraction * len(df)``; with at least two groups and ``0 < val_fraction < 1`` both sides are non-empty.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    if "group_id" not in df.columns:
        raise ValueError("group_split needs a group_id column")
    sizes = df["group_id"].value_counts(sort=False)
    rng = np.random.default_rng(seed)
    groups = sizes.index.to_numpy()[rng.permutation(len(sizes))]
    cum = sizes.loc[groups].to_numpy().cumsum()
    target = val_fraction * len(df)
    n_val_groups = 0
    if val_fraction > 0 and len(groups) > 1:
        n_val_groups = int(np.argmin(np.abs(cum - target))) + 1
        n_val_groups = min(n_val_groups, len(groups) - 1)
    is_val = df["group_id"].isin(groups[:n_val_groups])
    return df[~is_val], df[is_val]


def make_prompt(entity_name: str, prompt_format: str = "question") -> str:
    """The prompt for an entity, e.g. ``make_prompt("item_weight") == "What is the item weight?"`` and
    ``make_prompt("item_weight", "docvqa") == "answer en What is the item weight?"`` (``PROMPT_FORMATS``)."""
    if entity_name not in ENTITIES:
        raise ValueError(f"unknown entity {entity_name!r}; expected one of {', '.join(ENTITIES)}")
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"prompt_format must be one of {tuple(PROMPT_FORMATS)}, got {prompt_format!r}")
    question = PROMPT_TEMPLATE.format(entity=entity_name.replace("_", " "))
    return PROMPT_FORMATS[prompt_format].format(question=question)


_UNIT = re.compile(r"^\s*\S+\s+(.+?)\s*$")


def _unit(value: str) -> str:
    match = _UNIT.match(value or "")
    return match.group(1) if match else "(empty)"


def count_table(train: pd.DataFrame, val: pd.DataFrame) -> pd.DataFrame:
    """Rows per entity and unit in train and val (``(empty)`` for rows without an answer)."""
    parts = []
    for name, frame in (("train", train), ("val", val)):
        units = frame["entity_value"].fillna("").astype(str).map(_unit)
        parts.append(pd.DataFrame({"entity_name": frame["entity_name"], "unit": units, "split": name}))
    joined = pd.concat(parts, ignore_index=True)
    table = joined.groupby(["entity_name", "unit", "split"]).size().unstack("split", fill_value=0)
    return table.reindex(columns=["train", "val"], fill_value=0).astype(int)


def entity_count_table(train: pd.DataFrame, val: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    """Rows per entity in train, val and test."""
    splits = (("train", train), ("val", val), ("test", test))
    counts = {name: frame["entity_name"].value_counts() for name, frame in splits}
    return pd.DataFrame(counts).fillna(0).astype(int).sort_index()
