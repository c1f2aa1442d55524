"""The notebook stages end to end on the demo data, with a fast fake backend (no OCR, no model)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from utils.core.sanity import check_submission
from utils.core.units import normalize_prediction
from utils.data import census, tables
from utils.models import backend as backends
from utils.pipeline import show, stages
from utils.pipeline.shards import MergeError, shard_path


class AnswerKeyBackend:
    """A fake backend: answers from a labels CSV (messily spelled), except rows listed in ``wrong``."""

    name = "answer_key"

    def fit(self, train: pd.DataFrame, val: pd.DataFrame, image_dir: Path, out_dir: Path, **settings: Any) -> Path:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "fit.json").write_text(json.dumps({"train": len(train), "val": len(val), **settings}))
        return Path(out_dir)

    def predict(
        self, rows: pd.DataFrame, image_dir: Path, artifact_dir: Path, **settings: Any
    ) -> Iterator[list[tuple[int, str]]]:
        assert (Path(artifact_dir) / "fit.json").is_file()
        labels = pd.read_csv(settings["answers_csv"], keep_default_na=False).set_index("index")["entity_value"]
        wrong = set(settings.get("wrong", ()))
        batch: list[tuple[int, str]] = []
        for index in rows["index"]:
            answer = "" if index in wrong else str(labels.loc[index]).replace(".0 ", " ")
            batch.append((int(index), answer))
            if len(batch) == 3:
                yield batch
                batch = []
        if batch:
            yield batch


@pytest.fixture()
def fake_backend(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(backends.BACKENDS, "answer_key", f"{__name__}:AnswerKeyBackend")
    return "answer_key"


@pytest.fixture()
def prepared(tmp_path: Path) -> stages.Prepared:
    return stages.prepare(train_csv="demo", work_dir=str(tmp_path / "work"), demo_train=24, demo_test=10, seed=1)


def test_prepare_the_demo(prepared: stages.Prepared) -> None:
    manifest = json.loads(prepared.manifest_path.read_text())
    assert Path(manifest["labels_csv"]).name == "test_labels.csv"
    assert Path(manifest["image_dir"]).is_dir()
    train, val, test = (pd.read_parquet(p) for p in (prepared.train_path, prepared.val_path, prepared.test_path))
    assert len(train) + len(val) == 24 and len(test) == 10
    assert set(train["group_id"]).isdisjoint(set(val["group_id"]))
    assert int(prepared.counts["train"].sum()) == len(train)
    assert int(prepared.counts["val"].sum()) == len(val)
    assert prepared.entity_counts["test"].sum() == 10
    assert "train" in prepared.summary()


def test_a_wrong_image_folder_fails_before_any_fit(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from utils.data.demo import make_demo_data

    made = make_demo_data(tmp_path / "data", 40, 6, seed=2)
    args = dict(train_csv=str(made.train_csv), test_csv=str(made.test_csv), image_dir=str(tmp_path / "imgaes"),
                work_dir=str(tmp_path / "work"), per_entity=2, download=False)
    with pytest.raises(census.MissingImagesError, match=r"22 of 22 images .*\(100%\) are not in .*imgaes"):
        stages.prepare(**args)
    assert not (tmp_path / "work" / "prepared" / "manifest.json").exists()  # nothing handed to stage 02
    result = stages.prepare(**args, max_missing_images=1.0)  # accepted knowingly
    assert result.manifest["rows"]["train"] + result.manifest["rows"]["val"] == 16  # 2 per entity x 8
    assert result.manifest["labels_csv"] == "" and result.manifest["images"] == {"needed": 22, "missing": 22}
    out = capsys.readouterr().out
    assert "» [01] images for the sample and the test set: 22 needed, 22 missing (100.0%)" in out  # the console
    ok = stages.prepare(**{**args, "image_dir": str(made.image_dir)})
    assert ok.images.absent == 0


def test_without_an_image_folder_the_cache_follows_the_work_folder(tmp_path: Path) -> None:
    from utils.data.demo import make_demo_data

    made = make_demo_data(tmp_path / "data", 16, 4, seed=3)
    (made.image_dir).rename(tmp_path / "elsewhere")  # the data comes without an images/ folder
    result = stages.prepare(train_csv=str(made.train_csv), test_csv=str(made.test_csv),
                            work_dir=str(tmp_path / "my_work"), download=False, max_missing_images=1.0)
    assert Path(result.manifest["image_dir"]) == tmp_path / "my_work" / "images"


def test_prepare_needs_a_test_csv(tmp_path: Path) -> None:
    from utils.data.demo import make_demo_data

    made = make_demo_data(tmp_path / "data", 4, 2)
    with pytest.raises(stages.StageError, match="test_csv"):
        stages.prepare(train_csv=str(made.train_csv), work_dir=str(tmp_path / "work"))


def test_later_stages_need_stage_01(tmp_path: Path, fake_backend: str) -> None:
    with pytest.raises(stages.StageError, match="01_prepare_data"):
        stages.finetune(backend=fake_backend, work_dir=str(tmp_path / "nothing"))


class AdapterBackend(AnswerKeyBackend):
    """The fake, keeping its artifact in a folder inside the fit's folder (as paligemma keeps ``adapter/``)."""

    name = "adapter_key"

    def fit(self, train: pd.DataFrame, val: pd.DataFrame, image_dir: Path, out_dir: Path, **settings: Any) -> Path:
        return super().fit(train, val, image_dir, Path(out_dir) / "adapter", **settings)


