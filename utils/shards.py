"""Strided shards on the test ``index``, crash-safe appending, resume, and the merge.

* Shard ``i`` of ``n`` is ``test`` sorted by ``index``, rows ``[i::n]`` — chosen on the index, never on row
  offsets, so it does not depend on the order of the CSV.
* :class:`ShardWriter` appends each finished batch to ``out_dir/shard_{i:02d}_of_{n:02d}.csv`` (columns
  ``index,prediction,raw``), then flushes and fsyncs, so a killed run loses at most the batch in flight. Line breaks
  inside ``prediction``/``raw`` are replaced by spaces, so one record is always one line; on reopen a torn last
  line (no final newline: the process died mid-write) is cut off the file and those rows are simply redone.
* The done marker (the same path with ``.done`` appended, a small JSON) is written last, atomically (temporary
  file, fsync, rename); a shard with a marker is finished and a rerun does nothing.
* :func:`merge_shards` needs all ``n`` finished shards and every test index exactly once; it fills nothing.
"""

from __future__ import annotations

import csv
import io
import json
import numbers
import os
import time
from collections.abc import Iterable
from pathlib import Path

import pandas as pd

from utils.fileio import atomic_write_bytes, fsync_dir

SHARD_COLUMNS: tuple[str, ...] = ("index", "prediction", "raw")
_HEADER = ",".join(SHARD_COLUMNS) + "\n"
_SHOW = 5  # how many example indices an error message lists


class MergeError(RuntimeError):
    """The shard files cannot be merged into a complete submission (the message says which shard and why)."""


def _check_shard_args(shard_index: int, num_shards: int) -> None:
    if not isinstance(num_shards, numbers.Integral) or isinstance(num_shards, bool) or num_shards < 1:
        raise ValueError(f"num_shards must be a positive integer, got {num_shards!r}")
    if not isinstance(shard_index, numbers.Integral) or isinstance(shard_index, bool):
        raise ValueError(f"shard_index must be an integer, got {shard_index!r}")
    if not 0 <= shard_index < num_shards:
        raise ValueError(f"shard_index must be in [0, {num_shards - 1}], got {shard_index!r}")


def shard_rows(test: pd.DataFrame, shard_index: int, num_shards: int) -> pd.DataFrame:
    """Rows of shard ``shard_index`` of ``num_shards``: ``test`` sorted by ``index``, then ``[i::n]``."""
    _check_shard_args(shard_index, num_shards)
    if "index" not in test.columns:
        raise ValueError("shard_rows needs an 'index' column (the test index, not the row number)")
    ordered = test.sort_values("index", kind="stable")
    return ordered.iloc[shard_index::num_shards].reset_index(drop=True)


def shard_path(out_dir: str | Path, shard_index: int, num_shards: int) -> Path:
    """``out_dir/shard_{i:02d}_of_{n:02d}.csv``; its done marker is this path with ``.done`` appended."""
    _check_shard_args(shard_index, num_shards)
    return Path(out_dir) / f"shard_{shard_index:02d}_of_{num_shards:02d}.csv"


def done_marker_path(out_dir: str | Path, shard_index: int, num_shards: int) -> Path:
    """The done marker of a shard: ``shard_path(...)`` with ``.done`` appended."""
    path = shard_path(out_dir, shard_index, num_shards)
    return path.with_name(path.name + ".done")


def _one_line(text: object) -> str:
    """A cell value as text on one line (CR/LF become spaces, so a record is exactly one line)."""
    s = "" if text is None else str(text)
    if "\n" in s or "\r" in s:
        s = s.replace("\r\n", " ").replace("\r", " ").replace("\n", " ")
    return s


def _examples(values: Iterable[int]) -> str:
    vals = sorted(values)
    shown = ", ".join(str(v) for v in vals[:_SHOW])
    return shown + (", ..." if len(vals) > _SHOW else "")


