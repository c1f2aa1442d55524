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
from utils.pipeline.shards import read_shard, shard_path, shard_rows
from utils.pipeline.workdir import WorkDir


def warm_shard(work_dir: str, shard_index: int, num_shards: int, backend: str, artifact_dir: str = "",
               image_dir: str = "", shards_dir: str = "", settings: dict | None = None) -> int:
    """Warm the unanswered rows of one shard, last row first; how many rows were handed to the backend."""
    work = WorkDir.of(work_dir)
    rows = shard_rows(work.read_table("test"), shard_index, num_shards)
    path = shard_path(work.shards(shards_dir), shard_index, num_shards)
    if path.is_file():
        try:
            done = set(read_shard(path)["index"].tolist())
        except Exception:  # noqa: BLE001 - a file being appended to: warm everything
            done = set()
        rows = rows[~rows["index"].isin(done)]
    rows = rows.iloc[::-1].reset_index(drop=True)
    chosen = get_backend(backend)
    if not hasattr(chosen, "warm") or rows.empty:
        return 0
    chosen.warm(rows, Path(work.image_dir(image_dir)), Path(work.fitted_artifact(backend, artifact_dir)),
                **(settings or {}))
    return len(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m utils.pipeline.warm", description=__doc__.split("\n")[0])
    parser.add_argument("--work", required=True, help="the run's work folder")
    parser.add_argument("--shard", type=int, required=True, help="the shard to help")
    parser.add_argument("--shards", type=int, required=True, help="how many shards the test set is cut into")
    parser.add_argument("--backend", required=True)
    parser.add_argument("--artifact-dir", default="")
    parser.add_argument("--images", default="")
    parser.add_argument("--shards-dir", default="")
    parser.add_argument("--settings", default="{}", help="the shard's backend settings (JSON)")
    a = parser.parse_args(argv)
    n = warm_shard(a.work, a.shard, a.shards, a.backend, a.artifact_dir, a.images, a.shards_dir,
                   json.loads(a.settings))
    print(f"warmed {n} rows of shard {a.shard}/{a.shards}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
