"""Tests for utils.models.ocr.engine and .reading: rapidocr on rendered images, box geometry, the per-image disk cache.

Images are read through ``ocr_many``, the route production takes (one worker: the process's shared engine)."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import replace
from pathlib import Path

import pytest
from PIL import Image, ImageDraw, ImageFont

from utils.models.ocr.engine import OcrBox, OcrEngine, OcrResult, OcrSettings, get_engine
from utils.models.ocr.reading import cache_file, ocr_many


def render(path: Path, lines: list[tuple[str, int, int]], size: tuple[int, int] = (640, 240)) -> Path:
    """Draw black text lines (text, x, y) on white and save as JPEG."""
    im = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(im)
    font = ImageFont.load_default(size=40)
    for text, x, y in lines:
        d.text((x, y), text, fill="black", font=font)
    im.save(path, quality=95)
    return path


SETTINGS = OcrSettings(max_side=1280)


def ocr_one(path: Path, cache_dir: Path | None, settings: OcrSettings = SETTINGS) -> OcrResult | None:
    """One image through ``ocr_many`` with one worker (this process's engine for ``settings``)."""
    return dict(ocr_many([path], cache_dir, settings, workers=1))[Path(path)]


@pytest.fixture(scope="module")
def engine() -> OcrEngine:
    """The engine ``ocr_one`` runs in this process (its ``calls`` count the images it OCR'd)."""
    return get_engine(SETTINGS, threads=1)


@pytest.fixture()
def label(tmp_path: Path) -> Path:
    return render(tmp_path / "label.jpg", [("Net Wt. 16 oz (454 g)", 20, 40), ("220-240V", 20, 140)])


def test_ocr_reads_rendered_text_with_geometry(label: Path, tmp_path: Path, engine: OcrEngine) -> None:
    res = ocr_one(label, tmp_path / "cache")
    assert res is not None and (res.width, res.height) == (640, 240)
    text = res.text.replace(" ", "").lower()
    assert "16oz" in text and "454g" in text and "220-240v" in text
    for b in res.boxes:
        assert 0 < b.score <= 1
        assert 0 <= b.x0 < b.x1 <= 640 and 0 <= b.y0 < b.y1 <= 240
        assert abs(b.angle) < 10
    top = [b for b in res.boxes if "16" in b.text][0]
    low = [b for b in res.boxes if "220" in b.text][0]
    assert top.y1 < low.y0  # positions follow the drawing
    assert 25 < top.height < 70  # a 40 px font


def test_cache_hit_means_no_second_ocr_call(label: Path, tmp_path: Path, engine: OcrEngine) -> None:
    cache = tmp_path / "cache"
    calls = engine.calls
    a = ocr_one(label, cache)
    assert engine.calls == calls + 1 and cache_file(cache, label, SETTINGS).is_file()
    b = ocr_one(label, cache)
    assert engine.calls == calls + 1 and b is not None and a is not None
    assert [x.text for x in b.boxes] == [x.text for x in a.boxes]
    # other settings or a changed file are misses
    assert cache_file(cache, label, OcrSettings(max_side=640)) != cache_file(cache, label, OcrSettings())
    # a copy elsewhere with a new mtime is still a hit (content-keyed); changed content is a miss
    copy = tmp_path / "elsewhere" / label.name
    copy.parent.mkdir()
    shutil.copyfile(label, copy)
    os.utime(copy, (time.time() + 5, time.time() + 5))
    assert cache_file(cache, copy, SETTINGS) == cache_file(cache, label, SETTINGS)
    assert ocr_one(copy, cache) is not None and engine.calls == calls + 1
    copy.write_bytes(label.read_bytes() + b"\0")
    assert not cache_file(cache, copy, SETTINGS).is_file()


def test_missing_and_bad_images(tmp_path: Path, engine: OcrEngine) -> None:
    missing = tmp_path / "nope.jpg"
    assert ocr_one(missing, tmp_path / "c") is None
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    assert ocr_one(bad, tmp_path / "c") is None
    calls = engine.calls
    assert ocr_one(bad, tmp_path / "c") is None  # cached as unreadable
    assert engine.calls == calls


def test_downscale_before_ocr(tmp_path: Path) -> None:
    big = render(tmp_path / "big.jpg", [("500 ml", 100, 100)], size=(1600, 400))
    res = ocr_one(big, None, OcrSettings(max_side=800))
    assert res is not None and max(res.width, res.height) == 800
    assert "500ml" in res.text.replace(" ", "").lower()


def test_ocr_many_two_workers_keeps_order(tmp_path: Path) -> None:
    paths = [render(tmp_path / f"i{i}.jpg", [(f"{i}0 kg", 20, 60)], size=(320, 160)) for i in range(1, 4)]
    paths.insert(1, tmp_path / "missing.jpg")
    out = list(ocr_many(paths, tmp_path / "cache", OcrSettings(), workers=2))
    assert [p for p, _ in out] == paths
    assert out[1][1] is None
    for i, (_, res) in zip((1, 2, 3), [out[0], out[2], out[3]]):
        assert res is not None and f"{i}0kg" in res.text.replace(" ", "").lower()
    again = list(ocr_many(paths, tmp_path / "cache", OcrSettings(), workers=2))  # all cached: no pool
    assert [r.text if r else None for _, r in again] == [r.text if r else None for _, r in out]


@pytest.mark.parametrize("turn", [90, 180, 270])
def test_unrotate_maps_turned_pixels_back(turn: int) -> None:
    from utils.models.ocr.engine import unrotate

    upright = Image.new("L", (40, 20))
    upright.putpixel((30, 5), 255)
    turned = upright.rotate(turn, expand=True)
    u, v = next((x, y) for x in range(turned.width) for y in range(turned.height) if turned.getpixel((x, y)))
    centre = [u + 0.5, v + 0.5]
    back = unrotate(OcrResult(turned.width, turned.height, [OcrBox("a", 1.0, [centre] * 4)]), 40, 20, turn)
    assert (back.width, back.height) == (40, 20)
    assert back.boxes[0].quad[0] == pytest.approx([30.5, 5.5])


def test_turned_ocr_reads_vertical_print_in_upright_coordinates(tmp_path: Path) -> None:
    flat = render(tmp_path / "flat.jpg", [("500 ml", 20, 20)], size=(240, 100))
    Image.open(flat).rotate(90, expand=True).save(tmp_path / "vertical.jpg", quality=95)  # reads bottom to top
    res = ocr_one(tmp_path / "vertical.jpg", tmp_path / "cache", OcrSettings(rotate=270))
    assert res is not None and (res.width, res.height) == (100, 240)
    b = [b for b in res.boxes if "500ml" in b.text.replace(" ", "").lower()][0]
    assert b.y1 - b.y0 > 2 * (b.x1 - b.x0) and 0 <= b.x0 and b.x1 <= 100 and 0 <= b.y0 and b.y1 <= 240
    assert abs(abs(b.angle) - 90) < 10  # the baseline runs vertically in the upright image


def test_one_worker_pool_serves_every_rotation(tmp_path: Path) -> None:
    import utils.models.ocr.reading

    paths = []
    for i in (1, 2):
        flat = render(tmp_path / f"f{i}.jpg", [(f"{i}5 kg", 20, 20)], size=(200, 100))
        Image.open(flat).rotate(90, expand=True).save(tmp_path / f"v{i}.jpg", quality=95)
        paths.append(tmp_path / f"v{i}.jpg")
    utils.models.ocr.reading.shutdown_pools()
    list(ocr_many(paths, tmp_path / "cache", OcrSettings(), workers=2))
    turned = list(ocr_many(paths, tmp_path / "cache", OcrSettings(rotate=270), workers=2))
    assert len(utils.models.ocr.reading._POOLS) == 1  # no second set of workers (and models) for the turned pass
    for i, (p, res) in zip((1, 2), turned):
        assert p == paths[i - 1] and res is not None and (res.width, res.height) == (100, 200)
        assert f"{i}5kg" in res.text.replace(" ", "").lower()


def test_rotation_engine_and_batch_are_part_of_the_cache_key() -> None:
    import hashlib
    import json

    from utils.models.ocr.engine import CACHE_VERSION

    before = {"max_side": 1280, "text_score": 0.5, "use_cls": True, "det_side": None, "v": CACHE_VERSION}
    # onnxruntime with rapidocr's batch of 6 and all its characters keeps the key it had before these were settings
    legacy = OcrSettings(engine="onnxruntime", rec_batch=6, charset="all")
    assert legacy.key() == hashlib.sha1(json.dumps(before, sort_keys=True).encode()).hexdigest()[:10]
    assert len({OcrSettings(rotate=r).key() for r in (0, 90, 180, 270)}) == 4
    assert len({legacy.key(), OcrSettings(engine="openvino", rec_batch=6).key(),
                OcrSettings(engine="onnxruntime", rec_batch=16).key()}) == 3
    with pytest.raises(ValueError, match="rotate"):
        OcrSettings(rotate=45)
    with pytest.raises(ValueError, match="engine"):
        OcrSettings(engine="tensorflow")


def test_result_json_round_trip() -> None:
    r = OcrResult(10, 20, [OcrBox("5 V", 0.9, [[0, 0], [4, 0], [4, 2], [0, 2]])], 0.1)
    back = OcrResult.from_json(r.to_json())
    assert back.boxes[0].text == "5 V" and back.boxes[0].quad == r.boxes[0].quad and back.height == 20


def test_real_dev_images(amazon_dir: Path, tmp_path: Path) -> None:
    import pandas as pd

    labels = pd.read_csv(amazon_dir / "dev" / "labels.csv").head(2)
    for url in labels["image_link"]:
        res = ocr_one(amazon_dir / "dev" / "images" / url.rsplit("/", 1)[-1], tmp_path)
        assert res is not None and len(res.boxes) > 0 and res.width > 0


def test_ocr_many_hashes_each_image_once_and_never_caches_missing(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import utils.models.ocr.reading

    img = render(tmp_path / "a.jpg", [("12 V", 20, 60)], size=(320, 160))
    missing = tmp_path / "gone.jpg"
    hashed: list[Path] = []
    real = utils.models.ocr.reading.cache_file
    monkeypatch.setattr(utils.models.ocr.reading, "cache_file", lambda d, image, s: hashed.append(Path(image)) or real(d, image, s))
    out = dict(ocr_many([img, missing, img], tmp_path / "cache", OcrSettings(), workers=1))
    assert hashed == [img, missing]  # the cache check and the write after OCR share one hash
    assert out[missing] is None and out[img] is not None and "12v" in out[img].text.replace(" ", "").lower()
    assert [f.name.split(".")[0] for f in (tmp_path / "cache").rglob("*.json")] == ["a"]


def test_openvino_and_onnxruntime_read_the_shipped_models_alike(label: Path, tmp_path: Path) -> None:
    """Both engines run the models inside the rapidocr wheel (no download): the same lines, nearly the same boxes."""
    from utils.models.ocr.engine import rapidocr_params, shipped_models

    assert set(shipped_models()) == {"det", "cls", "rec"} and all(p.is_file() for p in shipped_models().values())
    ov_params = rapidocr_params(OcrSettings(engine="openvino"), 2)
    assert ov_params["EngineConfig.openvino.inference_num_threads"] == 2
    # no pinning: two worker processes pinned to the same core ran at 56% of the CPU they could use
    assert ov_params["EngineConfig.openvino.enable_cpu_pinning"] is False
    assert "Det.engine_type" not in rapidocr_params(OcrSettings(engine="onnxruntime"))
    ov = OcrEngine(OcrSettings(engine="openvino")).run_path(label)
    ort = OcrEngine(OcrSettings(engine="onnxruntime")).run_path(label)
    assert ov is not None and ort is not None
    assert [b.text for b in ov.boxes] == [b.text for b in ort.boxes]
    for a, b in zip(ov.boxes, ort.boxes):
        assert max(abs(p - q) for pa, pb in zip(a.quad, b.quad) for p, q in zip(pa, pb)) < 3.0


def test_ocr_many_reports_progress_on_cache_misses_only(label: Path, tmp_path: Path) -> None:
    other = render(tmp_path / "other.jpg", [("12 V", 20, 40)])
    seen: list[tuple[int, int]] = []
    list(ocr_many([label, other, label], tmp_path / "cache", OcrSettings(), workers=1,
                  progress=lambda done, total: seen.append((done, total))))
    assert seen == [(1, 2), (2, 2)]  # two distinct images OCR'd
    seen.clear()
    list(ocr_many([label, other], tmp_path / "cache", OcrSettings(), workers=1,
                  progress=lambda done, total: seen.append((done, total))))
    assert seen == []  # all cached


@pytest.mark.parametrize("precision", ["bf16-det", "bf16"])
def test_faster_openvino_precisions_still_read_a_clean_label(label: Path, precision: str) -> None:
    res = OcrEngine(OcrSettings(engine="openvino", precision=precision)).run_path(label)
    assert res is not None
    text = res.text.replace(" ", "").lower()
    assert "16oz" in text and "454g" in text and "220-240v" in text
    assert len({OcrSettings(precision=p).key() for p in ("f32", "bf16", "bf16-det")}) == 3


@pytest.mark.parametrize("shape", [(1280, 1280, 3), (500, 900, 3), (2000, 300, 3)])
def test_the_fast_detector_preprocessing_gives_rapidocrs_bits(shape: tuple[int, int, int]) -> None:
    import numpy as np
    from rapidocr.ch_ppocr_det.utils import DetPreProcess

    from utils.models.ocr.speedups import FastDetPreProcess

    img = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
    for mean, std in (([0.5] * 3, [0.5] * 3), ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])):  # the 2nd: fallback
        want = DetPreProcess(736, "min", mean, std)(img)
        got = FastDetPreProcess(736, "min", mean, std)(img)
        assert got.dtype == want.dtype and got.shape == want.shape and np.array_equal(got, want)


