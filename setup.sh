#!/usr/bin/env bash
# Install everything the pipeline and its tests need into the current Python environment.
#   bash setup.sh            # torch 2.13.0 (kept if a torch is already installed, as on Kaggle/Colab), then the rest
#   bash setup.sh --in-notebook   # from a notebook's set-up cell (utils.env.install): only the requirements; no
#                                 # editable install (the folder may be a read-only input), no kernel registration
# TORCH_SPEC overrides which torch to install when none is present (default: torch==2.13.0).
set -euo pipefail
IN_NOTEBOOK=0
[ "${1:-}" = "--in-notebook" ] && IN_NOTEBOOK=1
cd "$(dirname "$0")"
PY=${PYTHON:-python3}

# 1. torch first, then pinned with a constraint, so no later requirement lets pip pick another (multi-GB) build.
if installed=$("$PY" -c 'import torch; print(torch.__version__)' 2>/dev/null); then
  echo "setup: keeping installed torch $installed"
else
  "$PY" -m pip install -q "${TORCH_SPEC:-torch==2.13.0}"
  installed=$("$PY" -c 'import torch; print(torch.__version__)')
fi
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "torch==${installed}" >"$constraints"

# 2. everything else, pinned in requirements.txt (never torchvision: it does not import beside this torch).
"$PY" -m pip install -q -r requirements.txt -c "$constraints"

if [ "$IN_NOTEBOOK" = 1 ]; then
  echo "setup: requirements ready (torch ${installed})"
  exit 0
fi

# 3. this package itself, editable (its dependencies are the pinned ones above).
"$PY" -m pip install -q --no-deps -e .

# 4. a Jupyter kernel for papermill.
"$PY" -m ipykernel install --sys-prefix --name python3 >/dev/null
echo "setup: done (torch ${installed})"
