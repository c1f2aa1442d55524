"""utils.pipeline.shards: strided shards on the index, crash-safe append, resume after SIGKILL, strict merge."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.shard_worker import fake_answer, run_worker
from utils.pipeline.shards import (
    MergeError,
    ShardWriter,
    done_marker_path,
    merge_shards,
    read_shard,
    shard_path,
    shard_rows,
)

from .tables import synthetic_test

REPO = Path(__file__).resolve().parents[1]
ENTITIES = ["width", "height", "depth", "item_weight", "voltage"]


def expected_submission(test: pd.DataFrame) -> pd.DataFrame:
    """What a complete, uninterrupted fake run must merge to."""
    predictions = [fake_answer(int(i))[0] for i in test["index"]]
    return pd.DataFrame({"index": test["index"].to_numpy(), "prediction": predictions})


def write_shard(out_dir: Path, shard: int, num: int, indices: list[int], done: bool = True) -> None:
    """Write a shard file with the given indices (right or wrong), optionally with its done marker."""
    with ShardWriter(out_dir, shard, num) as w:
        w.write_batch((i, *fake_answer(i)) for i in indices)
        if done:
            w.mark_done(indices)


# --- shard_rows / shard_path -------------------------------------------------------------------------------------


def test_shards_partition_the_sorted_index_regardless_of_row_order() -> None:
    test = synthetic_test(2003)
    shuffled = test.sample(frac=1.0, random_state=1)
    sorted_index = np.sort(test["index"].to_numpy())
    seen = []
    for i in range(4):
        part = shard_rows(test, i, 4)
        assert part["index"].tolist() == sorted_index[i::4].tolist()
        assert part["index"].tolist() == shard_rows(shuffled, i, 4)["index"].tolist()
        # rows stay whole: the entity travels with its index
        merged = part.merge(test, on="index", suffixes=("", "_orig"))
        assert (merged["entity_name"] == merged["entity_name_orig"]).all()
        seen.extend(part["index"].tolist())
    assert sorted(seen) == sorted_index.tolist()
    assert len(set(seen)) == len(seen)


@pytest.mark.parametrize("args", [(4, 4), (-1, 4), (0, 0), (1.0, 4)])
def test_shard_arguments_are_checked(args: tuple) -> None:
    with pytest.raises(ValueError):
        shard_rows(synthetic_test(10), *args)


def test_shard_path_and_marker_names(tmp_path: Path) -> None:
    assert shard_path(tmp_path, 2, 4) == tmp_path / "shard_02_of_04.csv"
    assert done_marker_path(tmp_path, 2, 4) == tmp_path / "shard_02_of_04.csv.done"
    assert shard_path(tmp_path, np.int64(11), 12).name == "shard_11_of_12.csv"


# --- ShardWriter ---------------------------------------------------------------------------------------------------


def test_writer_appends_and_reads_back(tmp_path: Path) -> None:
    w = ShardWriter(tmp_path, 0, 1)
    assert w.done_indices == set() and not w.is_done
    assert w.write_batch([(5, "1.0 gram", 'a, "b"\nc'), (7, "", "")]) == 2
    assert w.write_batch([]) == 0
    w.close()
    again = ShardWriter(tmp_path, 0, 1)
    assert again.done_indices == {5, 7} and not again.dropped_torn_line
    df = read_shard(w.path)
    assert df["index"].tolist() == [5, 7]
    assert df["prediction"].tolist() == ["1.0 gram", ""]
    assert df["raw"].tolist() == ['a, "b" c', ""]  # the line break became a space: one record, one line
    assert w.path.read_text().count("\n") == 3


def test_writer_refuses_duplicates_and_writes_nothing(tmp_path: Path) -> None:
    w = ShardWriter(tmp_path, 0, 1)
    w.write_batch([(1, "", "")])
    before = w.path.read_bytes()
    with pytest.raises(ValueError, match="index 1 is already written"):
        w.write_batch([(2, "", ""), (1, "", "")])
    with pytest.raises(ValueError, match="index 3 is already written"):
        w.write_batch([(3, "", ""), (3, "", "")])
    assert w.path.read_bytes() == before
    assert w.done_indices == {1}


def test_torn_last_line_is_dropped_on_reopen(tmp_path: Path) -> None:
    w = ShardWriter(tmp_path, 1, 2)
    w.write_batch([(10, "2.0 volt", "2 V"), (12, "", "none")])
    complete = w.path.read_bytes()
    with open(w.path, "ab") as fh:  # what a SIGKILL in the middle of a write leaves behind
        fh.write(b'14,3.0 volt,"3 V unfinis')
    w.close()  # the process died
    again = ShardWriter(tmp_path, 1, 2)
    assert again.dropped_torn_line
    assert again.done_indices == {10, 12}
    assert w.path.read_bytes() == complete  # cut back to the last complete line
    again.write_batch([(14, "3.0 volt", "3 V")])
    assert read_shard(w.path)["index"].tolist() == [10, 12, 14]


def test_torn_header_is_rewritten(tmp_path: Path) -> None:
    path = shard_path(tmp_path, 0, 1)
    path.write_bytes(b"index,predi")
    w = ShardWriter(tmp_path, 0, 1)
    assert w.done_indices == set() and w.dropped_torn_line
    assert path.read_text() == "index,prediction,raw\n"


def test_foreign_file_is_rejected(tmp_path: Path) -> None:
    shard_path(tmp_path, 0, 1).write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="expected header"):
        ShardWriter(tmp_path, 0, 1)


def test_mark_done_checks_and_is_written_last(tmp_path: Path) -> None:
    w = ShardWriter(tmp_path, 0, 1)
    w.write_batch([(1, "", ""), (2, "", "")])
    with pytest.raises(ValueError, match="1 of 3 indices not written"):
        w.mark_done([1, 2, 3])
    with pytest.raises(ValueError, match="not in this shard"):
        w.mark_done([1])
    assert not w.is_done
    w.mark_done([2, 1])
    assert w.is_done
    assert json.loads(w.done_path.read_text())["rows"] == 2
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
    with pytest.raises(RuntimeError, match="marked done"):
        w.write_batch([(3, "", "")])
    w.close()
    assert ShardWriter(tmp_path, 0, 1).is_done


def test_rerun_of_a_done_shard_does_nothing(tmp_path: Path) -> None:
    test = synthetic_test(50)
    assert run_worker(test, str(tmp_path), 0, 2, batch=7) == 25
    path = shard_path(tmp_path, 0, 2)
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    assert run_worker(test, str(tmp_path), 0, 2, batch=7) == 0
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before


# --- merge ---------------------------------------------------------------------------------------------------------


def _complete(tmp_path: Path, test: pd.DataFrame, num: int) -> None:
    for i in range(num):
        run_worker(test, str(tmp_path), i, num, batch=64)


def test_merge_gives_every_index_once_in_test_order(tmp_path: Path) -> None:
    test = synthetic_test(301)
    _complete(tmp_path, test, 3)
    merged = merge_shards(tmp_path, 3, test)
    assert list(merged.columns) == ["index", "prediction", "raw"]
    pd.testing.assert_frame_equal(merged[["index", "prediction"]], expected_submission(test))
    assert merged["raw"].tolist() == [fake_answer(int(i))[1].replace("\n", " ") for i in test["index"]]


def test_merge_missing_shard(tmp_path: Path) -> None:
    test = synthetic_test(40)
    run_worker(test, str(tmp_path), 0, 2)
    with pytest.raises(MergeError, match=r"shard 1 of 2 is missing"):
        merge_shards(tmp_path, 2, test)


def test_merge_shard_without_done_marker(tmp_path: Path) -> None:
    test = synthetic_test(40)
    _complete(tmp_path, test, 2)
    done_marker_path(tmp_path, 1, 2).unlink()
    with pytest.raises(MergeError, match=r"shard 1 of 2 is not finished"):
        merge_shards(tmp_path, 2, test)


def test_merge_missing_index(tmp_path: Path) -> None:
    test = synthetic_test(40)
    idx = sorted(test["index"].tolist())
    write_shard(tmp_path, 0, 2, idx[0::2])
    write_shard(tmp_path, 1, 2, idx[1::2][:-1])  # the last index of shard 1 never written
    with pytest.raises(MergeError, match=rf"1 test indices are in no shard \(e.g. {idx[-1]}\)"):
        merge_shards(tmp_path, 2, test)


def test_merge_duplicated_index(tmp_path: Path) -> None:
    test = synthetic_test(40)
    idx = sorted(test["index"].tolist())
    write_shard(tmp_path, 0, 2, idx[0::2] + [idx[1]])
    write_shard(tmp_path, 1, 2, idx[1::2])
    with pytest.raises(MergeError, match=rf"appear more than once: {idx[1]} in shards \[0, 1\]"):
        merge_shards(tmp_path, 2, test)


def test_merge_unknown_index(tmp_path: Path) -> None:
    test = synthetic_test(40)
    _complete(tmp_path, test, 2)
    smaller = test[test["index"] != test["index"].iloc[3]]
    with pytest.raises(MergeError, match=rf"not in the test set \(e.g. {test['index'].iloc[3]}\)"):
        merge_shards(tmp_path, 2, smaller)


def test_merge_index_in_wrong_shard(tmp_path: Path) -> None:
    test = synthetic_test(40)
    idx = sorted(test["index"].tolist())
    write_shard(tmp_path, 0, 2, idx[0::2][1:] + [idx[1]])
    write_shard(tmp_path, 1, 2, idx[1::2][1:] + [idx[0]])
    with pytest.raises(MergeError, match="wrong shard"):
        merge_shards(tmp_path, 2, test)


def test_merge_rows_changed_after_done(tmp_path: Path) -> None:
    test = synthetic_test(40)
    _complete(tmp_path, test, 2)
    with open(shard_path(tmp_path, 0, 2), "a") as fh:
        fh.write("999999,,\n")
    with pytest.raises(MergeError, match="done marker says"):
        merge_shards(tmp_path, 2, test)


# --- a real process, SIGKILLed mid-run, resumed by a new one ---------------------------------------------------------


def _lines(path: Path) -> int:
    return path.read_bytes().count(b"\n") if path.exists() else 0


def _worker(test_csv: Path, out_dir: Path, shard: int, num: int, batch: int, sleep: float) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "tests.shard_worker", str(test_csv), str(out_dir), str(shard), str(num)]
    cmd += ["--batch", str(batch), "--sleep", str(sleep)]
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def kill_resume_merge(test_csv: Path, tmp_path: Path, batch: int) -> None:
    """Shard in 4; kill shard 2's worker mid-run; resume it in a new process; merge == uninterrupted run."""
    test = pd.read_csv(test_csv, usecols=["index", "entity_name"], dtype={"index": "int64"})
    num, victim = 4, 2
    ref_dir, out_dir = tmp_path / "uninterrupted", tmp_path / "killed"
    for i in range(num):
        run_worker(test, str(ref_dir), i, num, batch=batch)
    reference = merge_shards(ref_dir, num, test)
    for i in range(num):
        if i != victim:
            run_worker(test, str(out_dir), i, num, batch=batch)

    shard_len = len(shard_rows(test, victim, num))
    proc = _worker(test_csv, out_dir, victim, num, batch, sleep=0.05)
    path = shard_path(out_dir, victim, num)
    deadline = time.monotonic() + 90
    while _lines(path) < 1 + 3 * batch and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""
    assert not done_marker_path(out_dir, victim, num).exists()
    with pytest.raises(MergeError, match=f"shard {victim} of {num} is not finished"):
        merge_shards(out_dir, num, test)
    with ShardWriter(out_dir, victim, num) as w:
        survived = len(w.done_indices)
    assert 3 * batch <= survived < shard_len

    resumed = _worker(test_csv, out_dir, victim, num, batch, sleep=0.0)
    stdout, stderr = resumed.communicate(timeout=120)
    assert resumed.returncode == 0, stderr
    assert stdout.splitlines() == [f"resumed {survived}", f"done {shard_len}"]

    merged = merge_shards(out_dir, num, test)
    assert sorted(merged["index"].tolist()) == sorted(test["index"].tolist())
    assert merged["index"].is_unique
    pd.testing.assert_frame_equal(merged, reference)
    pd.testing.assert_frame_equal(merged[["index", "prediction"]], expected_submission(test))
    # a rerun of the finished shard in a new process does nothing
    again = _worker(test_csv, out_dir, victim, num, batch, sleep=0.0)
    assert again.communicate(timeout=120)[0].strip() == "already done"


