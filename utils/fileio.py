"""Small durable-file helpers shared by the modules that must never leave a half-written file."""

from __future__ import annotations

import os
from pathlib import Path


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Make a file creation or rename inside ``path`` durable (best effort: not every OS or filesystem allows it)."""
    try:
        fd = os.open(Path(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