class ShardWriter:
    """Append-only writer of one shard's results, resumable after a crash (see the module docstring)."""

    def __init__(self, out_dir: str | Path, shard_index: int, num_shards: int, run_id: str | None = None) -> None:
        """Open (or resume) a shard. ``run_id`` names what produces the answers (e.g. the fitted artifact's
        fingerprint): a shard file left by another run is moved aside (``*.stale-<time>``, kept, never deleted)
        and the shard starts afresh, so answers of two different models are never mixed in one shard."""
        _check_shard_args(shard_index, num_shards)
        self.out_dir = Path(out_dir)
        self.shard_index = int(shard_index)
        self.num_shards = int(num_shards)
        self.run_id = run_id
        self.path = shard_path(self.out_dir, shard_index, num_shards)
        self.done_path = done_marker_path(self.out_dir, shard_index, num_shards)
        self.run_path = self.path.with_name(self.path.name + ".run")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.dropped_torn_line = False
        self.moved_stale: list[Path] = self._move_aside_if_stale()
        self.done_indices: set[int] = self._open()

    def _move_aside_if_stale(self) -> list[Path]:
        """Move this shard's files aside when they were written by another run; the new names."""
        if self.run_id is None or not self.path.exists():
            return []
        previous = read_run_id(self.path)
        if previous == self.run_id:
            return []
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        moved = []
        for old in (self.done_path, self.run_path, self.path):  # the done marker first: never a marker alone
            if old.exists():
                new = old.with_name(f"{old.name}.stale-{stamp}")
                os.replace(old, new)
                moved.append(new)
        fsync_dir(self.out_dir)
        return moved

    @property
    def is_done(self) -> bool:
        """Whether the done marker exists (the shard is finished; nothing more may be written)."""
        return self.done_path.is_file()

    def _open(self) -> set[int]:
        """Create the file with its header, or read it back after cutting a torn last line; the indices in it."""
        if not self.path.exists():
            self._rewrite_header()
            return set()
        data = self.path.read_bytes()
        cut = data.rfind(b"\n") + 1  # everything after the last newline is a torn (partial) record
        if cut < len(data):
            self.dropped_torn_line = True
            with open(self.path, "r+b") as fh:
                fh.truncate(cut)
                fh.flush()
                os.fsync(fh.fileno())
            data = data[:cut]
        if not data:  # the header itself was torn
            self._rewrite_header()
            return set()
        text = data.decode("utf-8")
        header, _, body = text.partition("\n")
        if header.strip() != _HEADER.strip():
            raise ValueError(f"{self.path}: line 1: expected header {_HEADER.strip()!r}, found {header!r}")
        indices: set[int] = set()
        for lineno, record in enumerate(csv.reader(io.StringIO(body)), start=2):
            if len(record) != len(SHARD_COLUMNS):
                raise ValueError(
                    f"{self.path}: line {lineno}: expected 3 fields (index,prediction,raw), got {record!r}"
                )
            try:
                idx = int(record[0])
            except ValueError:
                raise ValueError(f"{self.path}: line {lineno}: index {record[0]!r} is not an integer") from None
            if idx in indices:
                raise ValueError(f"{self.path}: line {lineno}: index {idx} written twice")
            indices.add(idx)
        return indices

    def _rewrite_header(self) -> None:
        if self.run_id is not None:  # the run id first, so a shard file never exists without it
            with open(self.run_path, "w", encoding="utf-8") as fh:
                fh.write(self.run_id + "\n")
                fh.flush()
                os.fsync(fh.fileno())
        with open(self.path, "w", encoding="utf-8", newline="") as fh:
            fh.write(_HEADER)
            fh.flush()
            os.fsync(fh.fileno())
        fsync_dir(self.out_dir)

    def write_batch(self, rows: Iterable[tuple[int, str, str]]) -> int:
        """Append ``(index, prediction, raw)`` rows, then flush and fsync; returns how many were written.

        Raises ``ValueError`` (writing nothing) when an index is already in the file or repeated in the batch,
        and ``RuntimeError`` when the shard is already marked done.
        """
        if self.is_done:
            raise RuntimeError(f"{self.path}: shard is marked done ({self.done_path.name}); refusing to append")
        batch = [(int(i), _one_line(p), _one_line(r)) for i, p, r in rows]
        seen: set[int] = set()
        for idx, _, _ in batch:
            if idx in self.done_indices or idx in seen:
                raise ValueError(f"{self.path}: index {idx} is already written; a rerun must skip done indices")
            seen.add(idx)
        if not batch:
            return 0
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(batch)
        with open(self.path, "a", encoding="utf-8", newline="") as fh:
            fh.write(buf.getvalue())
            fh.flush()
            os.fsync(fh.fileno())
        self.done_indices |= seen
        return len(batch)

    def mark_done(self, expected: Iterable[int]) -> None:
        """Write the done marker, after checking the file holds exactly the ``expected`` indices."""
        expected_set = {int(i) for i in expected}
        missing = expected_set - self.done_indices
        if missing:
            raise ValueError(
                f"{self.path}: cannot mark done, {len(missing)} of {len(expected_set)} indices not written "
                f"(e.g. {_examples(missing)})"
            )
        extra = self.done_indices - expected_set
        if extra:
            raise ValueError(
                f"{self.path}: cannot mark done, {len(extra)} written indices are not in this shard "
                f"(e.g. {_examples(extra)})"
            )
        info = {
            "shard_index": self.shard_index,
            "num_shards": self.num_shards,
            "rows": len(self.done_indices),
            "run_id": read_run_id(self.path),
            "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        atomic_write_bytes(self.done_path, (json.dumps(info) + "\n").encode("utf-8"),
                           tmp=self.done_path.with_name(self.done_path.name + ".tmp"))
        fsync_dir(self.out_dir)


