"""utils.pipeline.predict and utils.models.backend: the shard loop with a fake backend, resume after a failure, the registry."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

import utils.models.backend as backends
from utils.core.sanity import check_submission
from utils.core.units import normalize_prediction
from utils.models.backend import Backend, available_backends, get_backend, register_backend
from utils.pipeline.predict import run_shard
from utils.pipeline.shards import MergeError, ShardWriter, done_marker_path, read_shard, shard_path, shard_rows
from utils.pipeline.submission import build_submission

from . import tables

REPO = Path(__file__).resolve().parents[1]
RAW_BY_ENTITY = {
    "width": "{v} cm",
    "height": "approx. {v} inches",
    "item_weight": "The item weight is {v} g.",
    "voltage": "{v}V",
    "item_volume": "N/A",
}


def synthetic_test(n: int = 120, seed: int = 0) -> pd.DataFrame:
    return tables.synthetic_test(n, seed, entities=list(RAW_BY_ENTITY))


def raw_answer(index: int, entity: str) -> str:
    """What the fake model 'reads' for a row (a few spellings the cleaning step must handle)."""
    return "" if index % 11 == 0 else RAW_BY_ENTITY[entity].format(v=index % 40 + 1)


class FakeBackend:
    """A Backend that answers from ``raw_answer``, in batches, and can fail or misbehave on demand."""

    name = "fake"

    def __init__(self, fail_after: int | None = None, skip: set[int] | None = None, invent: int | None = None) -> None:
        self.fail_after = fail_after
        self.skip = skip or set()
        self.invent = invent
        self.asked: list[list[int]] = []
        self.settings: list[dict[str, Any]] = []

    def fit(self, train: pd.DataFrame, val: pd.DataFrame, image_dir: Path, out_dir: Path, **settings: Any) -> Path:
        return Path(out_dir)

    def predict(
        self, rows: pd.DataFrame, image_dir: Path, artifact_dir: Path, batch_size: int = 8, **settings: Any
    ) -> Iterator[list[tuple[int, str]]]:
        assert isinstance(image_dir, Path) and isinstance(artifact_dir, Path)
        self.asked.append(rows["index"].tolist())
        self.settings.append({"batch_size": batch_size, **settings})
        for b, start in enumerate(range(0, len(rows), batch_size)):
            if self.fail_after is not None and b == self.fail_after:
                raise RuntimeError("simulated crash (out of memory)")
            chunk = rows.iloc[start : start + batch_size]
            pairs = zip(chunk["index"].astype(int), chunk["entity_name"])
            batch = [(i, raw_answer(i, e)) for i, e in pairs if i not in self.skip]
            if self.invent is not None and b == 0:
                batch.append((self.invent, "1 cm"))
            yield batch


class NoCallBackend(FakeBackend):
    def predict(self, *args: Any, **kwargs: Any) -> Iterator[list[tuple[int, str]]]:
        raise AssertionError("predict must not be called on a finished shard")


def _run(backend: Any, test: pd.DataFrame, i: int, n: int, tmp_path: Path, **settings: Any) -> Path:
    """``run_shard`` with every row's image in ``tmp_path / "img"`` (a file written where none is yet)."""
    dirs = (tmp_path / "img", tmp_path / "art", tmp_path / "out")
    dirs[0].mkdir(exist_ok=True)
    for link in test["image_link"] if "image_link" in test else []:
        image = dirs[0] / link.rsplit("/", 1)[1]
        if not image.exists():
            image.write_bytes(b"pixels")
    return run_shard(backend, test, i, n, *dirs, show_progress=False, **settings)


def test_fake_backend_satisfies_the_protocol() -> None:
    assert isinstance(FakeBackend(), Backend)