def test_sigkill_mid_run_then_resume_synthetic(tmp_path: Path) -> None:
    test_csv = tmp_path / "test.csv"
    synthetic_test(4001).to_csv(test_csv, index=False)
    kill_resume_merge(test_csv, tmp_path, batch=40)


def test_sigkill_mid_run_then_resume_real_test_set(amazon_dir: Path, tmp_path: Path) -> None:
    test_csv = amazon_dir / "test.csv"
    kill_resume_merge(test_csv, tmp_path, batch=1000)
    assert sum(len(shard_rows(pd.read_csv(test_csv, usecols=["index"]), i, 4)) for i in range(4)) == 131187


# --- run ids: answers of two different models are never mixed ------------------------------------------------------


def test_a_shard_of_another_run_is_moved_aside_and_restarted(tmp_path: Path) -> None:
    with ShardWriter(tmp_path, 1, 4, run="model-a") as w:
        w.write_batch([(5, "1.0 gram", "1 g"), (9, "", "")])
        w.mark_done([5, 9])
    assert json.loads(done_marker_path(tmp_path, 1, 4).read_text())["run_id"] == "model-a"

    with ShardWriter(tmp_path, 1, 4, run="model-a") as same:  # same run: resume, nothing moved
        assert same.moved_stale == [] and same.is_done and same.done_indices == {5, 9}

    with ShardWriter(tmp_path, 1, 4, run={"id": "model-b", "model": "b"}) as other:
        assert not other.is_done and other.done_indices == set()
        assert sorted(p.name.split(".stale-")[0] for p in other.moved_stale) == [
            "shard_01_of_04.csv", "shard_01_of_04.csv.done", "shard_01_of_04.csv.run"]
        kept = next(p for p in other.moved_stale if p.name.startswith("shard_01_of_04.csv.stale-"))
        assert "1.0 gram" in kept.read_text()  # nothing lost
        other.write_batch([(5, "2.0 gram", "2 g")])
    with ShardWriter(tmp_path, 1, 4, run={"id": "model-b", "model": "b"}) as resumed:
        assert resumed.done_indices == {5}


def test_merge_refuses_shards_of_different_models(tmp_path: Path) -> None:
    test = pd.DataFrame({"index": [0, 1, 2, 3], "entity_name": ["width"] * 4})
    for shard, model in ((0, "model-a"), (1, "model-b")):
        run = {"id": f"{model}-{shard}", "model": model, "settings": "s", "cleaning": "c", "rows": str(shard)}
        with ShardWriter(tmp_path, shard, 2, run=run) as w:
            idx = shard_rows(test, shard, 2)["index"].tolist()
            w.write_batch((i, "", "") for i in idx)
            w.mark_done(idx)
    with pytest.raises(MergeError, match=r"shards \[1\] were written with another model than shard 0"):
        merge_shards(tmp_path, 2, test)
