"""Benchmark stage 03 on Ray against the local executor, and 1 against 2 Ray worker nodes, in one run.

The built-in demo with ``--rows`` test rows (default 200), fitted once with the ocr backend (``run_all.sh`` stages 01
and 02, in the first run); in each run stage 03 alone is timed (from the runner's first ``[03]`` line to its
``[04]`` line, wall clock, each run with an empty OCR cache and its own shard folder, so every image is read
afresh):

- ``local``: today's runner (shard notebooks over the machine's cores, ``--shards 2``);
- ``ray``: ``--executor ray`` with a local Ray instance (started inside stage 03: its start-up is counted);
- ``1 node`` / ``2 nodes``: ``--executor ray --ray-address`` of a loopback cluster of a head with no CPU and one or
  two worker nodes of one CPU each.

Printed: rows/s of each, ``ray / local`` (the overhead; target >= 0.85) and ``2 nodes / 1 node`` (the scaling).

Usage: ``nice python bench/ray_overhead.py [--rows 200]`` (about 8 minutes on 2 cores)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # every node on 127.0.0.1


def stage_03(root: Path, name: str, rows: int, *more: str) -> float:
    """Run the pipeline (01 and 02 already done in ``root/work``), return stage 03's rows/s."""
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "OCR_CACHE_DIR": str(root / f"ocr_{name}")}
    cmd = ["bash", str(REPO / "run_all.sh"), "--demo-train", "60", "--demo-test", str(rows), "--shards", "2",
           "--work", str(root / "work"), "--runs", str(root / "runs"), "--out", str(root / f"out_{name}"),
           "--shards-dir", str(root / f"shards_{name}"), *more]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO)
    start = end = None
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        lines.append(line)
        if start is None and line.startswith("[03]") and "Ray: " not in line:
            start = time.perf_counter()
        if line.startswith("[04]") and end is None:
            end = time.perf_counter()
    if proc.wait() != 0 or start is None or end is None:
        raise SystemExit(f"{name}: run failed\n{''.join(lines[-30:])}")
    rate = rows / (end - start)
    print(f"{name:>8}: {rows} rows in {end - start:6.1f} s = {rate:5.2f} rows/s", flush=True)
    return rate


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--rows", type=int, default=200)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ray_overhead_"))
    print(f"work in {root}; {os.cpu_count()} CPU cores", flush=True)
    local = stage_03(root, "local", args.rows)  # the first run also prepares and fits (not timed)
    ray_local = stage_03(root, "ray", args.rows, "--executor", "ray")
    print(f"ray / local: {ray_local / local:.2f} (target >= 0.85)", flush=True)

    from ray.cluster_utils import Cluster

    rates = {}
    for workers in (1, 2):
        node = {"object_store_memory": 100 * 2**20, "node_ip_address": "127.0.0.1"}
        cluster = Cluster(initialize_head=True, head_node_args={**node, "num_cpus": 0, "include_dashboard": False})
        for _ in range(workers):
            cluster.add_node(**node, num_cpus=1)
        try:
            rates[workers] = stage_03(root, f"{workers} node{'s' if workers > 1 else ''}", args.rows,
                                      "--executor", "ray", "--ray-address", cluster.address)
        finally:
            cluster.shutdown()
    print(f"2 nodes / 1 node: {rates[2] / rates[1]:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
