"""Shared test fixtures: offline hub, the real data beside the checkout when present."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
# run_all.sh, papermill and the kernels run with the interpreter running the tests (a venv need not be activated):
# run_all.sh starts ``$PYTHON``, and ``python3`` on PATH is this one
os.environ["PYTHON"] = sys.executable
os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("AMAZON_DATA_DIR", REPO.parent / "shared" / "data" / "amazon"))


@pytest.fixture(scope="session")
def amazon_dir() -> Path:
    """The real challenge data folder (`../shared/data/amazon`); skips the test when it is absent."""
    if not (SHARED_DATA / "test.csv").is_file():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random PaliGemma saved with ``save_pretrained`` (built once per session), loaded like a hub id."""
    from utils.models.paligemma.tiny import build_tiny_paligemma

    return build_tiny_paligemma(tmp_path_factory.mktemp("tiny") / "model")
