#!/usr/bin/env bash
# Run the notebook suite in batch with papermill: 01 prepare, 02 fit, N x 03 shards in parallel, 04 postprocess.
# With no arguments: renders the built-in demo data set and runs everything on it (CPU, no network needed).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NB="$REPO/notebooks"

usage() {
  cat <<EOF
Usage: bash run_all.sh [options]

Runs notebooks/01..04 through papermill (kernel python3), shard notebooks in parallel; every executed notebook is
kept under RUNS/<timestamp>/. With no options: the built-in demo, the CPU "ocr" backend, 4 shards.

Data
  --train-csv PATH     training CSV (default: "demo" = render the built-in demo data into WORK/demo)
  --test-csv PATH      test CSV (needed with a real --train-csv)
  --labels-csv PATH    answers for the test rows, to score in 04 (the demo brings its own)
  --images DIR         image cache; missing images are downloaded when the network allows
  --per-entity N       training rows sampled per entity (default 0 = all)
  --seed N             seed for the demo, the sample and the split (default 0)
  --demo-train N       demo training rows (default: the demo's, 240)
  --demo-test N        demo test rows (default: the demo's, 100)
Model and sharding
  --backend NAME       ocr (CPU OCR + ranker, default) or paligemma (GPU)
  --shards N           parallel shard notebooks (default 4)
  --threads N          CPU threads per shard (default 1)
  --fit-settings JSON  backend settings for 02, e.g. '{"model_id": "/models/tiny", "max_steps": 4}'
  --infer-settings JSON  backend settings for every 03 shard, e.g. '{"model_id": "/models/tiny"}'
  --refit              fit again in 02 even when a fit with the same data and settings exists
  --batch-size N       rows per predicted batch (default 0 = the backend's default)
Folders
  --out DIR            gets submission.csv and the report (default: REPO/out)
  --work DIR           hand-over folder between the stages (default: REPO/work)
  --runs DIR           executed notebooks go to DIR/<timestamp>/ (default: REPO/runs)
  --repo-dir DIR       the notebooks' repo_dir parameter (default: this clone; for --prepare-only the path the
                       repo will have in the Kaggle session, e.g. /kaggle/input/<dataset>)
Other
  --prepare-only       only write the N parameterised shard notebooks (for separate Kaggle sessions) into
                       OUT/shard_notebooks/; runs nothing
  -h, --help           this help
EOF
}

TRAIN_CSV="demo"; TEST_CSV=""; LABELS_CSV=""; IMAGES=""; PER_ENTITY=0; SEED=0; DEMO_TRAIN=0; DEMO_TEST=0
BACKEND="ocr"; SHARDS=4; THREADS=1; FIT_SETTINGS="{}"; INFER_SETTINGS="{}"; BATCH_SIZE=0
OUT="$REPO/out"; WORK="$REPO/work"; RUNS="$REPO/runs"; PREPARE_ONLY=0; REPO_PARAM="$REPO"; REFIT=False

need_value() { [[ $# -ge 2 && -n "$2" ]] || { echo "run_all.sh: $1 needs a value (see --help)" >&2; exit 2; }; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --train-csv) need_value "$@"; TRAIN_CSV="$2"; shift 2 ;;
    --test-csv) need_value "$@"; TEST_CSV="$2"; shift 2 ;;
    --labels-csv) need_value "$@"; LABELS_CSV="$2"; shift 2 ;;
    --images) need_value "$@"; IMAGES="$2"; shift 2 ;;
    --per-entity) need_value "$@"; PER_ENTITY="$2"; shift 2 ;;
    --seed) need_value "$@"; SEED="$2"; shift 2 ;;
    --demo-train) need_value "$@"; DEMO_TRAIN="$2"; shift 2 ;;
    --demo-test) need_value "$@"; DEMO_TEST="$2"; shift 2 ;;
    --backend) need_value "$@"; BACKEND="$2"; shift 2 ;;
    --shards) need_value "$@"; SHARDS="$2"; shift 2 ;;
    --threads) need_value "$@"; THREADS="$2"; shift 2 ;;
    --batch-size) need_value "$@"; BATCH_SIZE="$2"; shift 2 ;;
    --fit-settings) need_value "$@"; FIT_SETTINGS="$2"; shift 2 ;;
    --infer-settings) need_value "$@"; INFER_SETTINGS="$2"; shift 2 ;;
    --out) need_value "$@"; OUT="$2"; shift 2 ;;
    --work) need_value "$@"; WORK="$2"; shift 2 ;;
    --runs) need_value "$@"; RUNS="$2"; shift 2 ;;
    --repo-dir) need_value "$@"; REPO_PARAM="$2"; shift 2 ;;
    --prepare-only) PREPARE_ONLY=1; shift ;;
    --refit) REFIT=True; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "run_all.sh: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done