def test_the_static_shape_detector_reads_what_the_dynamic_one_reads(label: Path) -> None:
    """The engine's detector runs a model compiled for a recurring input shape (from its ``after``-th sighting, at
    most ``most`` shapes); its boxes and texts are those of rapidocr's dynamic model."""
    import numpy as np

    from utils.models.ocr.speedups import StaticShapeSession

    engine = OcrEngine(OcrSettings(max_side=1280), threads=1)
    session = engine._get().text_det.session
    assert isinstance(session, StaticShapeSession)
    for _ in range(session.after - 1):
        first = engine.run_path(label)  # the dynamic model
    assert session.static == {} and sum(session.seen.values()) == session.after - 1
    second = engine.run_path(label)  # seen ``after`` times: compiled for it
    assert list(session.static) == list(session.seen) and len(session.static) == 1
    assert [(b.text, b.quad) for b in second.boxes] == [(b.text, b.quad) for b in first.boxes]
    x = np.random.default_rng(1).standard_normal(next(iter(session.static)), dtype=np.float32)
    np.testing.assert_allclose(session(x).copy(), session.session(x), atol=1e-5)
    capped = StaticShapeSession(session.session, after=1, most=1)
    small = x[:, :, :64, :64].copy()
    capped(x), capped(small), capped(small)
    assert list(capped.static) == [x.shape] and capped.seen[small.shape] == 2  # the cap: the dynamic model


