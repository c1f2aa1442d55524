"""utils.env.fileio: directory fsync is best effort and never raises."""

from __future__ import annotations

import os

import pytest

from utils.env import fileio


def test_fsync_dir_on_a_real_folder(tmp_path) -> None:
    (tmp_path / "a").write_text("x")
    fileio.fsync_dir(tmp_path)  # must not raise
    assert (tmp_path / "a").read_text() == "x"


def test_fsync_dir_on_a_missing_folder_is_silent(tmp_path) -> None:
    fileio.fsync_dir(tmp_path / "nope")


def test_fsync_dir_closes_its_descriptor(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    closed: list[int] = []
    real_close = os.close
    monkeypatch.setattr(os, "close", lambda fd: (closed.append(fd), real_close(fd)))
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError("not supported")))
    fileio.fsync_dir(tmp_path)
    assert len(closed) == 1


def test_atomic_write_replaces_whole_and_leaves_no_temp(tmp_path) -> None:
    dest = tmp_path / "f.json"
    dest.write_bytes(b"old")
    fileio.atomic_write_bytes(dest, b"new contents")
    assert dest.read_bytes() == b"new contents"
    assert [p.name for p in tmp_path.iterdir()] == ["f.json"]


def test_atomic_write_failure_keeps_the_old_file_and_removes_the_temp(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    dest = tmp_path / "f.json"
    dest.write_bytes(b"old")
    monkeypatch.setattr(os, "replace", lambda a, b: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        fileio.atomic_write_bytes(dest, b"new", tmp=tmp_path / ".f.part")
    assert dest.read_bytes() == b"old"
    assert not (tmp_path / ".f.part").exists()
