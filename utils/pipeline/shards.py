"""Strided shards on the test ``index``, crash-safe appending, resume, and the merge.

* Shard ``i`` of ``n`` is ``test`` sorted by ``index``, rows ``[i::n]`` — chosen on the index, never on row
  offsets, so it does not depend on the order of the CSV.
* :class:`ShardWriter` appends each finished batch to ``out_dir/shard_{i:02d}_of_{n:02d}.csv`` (columns
  ``index,prediction,raw``), then flushes and fsyncs, so a killed run loses at most the batch in flight. Line breaks
  inside ``prediction``/``raw`` are replaced by spaces, so one record is always one line; on reopen a torn last
  line (no final newline: the process died mid-write) is cut off the file and those rows are simply redone.
* The done marker (the same path with ``.done`` appended, a small JSON) is written last, atomically (temporary
  file, fsync, rename); a shard with a marker is finished and a rerun does nothing.
* The run record (``.run``, JSON) says what the answers depend on: the model, the shard's rows, its images, the
  cleaning rules and the backend settings (``utils.pipeline.predict.run_record``). A rerun whose record differs in
  any of them moves the old files aside (``*.stale-<time>``, kept) and predicts the shard afresh.
* While a writer is open it holds an exclusive lock (``.lock``, ``flock``): a second process writing the same shard
  fails at once with a message naming the first, instead of interleaving appends.
* :func:`merge_shards` needs all ``n`` finished shards, every test index exactly once, and one model, settings and
  cleaning across the shards; it fills nothing.
"""

from __future__ import annotations

import csv
import io
import json
import numbers
import os
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from utils.env.fileio import atomic_write_bytes, fsync_dir

SHARD_COLUMNS: tuple[str, ...] = ("index", "prediction", "raw")
_HEADER = ",".join(SHARD_COLUMNS) + "\n"
_SHOW = 5  # how many example indices an error message lists


#: Run-record keys that must agree across the shards of one submission (the rest differ per shard by nature).
SHARED_RUN_KEYS: tuple[str, ...] = ("model", "settings", "cleaning")


class MergeError(RuntimeError):
    """The shard files cannot be merged into a complete submission (the message says which shard and why)."""