def test_run_all_shards_then_merge(tmp_path: Path) -> None:
    test = synthetic_test()
    for i in range(3):
        path = _run(FakeBackend(), test, i, 3, tmp_path, batch_size=7, temperature=0.0)
        assert path == shard_path(tmp_path / "out", i, 3)
        shard = read_shard(path)
        rows = shard_rows(test, i, 3)
        assert sorted(shard["index"]) == sorted(rows["index"])
        entity = dict(zip(rows["index"], rows["entity_name"]))
        assert shard["raw"].tolist() == [raw_answer(i, entity[i]) for i in shard["index"]]
        cleaned = [normalize_prediction(entity[i], raw_answer(i, entity[i])) for i in shard["index"]]
        assert shard["prediction"].tolist() == cleaned
    sub_path = tmp_path / "submission.csv"
    merged = build_submission(tmp_path / "out", 3, test, sub_path)
    assert merged["index"].tolist() == test["index"].tolist()
    assert check_submission(test, pd.read_csv(sub_path, dtype=str, keep_default_na=False)) == []
    filled = merged.set_index("index")["prediction"]
    some_width = int(test.loc[(test["entity_name"] == "width") & (test["index"] % 11 != 0), "index"].iloc[0])
    assert filled[some_width] == f"{float(some_width % 40 + 1)} centimetre"
    assert (merged.loc[test["entity_name"].eq("item_volume").to_numpy(), "prediction"] == "").all()


def test_settings_reach_the_backend(tmp_path: Path) -> None:
    backend = FakeBackend()
    _run(backend, synthetic_test(20), 0, 1, tmp_path, batch_size=4, max_new_tokens=9)
    assert backend.settings == [{"batch_size": 4, "max_new_tokens": 9}]


def test_resume_after_a_crash_mid_shard(tmp_path: Path) -> None:
    test = synthetic_test()
    rows = shard_rows(test, 1, 2)
    crashing = FakeBackend(fail_after=3)
    with pytest.raises(RuntimeError, match="simulated crash"):
        _run(crashing, test, 1, 2, tmp_path, batch_size=5)
    path = shard_path(tmp_path / "out", 1, 2)
    written = read_shard(path)["index"].tolist()
    assert written == rows["index"].tolist()[:15]  # three whole batches survived
    assert not done_marker_path(tmp_path / "out", 1, 2).exists()

    resumed = FakeBackend()
    _run(resumed, test, 1, 2, tmp_path, batch_size=5)
    assert resumed.asked == [rows["index"].tolist()[15:]]  # nothing already written is asked again
    final = read_shard(path)
    assert final["index"].tolist() == rows["index"].tolist() and final["index"].is_unique
    assert done_marker_path(tmp_path / "out", 1, 2).exists()

    _run(NoCallBackend(), test, 1, 2, tmp_path)  # finished: the backend is not even asked
    assert read_shard(path).equals(final)


def test_unanswered_indices_block_the_done_marker(tmp_path: Path) -> None:
    test = synthetic_test(40)
    rows = shard_rows(test, 0, 1)
    skipped = {int(rows["index"][3]), int(rows["index"][30])}
    with pytest.raises(RuntimeError, match="without answering 2 of 40 indices"):
        _run(FakeBackend(skip=skipped), test, 0, 1, tmp_path)
    assert not done_marker_path(tmp_path / "out", 0, 1).exists()
    with pytest.raises(MergeError, match="not finished"):
        build_submission(tmp_path / "out", 1, test)
    again = FakeBackend()
    _run(again, test, 0, 1, tmp_path)
    assert sorted(again.asked[0]) == sorted(skipped)
    assert len(build_submission(tmp_path / "out", 1, test)) == 40


def test_an_answer_for_an_index_not_asked_is_an_error(tmp_path: Path) -> None:
    test = synthetic_test(30)
    with pytest.raises(RuntimeError, match="answered index 999999, which was not asked for"):
        _run(FakeBackend(invent=999999), test, 0, 1, tmp_path)


def test_a_repeated_answer_is_an_error(tmp_path: Path) -> None:
    test = synthetic_test(30)
    first = int(shard_rows(test, 0, 1)["index"][0])
    backend = FakeBackend(invent=first)  # the first batch answers its first index twice
    with pytest.raises(RuntimeError, match=f"answered index {first} twice"):
        _run(backend, test, 0, 1, tmp_path)
    assert not read_shard(shard_path(tmp_path / "out", 0, 1)).size  # the bad batch was not written
    with pytest.raises(ValueError, match="missing entity_name"):
        _run(FakeBackend(), test.drop(columns="entity_name"), 0, 1, tmp_path)


