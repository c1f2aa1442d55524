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


def atomic_write_bytes(dest: str | os.PathLike[str], data: bytes, tmp: str | os.PathLike[str] | None = None,
                       fsync: bool = True) -> None:
    """Write ``data`` to ``tmp`` (default: ``dest`` + ``.tmp<pid>``), optionally fsync it, then rename it over
    ``dest``: readers see the old file or the whole new one, never a torn one. The temp file is removed on error."""
    dest = Path(dest)
    tmp = Path(tmp) if tmp is not None else dest.with_name(f"{dest.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, dest)
    except BaseException:
        try:
            tmp.unlink()
        except FileNotFoundError:
            pass
        raise


def move_into(folder: str | os.PathLike[str], dest: str | os.PathLike[str], last: str = "") -> list[Path]:
    """Move every file of ``folder`` into ``dest`` (same file system: renames, which need no space), the one named
    ``last`` after all others; the moved paths. Write a set of outputs into a folder beside ``dest`` first, then move
    them in: a run that fails while writing (a full disk) replaces none of the old ones."""
    folder, dest = Path(folder), Path(dest)
    files = sorted((p for p in folder.iterdir() if p.is_file()), key=lambda p: (p.name == last, p.name))
    for path in files:
        os.replace(path, dest / path.name)
    fsync_dir(dest)
    return [dest / p.name for p in files]
