#!/usr/bin/env bash
# Run the notebook suite in batch: 01 prepare, 02 fit, the shards of 03 in parallel, 04 postprocess.
# With no arguments: renders the built-in demo data set and runs everything on it (CPU, no network needed).
# All the work is done by the Python runner (utils/pipeline/run.py): option checks, the work-folder lock, shard
# scheduling over GPUs or cores, retries of kernels that fail to start, progress on the console, and stopping
# every process it started when killed. `bash run_all.sh --help` lists the options.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "${PYTHON:-python3}" -m utils.pipeline.run "$@"
