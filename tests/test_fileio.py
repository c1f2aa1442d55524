"""utils.fileio: directory fsync is best effort and never raises."""

from __future__ import annotations

import os

import pytest

from utils import fileio


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