def test_the_submission_is_cleaned_from_the_raw_answers_and_never_written_invalid(tmp_path: Path) -> None:
    test = synthetic_test(10).assign(entity_name="voltage")
    rows = list(test["index"])
    with ShardWriter(tmp_path, 0, 1) as w:  # the prediction column as an older cleaning step left it
        w.write_batch([(int(i), "", "it says 12V" if k == 0 else "") for k, i in enumerate(rows)])
        w.mark_done(rows)
    submission = build_submission(tmp_path, 1, test, tmp_path / "sub.csv")
    assert submission.set_index("index")["prediction"][rows[0]] == "12.0 volt"  # cleaned afresh from raw
    assert pd.read_csv(tmp_path / "sub.csv", keep_default_na=False).equals(submission)

    bad = test.assign(entity_name=["width"] + ["voltage"] * 9)  # the raw answer's unit does not fit width ...
    with ShardWriter(tmp_path / "b", 0, 1) as w:
        w.write_batch([(int(i), "", "") for i in rows])
        w.mark_done(rows)
    good = build_submission(tmp_path / "b", 1, bad)  # ... cleaning never gives an invalid value
    assert (good["prediction"] == "").all()


def test_an_invalid_merge_writes_nothing(tmp_path: Path) -> None:
    test = synthetic_test(10)
    (tmp_path / "sub.csv").write_text("index,prediction\nthe good one\n")
    with pytest.raises(MergeError):
        build_submission(tmp_path / "nothing", 1, test, tmp_path / "sub.csv")
    assert (tmp_path / "sub.csv").read_text() == "index,prediction\nthe good one\n"


def test_progress_bar_counts_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    test = synthetic_test(30)
    for link in test["image_link"]:
        (tmp_path / link.rsplit("/", 1)[1]).write_bytes(b"pixels")
    run_shard(FakeBackend(), test, 0, 1, tmp_path, tmp_path, tmp_path / "out", batch_size=10)
    err = capsys.readouterr().err
    assert "shard 0 of 1" in err and "30/30" in err and "row/s" in err


# --- the backend registry ------------------------------------------------------------------------------------------


def test_unknown_backend_lists_the_choices() -> None:
    with pytest.raises(ValueError, match=r"unknown backend 'gpt'; choose one of: ocr, paligemma"):
        get_backend("gpt")
    assert set(available_backends()) >= {"ocr", "paligemma"}
    assert backends.BACKENDS["paligemma"] == "utils.models.paligemma.backend:PaliGemmaBackend"
    assert backends.BACKENDS["ocr"] == "utils.models.ocr.backend:OcrBackend"


