"""A small shard worker for the crash/resume tests: writes deterministic fake answers batch by batch.

Run as ``python -m tests.shard_worker TEST_CSV OUT_DIR SHARD NUM [--batch B] [--sleep S]`` from the repository
root. It prints ``resumed <k>`` (indices already written) before writing and ``done <rows>`` at the end, and does
nothing but print ``already done`` on a finished shard. Tests SIGKILL it mid-run and start it again.
"""

from __future__ import annotations

import argparse
import sys
import time

import pandas as pd

from utils.pipeline.shards import ShardWriter, shard_rows


def fake_answer(index: int) -> tuple[str, str]:
    """A deterministic (prediction, raw) for ``index``; raw has a comma, quotes and a line break on purpose."""
    prediction = f"{index % 997}.5 gram" if index % 3 else ""
    raw = f'about {index % 997},5 "g"\nsecond line' if index % 3 else ""
    return prediction, raw


def run_worker(test: pd.DataFrame, out_dir: str, shard: int, num: int, batch: int = 500, sleep: float = 0.0) -> int:
    """Write the fake answers of one shard, skipping written indices; return how many rows this call wrote."""
    rows = shard_rows(test, shard, num)
    with ShardWriter(out_dir, shard, num) as writer:
        if writer.is_done:
            print("already done", flush=True)
            return 0
        print(f"resumed {len(writer.done_indices)}", flush=True)
        todo = [int(i) for i in rows["index"] if int(i) not in writer.done_indices]
        written = 0
        for start in range(0, len(todo), batch):
            chunk = todo[start : start + batch]
            written += writer.write_batch((i, *fake_answer(i)) for i in chunk)
            if sleep:
                time.sleep(sleep)
        writer.mark_done(rows["index"])
    print(f"done {len(rows)}", flush=True)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("test_csv")
    parser.add_argument("out_dir")
    parser.add_argument("shard", type=int)
    parser.add_argument("num", type=int)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--sleep", type=float, default=0.0)
    args = parser.parse_args(argv)
    test = pd.read_csv(args.test_csv, usecols=["index", "entity_name"], dtype={"index": "int64"})
    run_worker(test, args.out_dir, args.shard, args.num, args.batch, args.sleep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