def read_run_id(path: str | Path) -> str | None:
    """The run id recorded beside the shard file ``path`` (its ``.run`` file), or None when none was recorded."""
    run_path = Path(path).with_name(Path(path).name + ".run")
    try:
        return run_path.read_text(encoding="utf-8").strip() or None
    except OSError:
        return None


def read_shard(path: str | Path) -> pd.DataFrame:
    """A shard file as a DataFrame (``index`` int64, ``prediction``/``raw`` text, ``""`` for empty)."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    if list(df.columns) != list(SHARD_COLUMNS):
        raise MergeError(f"{path}: expected columns {','.join(SHARD_COLUMNS)}, found {','.join(df.columns)}")
    df["index"] = df["index"].astype("int64")
    return df


def merge_shards(
    out_dir: str | Path, num_shards: int, test: pd.DataFrame, out_path: str | Path | None = None
) -> pd.DataFrame:
    """Merge all finished shards into ``index,prediction`` in the order of ``test``; optionally write ``out_path``.

    Raises :class:`MergeError` when a shard file or its done marker is missing, when a shard's rows disagree with
    its marker, when the shards were written by different runs (different models), or when an index is missing,
    duplicated, unknown to ``test`` or in the wrong shard.
    """
    _check_shard_args(0, num_shards)
    test_index = test["index"].astype("int64")
    if test_index.duplicated().any():
        dups = _examples(test_index[test_index.duplicated()])
        raise MergeError(f"the test frame itself has duplicated indices (e.g. {dups})")
    order = pd.Series(range(len(test_index)), index=test_index.sort_values(kind="stable").to_numpy())
    frames = []
    run_ids: dict[int, str | None] = {}
    for i in range(num_shards):
        path = shard_path(out_dir, i, num_shards)
        marker = done_marker_path(out_dir, i, num_shards)
        if not path.is_file():
            raise MergeError(f"shard {i} of {num_shards} is missing: {path} not found (was it run?)")
        if not marker.is_file():
            raise MergeError(f"shard {i} of {num_shards} is not finished: {marker.name} not found (rerun that shard)")
        df = read_shard(path)
        try:
            rows = int(json.loads(marker.read_text(encoding="utf-8"))["rows"])
        except (ValueError, KeyError, TypeError) as exc:
            raise MergeError(f"{marker}: unreadable done marker ({exc})") from exc
        if rows != len(df):
            raise MergeError(
                f"{path}: {len(df)} rows but its done marker says {rows} (file changed after it finished?)"
            )
        run_ids[i] = read_run_id(path)
        df["_shard"] = i
        frames.append(df)
    if len(set(run_ids.values())) > 1:
        listed = "; ".join(f"shard {i}: {r or 'none recorded'}" for i, r in run_ids.items())
        raise MergeError(f"the shards were written by different runs (models), which must not be mixed: {listed}. "
                         "Rerun the odd shards with the current model.")
    merged = pd.concat(frames, ignore_index=True)
    dup = merged["index"].duplicated(keep=False)
    if dup.any():
        where = merged[dup].groupby("index")["_shard"].apply(list)
        ex = "; ".join(f"{idx} in shards {shards}" for idx, shards in list(where.items())[:_SHOW])
        raise MergeError(f"{int(where.size)} indices appear more than once: {ex}")
    known = merged["index"].isin(order.index)
    if not known.all():
        raise MergeError(
            f"{int((~known).sum())} indices are not in the test set (e.g. {_examples(merged.loc[~known, 'index'])}); "
            "were the shards run on another test file?"
        )
    missing = ~test_index.isin(merged["index"])
    if missing.any():
        raise MergeError(f"{int(missing.sum())} test indices are in no shard (e.g. {_examples(test_index[missing])})")
    owner = order.loc[merged["index"].to_numpy()].to_numpy() % num_shards
    wrong = owner != merged["_shard"].to_numpy()
    if wrong.any():
        raise MergeError(
            f"{int(wrong.sum())} indices are in the wrong shard file (e.g. {_examples(merged.loc[wrong, 'index'])}); "
            f"were the shards run with another num_shards than {num_shards}?"
        )
    by_index = merged.set_index("index")["prediction"]
    out = pd.DataFrame({"index": test_index.to_numpy(), "prediction": by_index.loc[test_index.to_numpy()].to_numpy()})
    if out_path is not None:
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out.to_csv(out_path, index=False)
    return out