def test_registered_backend_by_name(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(backends.BACKENDS, "fake", "tests.test_pipeline:FakeBackend")
    assert isinstance(get_backend("fake"), FakeBackend)
    assert get_backend("fake", fail_after=2).fail_after == 2
    test = synthetic_test(25)
    _run("fake", test, 0, 1, tmp_path)
    assert len(read_shard(shard_path(tmp_path / "out", 0, 1))) == 25


def test_registry_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(backends.BACKENDS, "gone", "utils.no_such_module:X")
    with pytest.raises(ImportError, match="backend 'gone' needs utils.no_such_module"):
        get_backend("gone")
    monkeypatch.setitem(backends.BACKENDS, "typo", "tests.test_pipeline:NoSuchClass")
    with pytest.raises(ImportError, match="has no class NoSuchClass"):
        get_backend("typo")
    with pytest.raises(ValueError, match="module:ClassName"):
        register_backend("bad", "tests.test_pipeline.FakeBackend")
    register_backend("fake2", "tests.test_pipeline:FakeBackend")
    try:
        assert "fake2" in available_backends()
    finally:
        backends.BACKENDS.pop("fake2")


def test_backends_are_imported_lazily() -> None:
    code = (
        "import sys, utils.pipeline.predict, utils.models.backend; "
        "print(sorted(m for m in ('torch', 'transformers', 'onnxruntime', 'rapidocr', 'utils.models.paligemma.infer', 'utils.models.ocr.backend') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.slow
def test_the_real_backends_resolve() -> None:
    """``ocr`` and ``paligemma`` name real classes that satisfy the protocol (imports torch: a few seconds)."""
    code = (
        "from utils.models.backend import Backend, get_backend\n"
        "for name in ('ocr', 'paligemma'):\n"
        "    try:\n"
        "        b = get_backend(name)\n"
        "    except ImportError as exc:\n"
        "        print(name, 'unavailable', exc)\n"
        "        continue\n"
        "    print(name, b.name, isinstance(b, Backend))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    if any("unavailable" in line for line in lines):
        pytest.skip("; ".join(lines))
    assert lines == ["ocr ocr True", "paligemma paligemma True"]


def test_a_refit_model_repredicts_instead_of_resuming_old_answers(tmp_path: Path) -> None:
    from utils.pipeline.predict import artifact_fingerprint

    test = synthetic_test(40)
    art = tmp_path / "art"
    art.mkdir()
    (art / "model.bin").write_bytes(b"first fit")
    first = FakeBackend()
    _run(first, test, 0, 2, tmp_path)
    id_first = artifact_fingerprint(art)
    copy = tmp_path / "copy_in_another_session"
    copy.mkdir()
    (copy / "model.bin").write_bytes(b"first fit")
    assert artifact_fingerprint(copy) == id_first  # shards run from copies of one artifact still merge
    assert _run(NoCallBackend(), test, 0, 2, tmp_path)  # same model: the finished shard is not redone

    (art / "model.bin").write_bytes(b"second fit")  # a refit
    assert artifact_fingerprint(art) != id_first
    second = FakeBackend()
    _run(second, test, 0, 2, tmp_path)
    assert sorted(second.asked[0]) == sorted(shard_rows(test, 0, 2)["index"])  # every row predicted again
    assert list((tmp_path / "out").glob("shard_00_of_02.csv.stale-*"))  # the old answers are kept aside


def test_any_change_to_what_the_answers_depend_on_repredicts_the_shard(tmp_path: Path) -> None:
    """The run record covers the model, the shard's rows, its images, the cleaning rules and the settings."""
    import os

    test = synthetic_test(20)
    images = tmp_path / "img"
    images.mkdir()
    for link in test["image_link"]:
        (images / link.rsplit("/", 1)[1]).write_bytes(b"pixels")
    _run(FakeBackend(), test, 0, 1, tmp_path, batch_size=5)
    _run(NoCallBackend(), test, 0, 1, tmp_path, batch_size=3)  # nothing changed (batch size is not an input)

    def predicted_again(test_now: pd.DataFrame, **settings: Any) -> bool:
        backend = FakeBackend()
        _run(backend, test_now, 0, 1, tmp_path, **settings)
        return bool(backend.asked) and sorted(backend.asked[0]) == sorted(test_now["index"])

    other_links = test.assign(image_link=[u.replace(".jpg", ".png") for u in test["image_link"]])
    assert predicted_again(other_links)  # same indices, other images: the reported stale-submission case
    assert predicted_again(test)  # and back
    first_image = images / test["image_link"].iloc[0].rsplit("/", 1)[1]
    first_image.write_bytes(b"another photo")
    assert predicted_again(test)  # an image replaced in the cache
    os.utime(first_image, ns=(1, 1))
    assert predicted_again(test)
    assert predicted_again(test, temperature=0.5)  # other backend settings
    assert predicted_again(test.assign(entity_name=["width"] * 20))  # other questions
    assert predicted_again(test, temperature=0.5)  # back to the first questions
    assert not predicted_again(test, temperature=0.5)  # unchanged: resumed, nothing asked
    stale = sorted(p.name for p in (tmp_path / "out").glob("shard_00_of_01.csv.stale-*"))
    assert len(stale) >= 5  # every earlier answer set is kept aside, never deleted


class StrictBackend(FakeBackend):
    """The fake, refusing a setting it does not know when asked for its first batch (as the real backends do)."""

    def predict(self, rows: pd.DataFrame, image_dir: Path, artifact_dir: Path, batch_size: int = 8,
                **settings: Any) -> Iterator[list[tuple[int, str]]]:
        unknown = sorted(set(settings) - {"temperature"})
        if unknown:
            raise TypeError(f"unknown setting(s) {unknown}")
        yield from super().predict(rows, image_dir, artifact_dir, batch_size, **settings)


def test_a_setting_the_backend_refuses_moves_no_answers_aside(tmp_path: Path) -> None:
    """Finished answers are moved aside only once the backend accepted the new settings (answered a batch): a typo
    in them used to cost every finished shard."""
    test = synthetic_test(20)
    _run(FakeBackend(), test, 0, 1, tmp_path)
    out = tmp_path / "out"
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(TypeError, match="bogus"):
        _run(StrictBackend(), test, 0, 1, tmp_path, bogus=1)
    assert sorted(p.name for p in out.iterdir()) == before  # nothing moved aside, the shard is still done
    _run(NoCallBackend(), test, 0, 1, tmp_path)  # the corrected run finds the finished shard
    again = StrictBackend()
    _run(again, test, 0, 1, tmp_path, temperature=0.5)  # accepted: now the old answers go aside
    assert again.asked and list(out.glob("shard_00_of_01.csv.stale-*"))


def test_rows_without_an_image_are_answered_empty_unless_guessing(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    """What the console promises is what is done: rows whose image is missing, a folder, a FIFO or a symlink loop
    answer '' without the backend (the ocr backend answered them its group's commonest label); the setting
    ``guess_without_image`` hands them to the backend; switching it repredicts the shard."""
    test = synthetic_test(24)
    images = tmp_path / "img"
    images.mkdir()
    names = [link.rsplit("/", 1)[1] for link in test["image_link"]]
    os.mkfifo(images / names[0])
    (images / names[1]).mkdir()
    (images / names[2]).symlink_to(images / names[2])
    for name in names[3:20]:
        (images / name).write_bytes(b"pixels")  # the last four are missing
    path = run_shard(AlwaysBackend(), test, 0, 1, images, tmp_path / "art", tmp_path / "out", show_progress=False)
    assert "7 of 24 rows to predict have no image" in capsys.readouterr().out
    answers = read_shard(path).set_index("index")["raw"]
    no_image = set(test["index"].iloc[:3]) | set(test["index"].iloc[20:])
    assert all(answers[i] == "" for i in no_image) and all(answers[i] != "" for i in set(answers.index) - no_image)
    path = run_shard(AlwaysBackend(), test, 0, 1, images, tmp_path / "art", tmp_path / "out", show_progress=False,
                     guess_without_image=True)
    assert (read_shard(path)["raw"] != "").all()  # the setting changed the answers: the shard was predicted again


class AlwaysBackend(FakeBackend):
    """Answers every row it is asked about, image or not (as a backend guessing from the labels does)."""

    def predict(self, rows: pd.DataFrame, image_dir: Path, artifact_dir: Path, batch_size: int = 8,
                **settings: Any) -> Iterator[list[tuple[int, str]]]:
        yield [(int(i), "42 cm") for i in rows["index"]]


def test_two_writers_never_write_one_shard(tmp_path: Path) -> None:
    from utils.pipeline.shards import ShardBusyError

    first = ShardWriter(tmp_path, 0, 2)
    with pytest.raises(ShardBusyError, match=rf"pid {__import__('os').getpid()}"):
        ShardWriter(tmp_path, 0, 2)
    ShardWriter(tmp_path, 1, 2).close()  # another shard is free
    first.close()
    with ShardWriter(tmp_path, 0, 2) as again:
        assert again.done_indices == set()


def test_a_killed_writer_releases_the_shard(tmp_path: Path) -> None:
    code = ("import os, sys; sys.path.insert(0, sys.argv[2]); from utils.pipeline.shards import ShardWriter; "
            "w = ShardWriter(sys.argv[1], 0, 1); print('locked', flush=True); os.kill(os.getpid(), 9)")
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path), str(REPO)], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.strip() == "locked" and out.returncode == -9
    ShardWriter(tmp_path, 0, 1).close()  # the lock died with its process
