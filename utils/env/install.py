"""A notebook's own set-up in a fresh session: the pinned requirements installed before anything else is imported.

A shard notebook written by ``run_all.sh --prepare-only`` runs in a session of its own (Kaggle, Colab), where the
repository may be a read-only input and nothing of ``requirements.txt`` is installed yet. Its set-up cell calls
``requirements(repo_dir, install_requirements)``, which runs ``setup.sh --in-notebook`` (keeps the installed torch,
installs the pinned rest; no editable install of a read-only folder, no kernel registration: the kernel is running).
Standard library only: it runs before the requirements are there.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path


def requirements(repo_dir: str, wanted: bool) -> None:
    """When ``wanted``, install the repository's pinned requirements into this kernel's Python (``setup.sh
    --in-notebook``); ``RuntimeError`` with pip's last lines when that fails."""
    if not wanted:
        return
    import sys

    script = Path(repo_dir) / "setup.sh"
    if not script.is_file():
        raise RuntimeError(f"{script} not found: set repo_dir to the folder holding this repository")
    done = subprocess.run(["bash", str(script), "--in-notebook"], capture_output=True, text=True,
                          env={**os.environ, "PYTHON": sys.executable})
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-10:])
        raise RuntimeError(f"setup.sh --in-notebook failed (exit {done.returncode}):\n{tail}")
    print(done.stdout.strip().splitlines()[-1] if done.stdout.strip() else "setup: done")
