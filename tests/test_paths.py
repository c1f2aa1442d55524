"""Where am I: platform detection and default paths for Kaggle, Colab and a local clone."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from utils.env import paths


def _data(folder: Path, images: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.csv").write_text("image_link,group_id,entity_name,entity_value\n")
    (folder / "test.csv").write_text("index,image_link,group_id,entity_name\n")
    if images:
        (folder / "images").mkdir()
    return folder


def test_detect_platform(tmp_path: Path) -> None:
    assert paths.detect_platform({}, tmp_path) == "local"
    assert paths.detect_platform({"KAGGLE_KERNEL_RUN_TYPE": "Interactive"}, tmp_path) == "kaggle"
    (tmp_path / "kaggle" / "input").mkdir(parents=True)
    assert paths.detect_platform({}, tmp_path) == "kaggle"
    assert paths.detect_platform({"COLAB_RELEASE_TAG": "x"}, tmp_path / "elsewhere") == "colab"


def test_kaggle_reads_input_writes_working(tmp_path: Path) -> None:
    found = _data(tmp_path / "kaggle" / "input" / "amazon-ml" / "dataset", images=True)
    chosen = paths.default_paths(environ={}, root=tmp_path)
    assert chosen.platform == "kaggle"
    assert chosen.data_dir == found
    assert chosen.train_csv == found / "train.csv" and chosen.test_csv == found / "test.csv"
    assert chosen.image_dir == found / "images"  # read in place
    assert chosen.work_dir == tmp_path / "kaggle" / "working" / "work"
    assert chosen.out_dir == tmp_path / "kaggle" / "working"


def test_kaggle_without_data_falls_back_to_the_demo(tmp_path: Path) -> None:
    (tmp_path / "kaggle" / "input").mkdir(parents=True)
    chosen = paths.default_paths(environ={}, root=tmp_path)
    assert chosen.data_dir is None and chosen.train_csv is None
    assert chosen.image_dir == chosen.work_dir / "images"


def test_colab(tmp_path: Path) -> None:
    found = _data(tmp_path / "content" / "drive" / "MyDrive" / "amazon")
    chosen = paths.default_paths("colab", environ={}, root=tmp_path)
    assert chosen.data_dir == found
    assert chosen.work_dir == tmp_path / "content" / "work"
    assert chosen.out_dir == tmp_path / "content" / "out"
    assert chosen.image_dir == chosen.work_dir / "images"


def test_local_clone(tmp_path: Path) -> None:
    chosen = paths.default_paths("local", environ={}, root=tmp_path)
    assert chosen.repo_dir == Path(__file__).resolve().parents[1]
    assert (chosen.repo_dir / "utils" / "env" / "paths.py").is_file()
    assert chosen.work_dir == chosen.repo_dir / "work" and chosen.out_dir == chosen.repo_dir / "out"
    found = _data(tmp_path / "mydata")
    assert paths.default_paths("local", environ={"AMAZON_DATA_DIR": str(found)}, root=tmp_path).data_dir == found


def test_unknown_platform() -> None:
    with pytest.raises(ValueError, match="platform"):
        paths.default_paths("azure", environ={})


def test_find_data_dir_depth(tmp_path: Path) -> None:
    deep = _data(tmp_path / "a" / "b" / "c")
    assert paths.find_data_dir([tmp_path], max_depth=2) is None
    assert paths.find_data_dir([tmp_path], max_depth=3) == deep
    assert paths.find_data_dir([tmp_path / "missing", deep], max_depth=0) == deep


def test_resolve() -> None:
    default = Path("/x/default")
    assert paths.resolve("", default) == default
    assert paths.resolve("  ", default) == default
    assert paths.resolve(None, default) == default
    assert paths.resolve("data/train.csv", default) == Path("data/train.csv")
    assert paths.resolve("~/a", default) == Path(os.path.expanduser("~/a"))


def test_is_writable(tmp_path: Path) -> None:
    assert paths.is_writable(tmp_path / "new" / "folder")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert not paths.is_writable(blocker / "below")


def test_versions_and_describe() -> None:
    found = paths.versions(("pandas", "PIL", "surely-not-installed-pkg"))
    assert found["python"].count(".") == 2
    assert found["pandas"][0].isdigit() and found["PIL"][0].isdigit()
    assert found["surely-not-installed-pkg"] == "missing"
    text = paths.describe(paths.default_paths("local", environ={}))
    assert "platform  local" in text and "pandas" in text