for pair in "shards:$SHARDS" "threads:$THREADS" "per-entity:$PER_ENTITY" "seed:$SEED" \
            "demo-train:$DEMO_TRAIN" "demo-test:$DEMO_TEST" "batch-size:$BATCH_SIZE"; do
  [[ "${pair#*:}" =~ ^[0-9]+$ ]] || { echo "run_all.sh: --${pair%%:*} must be a whole number, got '${pair#*:}'" >&2; exit 2; }
done
[[ "$SHARDS" -ge 1 ]] || { echo "run_all.sh: --shards must be at least 1" >&2; exit 2; }
[[ "$THREADS" -ge 1 ]] || { echo "run_all.sh: --threads must be at least 1" >&2; exit 2; }
for pair in "fit-settings:$FIT_SETTINGS" "infer-settings:$INFER_SETTINGS"; do
  python3 -c 'import json, sys; assert isinstance(json.loads(sys.argv[1]), dict)' "${pair#*:}" 2>/dev/null \
    || { echo "run_all.sh: --${pair%%:*} must be a JSON object, got '${pair#*:}'" >&2; exit 2; }
done
if [[ "$TRAIN_CSV" != "demo" && -z "$TEST_CSV" ]]; then
  echo "run_all.sh: --train-csv needs --test-csv too" >&2; exit 2
fi

abspath() { python3 -c 'import os, sys; print(os.path.abspath(sys.argv[1]))' "$1"; }
OUT="$(abspath "$OUT")"; WORK="$(abspath "$WORK")"; RUNS="$(abspath "$RUNS")"
[[ "$TRAIN_CSV" == "demo" ]] || TRAIN_CSV="$(abspath "$TRAIN_CSV")"
[[ -z "$TEST_CSV" ]] || TEST_CSV="$(abspath "$TEST_CSV")"
[[ -z "$LABELS_CSV" ]] || LABELS_CSV="$(abspath "$LABELS_CSV")"
[[ -z "$IMAGES" ]] || IMAGES="$(abspath "$IMAGES")"

export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
export WANDB_MODE="${WANDB_MODE:-offline}"
export WANDB_DIR="${WANDB_DIR:-$WORK}"
export OCR_CACHE_DIR="${OCR_CACHE_DIR:-$WORK/ocr_cache}"
export MPLBACKEND=Agg

papermill() {  # papermill INPUT OUTPUT [-p NAME VALUE ...]
  local input="$1" output="$2"; shift 2
  python3 -m papermill "$input" "$output" -k python3 --cwd "$NB" -p repo_dir "$REPO_PARAM" "$@"
}

if [[ "$PREPARE_ONLY" -eq 1 ]]; then
  dest="$OUT/shard_notebooks"
  mkdir -p "$dest"
  for ((i = 0; i < SHARDS; i++)); do
    name="$(printf '03_infer_shard_%02d_of_%02d.ipynb' "$i" "$SHARDS")"
    papermill "$NB/03_infer_shard.ipynb" "$dest/$name" --prepare-only \
      -p shard_index "$i" -p num_shards "$SHARDS" -p backend "$BACKEND" -p work_dir "$WORK" \
      -p num_threads "$THREADS" -p batch_size "$BATCH_SIZE" -y "settings: $INFER_SETTINGS" ${IMAGES:+-p image_dir "$IMAGES"} ${TEST_CSV:+-p test_csv "$TEST_CSV"} 2>/dev/null
    echo "wrote $dest/$name"
  done
  echo "upload each into its own session (set repo_dir/work_dir there if they differ), then run 04 with num_shards=$SHARDS"
  exit 0
