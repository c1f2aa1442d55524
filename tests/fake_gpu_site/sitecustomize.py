"""Loaded at interpreter start when this folder is on PYTHONPATH: fake the GPUs named in FAKE_GPUS (tests only)."""

import os
import sys

if os.environ.get("FAKE_GPUS"):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import fake_gpu

    fake_gpu.install_from_env()
    sys.path.pop(0)
