"""The built-in demo data set: files, formats, ground truth, determinism."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from utils.core.units import ENTITY_UNIT_MAP, parse_value
from utils.data import demo
from utils.data.images import image_path
from utils.data.tables import load_test, load_train


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> demo.DemoData:
    return demo.make_demo_data(tmp_path_factory.mktemp("demo"), n_train=40, n_test=24, seed=3)


def _digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_files_and_columns(small: demo.DemoData) -> None:
    train = pd.read_csv(small.train_csv, keep_default_na=False)
    test = pd.read_csv(small.test_csv)
    labels = pd.read_csv(small.labels_csv, keep_default_na=False)
    assert list(train.columns) == ["image_link", "group_id", "entity_name", "entity_value"]
    assert list(test.columns) == ["index", "image_link", "group_id", "entity_name"]
    assert list(labels.columns) == ["index", "entity_name", "entity_value"]
    assert (len(train), len(test), len(labels)) == (40, 24, 24)
    assert (small.n_train, small.n_test) == (40, 24)


def test_the_project_loaders_accept_it(small: demo.DemoData) -> None:
    train = load_train(small.train_csv)
    test = load_test(small.test_csv)
    assert len(train) == 40 and len(test) == 24
    assert set(train["entity_name"]) == set(demo.DEMO_ENTITIES)


def test_test_index_is_unique_and_not_contiguous(small: demo.DemoData) -> None:
    test = pd.read_csv(small.test_csv)
    index = test["index"]
    assert index.is_unique
    assert list(index) != list(range(len(index))), "index must not be row numbers"
    labels = pd.read_csv(small.labels_csv, keep_default_na=False)
    assert list(labels["index"]) == list(index)
    assert list(labels["entity_name"]) == list(test["entity_name"])


def test_every_link_has_its_image(small: demo.DemoData) -> None:
    train = pd.read_csv(small.train_csv)
    test = pd.read_csv(small.test_csv)
    links = list(train["image_link"]) + list(test["image_link"])
    assert len(set(links)) == len(links)
    for link in links:
        assert link.startswith(demo.DEMO_URL_PREFIX)
        path = image_path(small.image_dir, link)
        assert path.is_file(), path
        assert path.name == link.rsplit("/", 1)[-1]
    with Image.open(image_path(small.image_dir, links[0])) as image:
        assert image.mode == "RGB" and image.size == demo.IMAGE_SIZE


def test_labels_are_valid_values_for_their_entity(small: demo.DemoData) -> None:
    train = pd.read_csv(small.train_csv, keep_default_na=False)
    labels = pd.read_csv(small.labels_csv, keep_default_na=False)
    both = pd.concat([train[["entity_name", "entity_value"]], labels[["entity_name", "entity_value"]]])
    answered = both[both["entity_value"] != ""]
    assert len(answered) > 0.7 * len(both)
    for entity, value in zip(answered["entity_name"], answered["entity_value"]):
        parsed = parse_value(value)
        assert parsed is not None, value
        assert parsed[1] in ENTITY_UNIT_MAP[entity], (entity, value)


def test_some_rows_have_no_answer(tmp_path: Path) -> None:
    made = demo.make_demo_data(tmp_path, 100, 2, seed=0)
    labels = pd.read_csv(made.train_csv, keep_default_na=False)
    assert 3 <= (labels["entity_value"] == "").sum() <= 30


def test_same_seed_same_files_other_seed_other_files(tmp_path: Path) -> None:
    a = demo.make_demo_data(tmp_path / "a", 10, 6, seed=7)
    b = demo.make_demo_data(tmp_path / "b", 10, 6, seed=7)
    c = demo.make_demo_data(tmp_path / "c", 10, 6, seed=8)
    assert _digest(a.root) == _digest(b.root)
    assert _digest(a.root) != _digest(c.root)


def test_rejects_empty_sizes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="n_train"):
        demo.make_demo_data(tmp_path, 0, 5)


def test_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main([str(tmp_path / "d"), "--n-train", "3", "--n-test", "2", "--seed", "1"]) == 0
    assert "3 train rows, 2 test rows" in capsys.readouterr().out
    assert len(list((tmp_path / "d" / "images").glob("*.jpg"))) == 5


def test_the_answer_is_readable_in_the_image(small: demo.DemoData) -> None:
    """OCR finds the labelled number in most images: the ground truth is really printed there."""
    from utils.models.ocr.engine import OcrSettings
    from utils.models.ocr.reading import ocr_many

    train = pd.read_csv(small.train_csv, keep_default_na=False)
    answered = train[train["entity_value"] != ""].head(8)
    paths = [image_path(small.image_dir, link) for link in answered["image_link"]]
    results = dict(ocr_many(paths, None, OcrSettings(), workers=1))
    found = 0
    for path, value in zip(paths, answered["entity_value"]):
        number = parse_value(value)[0]
        text = " ".join(box.text for box in results[path].boxes) if results[path] else ""
        numbers = {float(n) for n in re.findall(r"\d+(?:\.\d+)?", text)}
        found += number in numbers
    assert found >= 6, f"only {found} of {len(paths)} labelled numbers were read back"