fi

stamp="$(date -u +%Y%m%dT%H%M%SZ)"
RUN_DIR="$RUNS/$stamp"
n=1
while [[ -e "$RUN_DIR" ]]; do RUN_DIR="$RUNS/$stamp-$n"; n=$((n + 1)); done
mkdir -p "$RUN_DIR" "$OUT" "$WORK"
echo "run_all.sh: executed notebooks and logs in $RUN_DIR"
start=$SECONDS

echo "[01] prepare data"
papermill "$NB/01_prepare_data.ipynb" "$RUN_DIR/01_prepare_data.ipynb" \
  -p train_csv "$TRAIN_CSV" -p test_csv "$TEST_CSV" -p labels_csv "$LABELS_CSV" -p image_dir "$IMAGES" \
  -p work_dir "$WORK" -p per_entity "$PER_ENTITY" -p seed "$SEED" \
  -p demo_train "$DEMO_TRAIN" -p demo_test "$DEMO_TEST" >"$RUN_DIR/01_prepare_data.log" 2>&1 \
  || { echo "[01] failed; see $RUN_DIR/01_prepare_data.log and the notebook" >&2; tail -n 30 "$RUN_DIR/01_prepare_data.log" >&2; exit 1; }

echo "[02] fit backend '$BACKEND'"
papermill "$NB/02_finetune_lora.ipynb" "$RUN_DIR/02_finetune_lora.ipynb" \
  -p backend "$BACKEND" -p work_dir "$WORK" -p refit "$REFIT" -y "settings: $FIT_SETTINGS" >"$RUN_DIR/02_finetune_lora.log" 2>&1 \
  || { echo "[02] failed; see $RUN_DIR/02_finetune_lora.log and the notebook" >&2; tail -n 30 "$RUN_DIR/02_finetune_lora.log" >&2; exit 1; }

echo "[03] $SHARDS shards in parallel, $THREADS thread(s) each"
pids=()
for ((i = 0; i < SHARDS; i++)); do
  tag="$(printf '03_infer_shard_%02d_of_%02d' "$i" "$SHARDS")"
  OMP_NUM_THREADS="$THREADS" MKL_NUM_THREADS="$THREADS" OPENBLAS_NUM_THREADS="$THREADS" \
    papermill "$NB/03_infer_shard.ipynb" "$RUN_DIR/$tag.ipynb" \
    -p shard_index "$i" -p num_shards "$SHARDS" -p backend "$BACKEND" -p work_dir "$WORK" \
    -p num_threads "$THREADS" -p batch_size "$BATCH_SIZE" -y "settings: $INFER_SETTINGS" >"$RUN_DIR/$tag.log" 2>&1 &
  pids+=("$!")
done
failed=()
for i in "${!pids[@]}"; do
  if ! wait "${pids[$i]}"; then failed+=("$i"); fi
done
if [[ ${#failed[@]} -gt 0 ]]; then
  for i in "${failed[@]}"; do
    log="$(printf '%s/03_infer_shard_%02d_of_%02d.log' "$RUN_DIR" "$i" "$SHARDS")"
    echo "[03] shard $i failed; see $log and the notebook beside it" >&2
    tail -n 15 "$log" >&2
  done
  exit 1
fi

echo "[04] merge, check, submit, report"
papermill "$NB/04_postprocess.ipynb" "$RUN_DIR/04_postprocess.ipynb" \
  -p num_shards "$SHARDS" -p work_dir "$WORK" -p out_dir "$OUT" -p labels_csv "$LABELS_CSV" \
  -p interactive False >"$RUN_DIR/04_postprocess.log" 2>&1 \
  || { echo "[04] failed; see $RUN_DIR/04_postprocess.log and the notebook" >&2; tail -n 30 "$RUN_DIR/04_postprocess.log" >&2; exit 1; }

echo "run_all.sh: done in $((SECONDS - start)) s: $OUT/submission.csv"
[[ -f "$OUT/report.md" ]] && grep -m1 "Overall F1" "$OUT/report.md" || true
