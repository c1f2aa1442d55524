"""An idle core helps a running shard: ``python -m utils.pipeline.warm`` prepares the shard's last rows first.

When the queue of shards is empty and a slot is free while other shards still run, ``utils.pipeline.run`` starts
this for the running shard with the most rows left. It calls the backend's optional ``warm(rows, image_dir,
artifact_dir, **settings)`` on that shard's unanswered rows in reverse order; for the ocr backend that is OCR into
the shared cache, so the shard, moving forward, finds its last images already read. It writes no shard file (each
shard still writes only its own rows, under its lock), and stopping it at any moment loses nothing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from utils.models.backend import get_backend
from utils.pipeline.params import InferParams, ParamError, build
from utils.pipeline.shards import read_shard, shard_path, shard_rows
from utils.pipeline.workdir import WorkDir


def warm_shard(params: InferParams) -> int:
    """Warm the unanswered rows of shard ``params.shard_index``, last row first, with the settings the shard's own
    ``predict`` gets (``InferParams.backend_settings``); how many rows were handed to the backend."""
    p = params
    work = WorkDir.of(p.work_dir)
    rows = shard_rows(work.read_table("test"), p.shard_index, p.num_shards)
    path = shard_path(work.shards(p.shards_dir), p.shard_index, p.num_shards)
    if path.is_file():
        try:
            done = set(read_shard(path)["index"].tolist())
        except Exception:  # noqa: BLE001 - a file being appended to: warm everything
            done = set()
        rows = rows[~rows["index"].isin(done)]
    rows = rows.iloc[::-1].reset_index(drop=True)
    chosen = get_backend(p.backend)
    if not hasattr(chosen, "warm") or rows.empty:
        return 0
    chosen.warm(rows, Path(work.image_dir(p.image_dir)), Path(work.fitted_artifact(p.backend, p.artifact_dir)),
                **p.backend_settings())
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.pipeline.warm", description=__doc__.split("\n")[0])
    parser.add_argument("--params", required=True,
                        help="the shard's stage 03 parameters as a JSON object (utils.pipeline.params.InferParams)")
    a = parser.parse_args(argv)
    try:
        params = build(InferParams, json.loads(a.params))
    except (ValueError, ParamError) as exc:
        parser.error(str(exc))
    n = warm_shard(params)
    print(f"warmed {n} rows of shard {params.shard_index}/{params.num_shards}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