def test_a_shard_in_a_session_of_its_own_needs_only_the_test_csv_and_the_fitted_folder(
        prepared: stages.Prepared, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh work folder (no stage 01 or 02 there): the rows from ``test_csv``, the images downloaded into (or
    looked for in) its own ``images/``, the model from a copy of stage 02's folder made in the first session (its
    marker names the old session's path), the shard written into its own ``shards/``."""
    import shutil

    monkeypatch.setitem(backends.BACKENDS, "adapter_key", f"{__name__}:AdapterBackend")
    stages.finetune(backend="adapter_key", work_dir=str(prepared.work_dir))
    copy = tmp_path / "input" / "artifacts"
    shutil.copytree(prepared.work_dir / "artifacts", copy)
    shutil.move(prepared.work_dir / "artifacts", tmp_path / "gone")  # the first session's paths are gone
    fresh = tmp_path / "session2" / "work"
    made = prepared.manifest
    shutil.copytree(made["image_dir"], fresh / "images")  # as if downloaded there
    done = stages.infer_shard(shard_index=0, num_shards=2, backend="adapter_key", work_dir=str(fresh),
                              test_csv=made["test_csv"], artifact_dir=str(copy / "adapter_key"), download=False,
                              settings={"answers_csv": made["labels_csv"]})
    assert done.path.parent == fresh / "shards" and len(done.rows) == 5
    assert (done.rows["prediction"] != "").sum() >= 3  # answered from the copy's adapter/ (predict checks it)
    with pytest.raises(stages.StageError, match="no fitted adapter_key artifact .* pass artifact_dir"):
        stages.infer_shard(shard_index=1, num_shards=2, backend="adapter_key", work_dir=str(fresh),
                           test_csv=made["test_csv"], download=False)


class AllLabelsBackend(AnswerKeyBackend):
    """The fake, asking (like the ocr backend's ``prior_csv``) for the whole labelled table in a fit setting."""

    name = "all_labels"
    label_table_setting = "all_labels_csv"


def test_a_fit_on_a_sample_is_handed_the_whole_train_csv(prepared: stages.Prepared, tmp_path: Path, fake_backend: str,
                                                         monkeypatch: pytest.MonkeyPatch,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setitem(backends.BACKENDS, "all_labels", f"{__name__}:AllLabelsBackend")
    work = str(prepared.work_dir)
    artifact = stages.finetune(backend="all_labels", work_dir=work).artifact
    fit = json.loads((artifact / "fit.json").read_text())
    assert fit["all_labels_csv"] == prepared.manifest["train_csv"] and Path(fit["all_labels_csv"]).is_file()
    assert "learns from every label of" in capsys.readouterr().out
    mine = tmp_path / "mine.csv"
    stages.finetune(backend="all_labels", work_dir=work, settings={"all_labels_csv": str(mine)})
    assert json.loads((artifact / "fit.json").read_text())["all_labels_csv"] == str(mine)  # the user's choice stands
    plain = stages.finetune(backend=fake_backend, work_dir=work).artifact  # a backend without the setting: nothing
    assert "all_labels_csv" not in json.loads((plain / "fit.json").read_text())


def test_a_fit_that_learned_from_train_csv_is_not_reused_once_train_csv_changed(
        prepared: stages.Prepared, monkeypatch: pytest.MonkeyPatch) -> None:
    """The whole label table is part of what the fit depends on: with the prepared tables unchanged, another
    train.csv (more labels, other habits) fits again instead of reusing priors learned from the old one."""
    monkeypatch.setitem(backends.BACKENDS, "all_labels", f"{__name__}:AllLabelsBackend")
    work = str(prepared.work_dir)
    first = stages.finetune(backend="all_labels", work_dir=work)
    assert stages.finetune(backend="all_labels", work_dir=work).reused
    train_csv = Path(prepared.manifest["train_csv"])
    train_csv.write_bytes(train_csv.read_bytes() + train_csv.read_bytes().splitlines(keepends=True)[-1])
    again = stages.finetune(backend="all_labels", work_dir=work)
    assert again.artifact == first.artifact and not again.reused


class StrictBackend(AnswerKeyBackend):
    """The fake, refusing a setting it does not know before it writes anything (as the real backends' configs do)."""

    name = "strict"

    def fit(self, train: pd.DataFrame, val: pd.DataFrame, image_dir: Path, out_dir: Path, **settings: Any) -> Path:
        unknown = sorted(set(settings) - {"note"})
        if unknown:
            raise TypeError(f"unknown setting(s) {unknown}")
        return super().fit(train, val, image_dir, out_dir, **settings)


def test_a_setting_the_backend_refuses_keeps_the_earlier_fit(prepared: stages.Prepared,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    """A typo in the fit settings fails the fit, but the finished fit stays valid: the corrected run reuses it
    (the marker was removed before the backend refused, so the corrected run refitted and every finished shard was
    moved aside as "model changed")."""
    monkeypatch.setitem(backends.BACKENDS, "strict", f"{__name__}:StrictBackend")
    work = str(prepared.work_dir)
    first = stages.finetune(backend="strict", work_dir=work, settings={"note": "a"})
    marker = prepared.work.fitted_marker(first.artifact)
    kept = marker.read_bytes()
    with pytest.raises(TypeError, match="empty_shar"):
        stages.finetune(backend="strict", work_dir=work, settings={"note": "a", "empty_shar": 0.2})
    assert marker.read_bytes() == kept
    assert stages.finetune(backend="strict", work_dir=work, settings={"note": "a"}).reused
    assert stages.finetune(backend="strict", work_dir=work, settings={"note": "b"}).artifact == first.artifact

    class Broken(StrictBackend):  # a fit that fails after writing into the artifact: no marker vouches for it
        def fit(self, train: pd.DataFrame, val: pd.DataFrame, image_dir: Path, out_dir: Path, **settings: Any
                ) -> Path:
            (Path(out_dir) / "fit.json").write_text("half")
            raise RuntimeError("out of memory")

    monkeypatch.setitem(backends.BACKENDS, "strict", f"{__name__}:StrictBackend")
    monkeypatch.setattr(StrictBackend, "fit", Broken.fit)
    with pytest.raises(RuntimeError, match="out of memory"):
        stages.finetune(backend="strict", work_dir=work, settings={"note": "c"})
    assert not marker.exists()


def test_fit_infer_postprocess(prepared: stages.Prepared, fake_backend: str, tmp_path: Path) -> None:
    work = str(prepared.work_dir)
    def fitted_note() -> str:
        return json.loads((artifact / "fit.json").read_text())["note"]

    artifact = stages.finetune(backend=fake_backend, work_dir=work, settings={"note": "a"}).artifact
    (artifact / "fit.json").write_text(json.dumps({"note": "touched"}))
    reused = stages.finetune(backend=fake_backend, work_dir=work, settings={"note": "a"})
    assert reused.artifact == artifact and reused.reused and fitted_note() == "touched"  # reused
    stages.finetune(backend=fake_backend, work_dir=work, settings={"note": "b"})  # other settings: fitted again
    assert fitted_note() == "b"
    (artifact / "fit.json").write_text(json.dumps({"note": "touched"}))
    stages.finetune(backend=fake_backend, work_dir=work, refit=True, settings={"note": "b"})  # asked to: fitted again
    assert fitted_note() == "b"
    (artifact / "fit.json").write_text(json.dumps({"note": "touched"}))
    pd.read_parquet(prepared.train_path).head(5).to_parquet(prepared.train_path)  # other data: fitted again
    stages.finetune(backend=fake_backend, work_dir=work, settings={"note": "b"})
    assert fitted_note() == "b" and json.loads((artifact / "fit.json").read_text())["train"] == 5

    labels_csv = prepared.manifest["labels_csv"]
    test = pd.read_parquet(prepared.test_path)
    wrong = [int(test["index"].iloc[0])]
    with pytest.raises(MergeError):
        stages.postprocess(num_shards=2, work_dir=work, out_dir=str(tmp_path / "out"))  # no shards yet
    for shard in range(2):
        path = stages.infer_shard(shard_index=shard, num_shards=2, backend=fake_backend, work_dir=work,
                                  settings={"answers_csv": labels_csv, "wrong": wrong}).path
        assert path == shard_path(prepared.work_dir / "shards", shard, 2)
    assert os.environ["OMP_NUM_THREADS"] == "1"
    again = stages.infer_shard(shard_index=0, num_shards=2, backend=fake_backend, work_dir=work,
                               settings={"answers_csv": labels_csv, "wrong": wrong})  # done: skipped
    assert len(pd.read_csv(again.path)) == len(test[::2]) == len(again.rows)
    assert set(again.rows.columns) >= {"index", "entity_name", "image_link", "prediction", "raw"}

    result = stages.postprocess(num_shards=2, work_dir=work, out_dir=str(tmp_path / "out"), n_worst=4)
    submission = pd.read_csv(result.submission_path, keep_default_na=False)
    assert list(submission.columns) == ["index", "prediction"]
    assert check_submission(test, submission) == []
    labels = pd.read_csv(labels_csv, keep_default_na=False)
    truth = dict(zip(labels["index"], labels["entity_value"]))
    # messy "5 kilogram" spellings came back clean; the one wrong row is empty
    entity = dict(zip(test["index"], test["entity_name"]))
    for index, prediction in zip(submission["index"], submission["prediction"]):
        expected = "" if index in wrong else normalize_prediction(entity[index], truth[index])
        assert prediction == expected
        assert prediction == "" or prediction.split(" ", 1)[0].count(".") == 1  # "<float> <unit>"
    assert result.report is not None and 0.5 < result.report.f1 < 1.0
    assert result.files.report_md.is_file() and result.files.f1_png.is_file()
    assert f"F1 {result.report.f1:.4f}" in result.summary()
    shown = show.postprocessed(result, interactive=False)
    assert "data:image/jpeg;base64," in shown.data


def test_infer_shard_checks_its_arguments(prepared: stages.Prepared, fake_backend: str) -> None:
    with pytest.raises(ValueError, match="shard_index"):
        stages.infer_shard(shard_index=2, num_shards=2, backend=fake_backend, work_dir=str(prepared.work_dir))
    with pytest.raises(TypeError, match="num_shard"):
        stages.infer_shard(shard_index=0, num_shard=2, backend=fake_backend, work_dir=str(prepared.work_dir))


def test_postprocess_without_labels(tmp_path: Path, fake_backend: str) -> None:
    from utils.data.demo import make_demo_data

    made = make_demo_data(tmp_path / "data", 12, 5, seed=4)
    work = str(tmp_path / "work")
    stages.prepare(train_csv=str(made.train_csv), test_csv=str(made.test_csv), image_dir=str(made.image_dir),
                   work_dir=work)
    stages.finetune(backend=fake_backend, work_dir=work)
    stages.infer_shard(shard_index=0, num_shards=1, backend=fake_backend, work_dir=work,
                       settings={"answers_csv": str(made.labels_csv)})
    result = stages.postprocess(num_shards=1, work_dir=work, out_dir=str(tmp_path / "out"))
    assert result.report is None and result.files is None
    assert "no labels" in result.notes[0]
    assert not (tmp_path / "out" / "report.md").exists()
    assert show.postprocessed(result) is None


def test_limit_threads() -> None:
    stages.limit_threads(1)
    assert all(os.environ[name] == "1" for name in stages.THREAD_ENV_VARS)
    with pytest.raises(ValueError):
        stages.limit_threads(0)


def test_count_tables() -> None:
    train = pd.DataFrame({"entity_name": ["width", "width", "voltage"], "entity_value": ["1 inch", "", "2.0 volt"]})
    val = pd.DataFrame({"entity_name": ["width"], "entity_value": ["3.0 inch"]})
    counts = tables.count_table(train, val)
    assert counts.loc[("width", "inch"), "train"] == 1 and counts.loc[("width", "inch"), "val"] == 1
    assert counts.loc[("width", "(empty)"), "train"] == 1
    test = pd.DataFrame({"entity_name": ["depth"]})
    entities = tables.entity_count_table(train, val, test)
    assert entities.loc["depth", "test"] == 1 and entities.loc["width", "train"] == 2


def test_a_shard_downloads_its_missing_images(tmp_path: Path, fake_backend: str) -> None:
    """A shard started without its images (a fresh session) fetches exactly its own rows' images first."""
    from tests.image_server import ImageServer
    from utils.data.demo import make_demo_data
    from utils.data.images import image_path
    from utils.pipeline.shards import shard_rows

    made = make_demo_data(tmp_path / "data", 8, 6, seed=5)
    test = pd.read_csv(made.test_csv)
    cache = tmp_path / "cache"
    with ImageServer() as server:
        test["image_link"] = [
            server.add(f"/img/{link.rsplit('/', 1)[-1]}", image_path(made.image_dir, link).read_bytes())
            for link in test["image_link"]
        ]
        test.to_csv(tmp_path / "test_served.csv", index=False)
        work = str(tmp_path / "work")
        stages.prepare(train_csv=str(made.train_csv), test_csv=str(tmp_path / "test_served.csv"),
                       image_dir=str(cache), work_dir=work, download=False, max_missing_images=1.0)
        stages.finetune(backend=fake_backend, work_dir=work)
        assert not cache.exists() or not any(cache.glob("*.jpg"))
        stages.infer_shard(shard_index=1, num_shards=2, backend=fake_backend, work_dir=work,
                           settings={"answers_csv": str(made.labels_csv)})
    mine = set(shard_rows(test, 1, 2)["image_link"].map(lambda link: link.rsplit("/", 1)[-1]))
    assert {p.name for p in cache.glob("*.jpg")} == mine and len(mine) == 3


def test_stage_01_stores_downloaded_images_under_a_size_cap(tmp_path: Path) -> None:
    """``image_max_side`` (``--image-max-side``): what stage 01 downloads is stored at most that large."""
    import io

    from PIL import Image

    from tests.image_server import ImageServer
    from utils.data.demo import make_demo_data

    made = make_demo_data(tmp_path / "data", 8, 4, seed=3)
    train, test = pd.read_csv(made.train_csv), pd.read_csv(made.test_csv)
    with ImageServer() as server:
        for frame in (train, test):
            links = []
            for n, _ in enumerate(frame["image_link"]):
                buf = io.BytesIO()
                Image.new("RGB", (1600 + 10 * n, 900), (n * 9 % 255, 40, 90)).save(buf, "JPEG", quality=90)
                links.append(server.add(f"/big/{id(frame)}_{n}.jpg", buf.getvalue()))
            frame["image_link"] = links
        train.to_csv(tmp_path / "train.csv", index=False)
        test.to_csv(tmp_path / "test.csv", index=False)
        stages.prepare(train_csv=str(tmp_path / "train.csv"), test_csv=str(tmp_path / "test.csv"),
                       image_dir=str(tmp_path / "cache"), work_dir=str(tmp_path / "work"), per_entity=0,
                       image_max_side=640)
    stored = list((tmp_path / "cache").glob("*.jpg"))
    assert len(stored) == len(train) + len(test)
    for path in stored:
        with Image.open(path) as im:
            assert max(im.size) == 640
    with pytest.raises(ValueError, match="image_max_side"):
        stages.prepare(train_csv="demo", work_dir=str(tmp_path / "w2"), image_max_side=-1)


def test_a_failed_postprocess_never_replaces_a_good_submission(
    prepared: stages.Prepared, fake_backend: str, tmp_path: Path
) -> None:
    work, out = str(prepared.work_dir), tmp_path / "out"
    stages.finetune(backend=fake_backend, work_dir=work)
    stages.infer_shard(shard_index=0, num_shards=1, backend=fake_backend, work_dir=work,
                       settings={"answers_csv": prepared.manifest["labels_csv"]})
    good = stages.postprocess(num_shards=1, work_dir=work, out_dir=str(out)).submission_path.read_bytes()
    with pytest.raises(stages.StageError, match="labels_csv .*does not exist"):  # before any work
        stages.postprocess(num_shards=1, work_dir=work, out_dir=str(out), labels_csv=str(tmp_path / "typo.csv"))
    with pytest.raises(MergeError):  # shard 1 of 2 was never run
        stages.postprocess(num_shards=2, work_dir=work, out_dir=str(out))
    assert (out / "submission.csv").read_bytes() == good
    assert not [p for p in out.iterdir() if ".tmp" in p.name]  # the atomic write leaves no temporary file


def test_missing_images_skips_links_naming_no_usable_file(tmp_path: Path) -> None:
    (tmp_path / "have.jpg").write_bytes(b"x")
    links = pd.Series(["https://h/i/have.jpg", "https://h/i/need.jpg", "ftp://h/bad.jpg", "https://h/a/..", None])
    assert census.missing_images(links, tmp_path) == ["https://h/i/need.jpg"]


def test_a_failed_postprocess_replaces_none_of_its_outputs(prepared: stages.Prepared, fake_backend: str,
                                                           tmp_path: Path) -> None:
    """A full disk in the middle of stage 04 (a file size limit at the OS seam: writes past 4 KiB fail with EFBIG):
    submission.csv, f1_table.csv and report.md all stay the old ones (a new submission.csv beside an old report
    was left before)."""
    import subprocess
    import sys

    work, out = str(prepared.work_dir), tmp_path / "out"
    stages.finetune(backend=fake_backend, work_dir=work)
    labels_csv = prepared.manifest["labels_csv"]
    stages.infer_shard(shard_index=0, num_shards=1, backend=fake_backend, work_dir=work,
                       settings={"answers_csv": labels_csv})
    stages.postprocess(num_shards=1, work_dir=work, out_dir=str(out))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"submission.csv", "f1_table.csv", "report.md", "f1_by_entity.png"} <= set(before)
    test = pd.read_parquet(prepared.test_path)
    stages.infer_shard(shard_index=0, num_shards=1, backend=fake_backend, work_dir=work,  # other answers now
                       settings={"answers_csv": labels_csv, "wrong": [int(i) for i in test["index"][:4]]})
    code = f"""
import resource, signal, sys
sys.path.insert(0, {str(Path(__file__).resolve().parents[1])!r})
from utils.models import backend
from utils.pipeline import stages
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing us
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))  # the CSVs fit, the PNG chart does not
stages.postprocess(num_shards=1, work_dir={work!r}, out_dir={str(out)!r})
"""
    failed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert failed.returncode != 0 and "File too large" in failed.stderr, failed.stderr[-2000:]
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # nothing replaced, nothing left over
    stages.postprocess(num_shards=1, work_dir=work, out_dir=str(out))  # with room again: all replaced
    assert (out / "submission.csv").read_bytes() != before["submission.csv"]


def test_only_the_test_rows_are_scored(prepared: stages.Prepared, fake_backend: str, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    """Labels for another row set: rows not in the test set are not counted as misses (F1 0.37 "on 40 rows"
    before), the report says how many test rows have labels, and a warning names the foreign rows."""
    work, out = str(prepared.work_dir), tmp_path / "out"
    stages.finetune(backend=fake_backend, work_dir=work)
    labels = pd.read_csv(prepared.manifest["labels_csv"], keep_default_na=False)
    stages.infer_shard(shard_index=0, num_shards=1, backend=fake_backend, work_dir=work,
                       settings={"answers_csv": prepared.manifest["labels_csv"]})
    foreign = labels.head(5).assign(index=lambda f: f["index"] + 10**6)
    mixed = tmp_path / "labels.csv"
    pd.concat([labels.head(6), foreign]).to_csv(mixed, index=False)
    result = stages.postprocess(num_shards=1, work_dir=work, out_dir=str(out), labels_csv=str(mixed))
    assert result.report.f1 == 1.0 and len(result.report.rows) == 6
    said = capsys.readouterr().out
    assert "5 of 11 rows of" in said and "not in the test set" in said
    assert "labels for 6 of 10 test rows" in said
    text = result.files.report_md.read_text()
    assert "on 6 rows" in text and "labels for 6 of 10 test rows" in text
    assert result.files.report_md == out / "report.md" and result.submission_path.is_file()
    alien = tmp_path / "alien.csv"
    foreign.to_csv(alien, index=False)
    assert stages.postprocess(num_shards=1, work_dir=work, out_dir=str(out), labels_csv=str(alien)).report is None