def test_one_image_goes_to_the_running_workers_not_to_a_new_engine_here(tmp_path: Path) -> None:
    """A shard's turned pass often has one image: with the pool up, its workers (models loaded) read it; the
    process does not compile the models a third time for it (0.5 s, and 5% of a 20-image run)."""
    import utils.models.ocr.engine as engine_mod

    settings = OcrSettings(text_score=0.45)  # settings of this test alone
    paths = [render(tmp_path / f"o{i}.jpg", [(f"{i}5 kg", 20, 60)], size=(320, 160)) for i in (1, 2, 3)]
    list(ocr_many(paths[:2], tmp_path / "cache", settings, workers=2))  # starts the pool
    out = dict(ocr_many(paths[2:], tmp_path / "cache", settings, workers=2))
    assert "35kg" in out[paths[2]].text.replace(" ", "").lower()
    assert not [key for key in engine_mod._ENGINES if key[0] == settings]  # no engine in this process
    out = dict(ocr_many([paths[0]], tmp_path / "cache", replace(settings, rotate=180), workers=2))
    assert out[paths[0]] is not None and not [key for key in engine_mod._ENGINES if key[0].text_score == 0.45]


@pytest.mark.parametrize("engine_name", ["openvino", "onnxruntime"])
def test_the_no_cjk_recogniser_is_the_full_one_renormalised_over_its_characters(engine_name: str) -> None:
    """``charset="no-cjk"`` leaves the Chinese, Japanese and Korean characters and emoji out of recognition: its
    probabilities are the full recogniser's over the kept characters, renormalised (OpenVINO computes only those
    columns), so a line reads the same wherever its best character is kept."""
    import numpy as np

    full = OcrEngine(OcrSettings(charset="all", engine=engine_name))._get().text_rec
    cut = OcrEngine(OcrSettings(charset="no-cjk", engine=engine_name))._get().text_rec
    chars, kept = full.postprocess_op.character, cut.postprocess_op.character
    assert len(chars) == 18710 and 1800 < len(kept) < 2000 and kept[0] == "blank"
    assert not [c for c in kept if any(0x4E00 <= ord(x) <= 0x9FFF or 0x3040 <= ord(x) <= 0x30FF for x in c)]
    assert all(c in kept for c in "0123456789.,x×()/-kgmlozcinLbWV%″'")
    idx = [chars.index(c) for c in kept]
    x = np.random.default_rng(0).standard_normal((6, 3, 48, 320), dtype=np.float32) * 0.5
    p_full, p_cut = full.session(x), cut.session(x)
    assert p_cut.shape == (*p_full.shape[:2], len(kept))
    want = p_full[..., idx] / p_full[..., idx].sum(axis=-1, keepdims=True)
    np.testing.assert_allclose(p_cut, want, atol=2e-4)


def test_no_cjk_reads_a_latin_label_as_the_full_recogniser_does(label: Path) -> None:
    full = OcrEngine(OcrSettings(charset="all")).run_path(label)
    cut = OcrEngine(OcrSettings(charset="no-cjk")).run_path(label)
    assert full is not None and cut is not None
    assert [(b.text, b.quad) for b in cut.boxes] == [(b.text, b.quad) for b in full.boxes]
    assert [b.score for b in cut.boxes] == pytest.approx([b.score for b in full.boxes], abs=1e-3)
    assert OcrSettings().key() != OcrSettings(charset="all").key()
    with pytest.raises(ValueError, match="charset"):
        OcrSettings(charset="latin")