class ShardBusyError(RuntimeError):
    """Another process holds the shard's lock (it is writing the same shard right now)."""


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
    """Append-only writer of one shard's results, resumable after a crash (see the module docstring).

    Use it as a context manager (or call ``close``) so the shard's lock is released; a killed process releases it
    too (the kernel drops ``flock`` locks with the process)."""

    def __init__(self, out_dir: str | Path, shard_index: int, num_shards: int,
                 run: dict[str, Any] | str | None = None, defer_stale: bool = False) -> None:
        """Open (or resume) a shard. ``run`` is the run record (a dict with an ``id``; a plain string is taken as
        the id): a shard file left by another run is moved aside (``*.stale-<time>``, kept, never deleted) and
        the shard starts afresh, so answers of two different inputs are never mixed in one shard.

        ``defer_stale``: such a file stays where it is until ``replace_stale()`` (``stale`` says so; nothing can be
        written before), so that its answers are kept when the work that replaces them fails to start."""
        _check_shard_args(shard_index, num_shards)
        self.out_dir = Path(out_dir)
        self.shard_index = int(shard_index)
        self.num_shards = int(num_shards)
        self.run = {"id": run} if isinstance(run, str) else run
        self.run_id = None if self.run is None else str(self.run["id"])
        self.path = shard_path(self.out_dir, shard_index, num_shards)
        self.done_path = done_marker_path(self.out_dir, shard_index, num_shards)
        self.run_path = self.path.with_name(self.path.name + ".run")
        self.lock_path = self.path.with_name(self.path.name + ".lock")
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self._lock_fd: int | None = None
        self._lock()
        try:
            self.dropped_torn_line = False
            self.changed: list[str] = []  # what differed from the previous run's record, when moved aside
            self.moved_stale: list[Path] = []
            self.stale = self._is_stale()
            self.done_indices: set[int] = set()
            if not (self.stale and defer_stale):
                self.replace_stale()
        except BaseException:
            self.close()
            raise

    def _lock(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX: no lock (run one process per shard)
            return
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode("utf-8", "replace").strip() or "another process"
            os.close(fd)
            raise ShardBusyError(f"{self.path} is being written by {holder}: two processes must never write one "
                                 "shard; wait for that one to finish or stop it, then run again") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()} since "
                     f"{time.strftime('%Y-%m-%d %H:%M:%S')}".encode())
        self._lock_fd = fd

    def close(self) -> None:
        """Release the shard's lock."""
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _is_stale(self) -> bool:
        """Whether this shard's files were written by another run (``changed`` says what differs)."""
        if self.run is None or not self.path.exists():
            return False
        previous = read_run(self.path)
        if previous is not None and previous.get("id") == self.run_id:
            return False
        self.changed = ["no run record"] if previous is None else [
            k for k in sorted(set(previous) | set(self.run)) if k != "id" and previous.get(k) != self.run.get(k)
        ] or ["run id"]
        return True

    def replace_stale(self) -> None:
        """Move a stale shard aside (``moved_stale``) and open the shard for writing (``done_indices``)."""
        if self.stale:
            self.moved_stale = self._move_aside()
            self.stale = False
        self.done_indices = self._open()

    def _move_aside(self) -> list[Path]:
        """Move this shard's files aside; the new names."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        n = 1
        while any(p.with_name(f"{p.name}.stale-{stamp}").exists() for p in (self.done_path, self.run_path, self.path)):
            stamp = f"{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{n}"  # never overwrite an older stale set
            n += 1
        moved = [old for old in (self.done_path, self.run_path, self.path) if old.exists()]
        for old in moved:  # the done marker first: never a marker alone
            os.replace(old, old.with_name(f"{old.name}.stale-{stamp}"))
        fsync_dir(self.out_dir)
        return [old.with_name(f"{old.name}.stale-{stamp}") for old in moved]

    @property
    def is_done(self) -> bool:
        """Whether the done marker exists (the shard is finished; nothing more may be written); a stale shard's
        marker (another run's) does not count."""
        return not self.stale and self.done_path.is_file()

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
        if self.run is not None:  # the run record first, so a shard file never exists without it
            atomic_write_bytes(self.run_path, (json.dumps(self.run, sort_keys=True) + "\n").encode("utf-8"))
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
        if self.stale:
            raise RuntimeError(f"{self.path}: written by another run; replace_stale() before writing")
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
        if self.stale:
            raise RuntimeError(f"{self.path}: written by another run; replace_stale() before marking it done")
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
            "host": socket.gethostname(),
            "finished_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        }
        atomic_write_bytes(self.done_path, (json.dumps(info) + "\n").encode("utf-8"),
                           tmp=self.done_path.with_name(self.done_path.name + ".tmp"))
        fsync_dir(self.out_dir)


def read_run(path: str | Path) -> dict[str, Any] | None:
    """The run record beside the shard file ``path`` (its ``.run`` file), or None when none was recorded. A record
    written by an older version (a bare id) comes back as ``{"id": ...}``."""
    run_path = Path(path).with_name(Path(path).name + ".run")
    try:
        text = run_path.read_text(encoding="utf-8").strip()
    except OSError:
        return None
    if not text:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        return {"id": text}
    return record if isinstance(record, dict) and "id" in record else {"id": text}


def read_run_id(path: str | Path) -> str | None:
    """The id of the run record beside the shard file ``path``, or None."""
    record = read_run(path)
    return None if record is None else str(record["id"])


def read_shard(path: str | Path) -> pd.DataFrame:
    """A shard file as a DataFrame (``index`` int64, ``prediction``/``raw`` text, ``""`` for empty)."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False, na_filter=False)
    if list(df.columns) != list(SHARD_COLUMNS):
        raise MergeError(f"{path}: expected columns {','.join(SHARD_COLUMNS)}, found {','.join(df.columns)}")
    df["index"] = df["index"].astype("int64")
    return df


def merge_shards(out_dir: str | Path, num_shards: int, test: pd.DataFrame) -> pd.DataFrame:
    """Merge all finished shards into ``index,prediction,raw`` in the order of ``test``.

    Raises :class:`MergeError` when a shard file or its done marker is missing, when a shard's rows disagree with
    its marker, when the shards were written with different models, settings or cleaning rules
    (``SHARED_RUN_KEYS`` of their run records), or when an index is missing, duplicated, unknown to ``test`` or in
    the wrong shard.
    """
    _check_shard_args(0, num_shards)
    test_index = test["index"].astype("int64")
    if test_index.duplicated().any():
        dups = _examples(test_index[test_index.duplicated()])
        raise MergeError(f"the test frame itself has duplicated indices (e.g. {dups})")
    order = pd.Series(range(len(test_index)), index=test_index.sort_values(kind="stable").to_numpy())
    frames = []
    runs: dict[int, dict[str, Any] | None] = {}
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
        if rows:  # an empty shard (more shards than rows) holds no answers to disagree
            runs[i] = read_run(path)
        df["_shard"] = i
        frames.append(df)
    shared = {i: _shared_part(r) for i, r in runs.items()}
    if len({json.dumps(v, sort_keys=True) for v in shared.values()}) > 1:
        base = min(shared)
        first = shared[base]
        odd = [i for i, v in shared.items() if v != first]
        keys = sorted({k for i in odd for k in set(shared[i]) | set(first) if shared[i].get(k) != first.get(k)})
        raise MergeError(f"shards {odd} were written with another {', '.join(keys) or 'run'} than shard {base}, and "
                         "answers of two models or settings must not be mixed: rerun those shards (they predict "
                         "afresh with the current model and settings).")
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
    by_index = merged.set_index("index")
    order_ix = test_index.to_numpy()
    return pd.DataFrame({"index": order_ix, "prediction": by_index["prediction"].loc[order_ix].to_numpy(),
                         "raw": by_index["raw"].loc[order_ix].to_numpy()})


def _shared_part(record: dict[str, Any] | None) -> dict[str, Any]:
    """The part of a run record every shard must share; an old bare id stands for all of it."""
    if record is None:
        return {"id": None}
    if not any(k in record for k in SHARED_RUN_KEYS):
        return {"id": record.get("id")}
    return {k: record.get(k) for k in SHARED_RUN_KEYS}
