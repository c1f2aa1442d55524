"""Tests for utils.data.images: names, loading, validation, and the downloader against a fault-injecting server."""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from PIL import Image

from tests.image_server import ImageServer
from utils.data import download as D
from utils.data import images as I
from utils.data.download import DownloadSummary, clean_temp_files, download_images
from utils.data.images import InvalidImage, image_filename, image_path, load_image, validate_image_bytes

REPO = Path(__file__).resolve().parents[1]
# the test server is on the loopback interface, which the downloader refuses unless allowed explicitly
FAST = dict(timeout=0.5, total_timeout=5.0, retries=2, backoff=0.01, backoff_cap=0.05, progress=False,
            allow_local=True)


def _jpeg(w: int = 64, h: int = 48, color: tuple[int, int, int] = (200, 30, 30), **save: object) -> bytes:
    im = Image.new("RGB", (w, h), color)
    for x in range(0, w, 7):  # some structure, so the entropy-coded data is not trivial
        im.putpixel((x, x * h // w), (x % 255, 255 - x % 255, 90))
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=90, **save)
    return buf.getvalue()


def _png(w: int = 40, h: int = 30, mode: str = "RGB") -> bytes:
    buf = io.BytesIO()
    Image.new(mode, (w, h), (10, 120, 250) if mode == "RGB" else (10, 120, 250, 0)).save(buf, "PNG")
    return buf.getvalue()


def _read_failures(cache: Path) -> dict[str, tuple[str, int]]:
    with open(cache / "failures.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    return {r["url"]: (r["reason"], int(r["attempts"])) for r in rows}


def _visible_files(cache: Path) -> set[str]:
    return {p.name for p in cache.iterdir() if not p.name.startswith(".") and p.name != "failures.csv"}


# ------------------------------------------------------------------------------------------------ names


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("https://m.media-amazon.com/images/I/61I9XdN6OFL.jpg", "61I9XdN6OFL.jpg"),
        ("http://host:8080/a/b/71+x-y.jpg?width=100#frag", "71+x-y.jpg"),
        ("https://host/a/my%20photo.png", "my photo.png"),
        ("  https://host/x/A.jpg  ", "A.jpg"),
    ],
)
def test_image_filename_takes_the_last_path_segment(url: str, name: str) -> None:
    assert image_filename(url) == name
    assert image_path(Path("/cache"), url) == Path("/cache") / name


@pytest.mark.parametrize(
    "url",
    [
        "", "   ", "ftp://host/a.jpg", "file:///etc/passwd", "data:image/png;base64,AAAA", "/images/a.jpg",
        "https:///a.jpg", "https://host/", "https://host/dir/..", "https://host/a/%2e%2e",
        "https://host/a/..%2F..%2Fetc%2Fpasswd", "https://host/a/..%5C..%5Cwin.ini", "https://host/.bashrc",
        "https://host/a%00b.jpg", "https://host/" + "x" * 300 + ".jpg",
    ],
)
def test_image_filename_rejects_unsafe_urls(url: str) -> None:
    with pytest.raises(ValueError):
        image_filename(url)


# ------------------------------------------------------------------------------------------------ loading


def test_load_image_missing_and_garbage_give_none(tmp_path: Path) -> None:
    assert load_image(tmp_path / "nope.jpg") is None
    (tmp_path / "bad.jpg").write_bytes(b"<html>not an image</html>")
    assert load_image(tmp_path / "bad.jpg") is None
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert load_image(tmp_path / "empty.jpg") is None
    data = _jpeg(400, 300)
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    assert load_image(tmp_path / "trunc.jpg") is None
    assert load_image(tmp_path) is None  # a directory


def test_load_image_exif_rgb_and_downscale(tmp_path: Path) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    (tmp_path / "rot.jpg").write_bytes(_jpeg(80, 40, exif=exif.tobytes()))
    im = load_image(tmp_path / "rot.jpg")
    assert im is not None and im.mode == "RGB" and im.size == (40, 80)

    (tmp_path / "big.jpg").write_bytes(_jpeg(900, 300))
    small = load_image(tmp_path / "big.jpg", max_side=90)
    assert small is not None and small.size == (90, 30) and small.mode == "RGB"
    assert load_image(tmp_path / "big.jpg", max_side=2000).size == (900, 300)  # never upscaled

    (tmp_path / "alpha.png").write_bytes(_png(20, 10, mode="RGBA"))
    rgba = load_image(tmp_path / "alpha.png")
    assert rgba is not None and rgba.mode == "RGB" and rgba.getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(ValueError):
        load_image(tmp_path / "big.jpg", max_side=0)


def test_load_image_real_dev_image(amazon_dir: Path) -> None:
    path = sorted((amazon_dir / "dev" / "images").iterdir())[0]
    full = load_image(path)
    small = load_image(path, max_side=448)
    assert full is not None and small is not None and small.mode == "RGB"
    assert max(small.size) == min(448, max(full.size))
    assert abs(small.size[0] / small.size[1] - full.size[0] / full.size[1]) < 0.02


# ------------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize("full", [True, False])
def test_validate_image_bytes(full: bool) -> None:
    exif = Image.Exif()
    exif[0x0112] = 1
    data = _jpeg(300, 200, exif=exif.tobytes())
    png = _png(300, 200)
    assert validate_image_bytes(data, full_decode=full) == "JPEG"
    assert validate_image_bytes(png, full_decode=full) == "PNG"
    assert validate_image_bytes(data + b"\x00" * 100, full_decode=full) == "JPEG"  # padding after EOI is fine
    cases = [
        (b"", "empty"),
        (b"<!DOCTYPE html><html><body>captcha</body></html>", "HTML"),
        (b"\n  <html><head></head></html>", "HTML"),
        (b"\x00\x01garbage" * 50, "not an image"),
    ]
    cases += [(data[:cut], "truncated|corrupt") for cut in (len(data) // 3, len(data) * 2 // 3, len(data) - 2)]
    cases += [(png[:cut], "truncated|corrupt") for cut in (len(png) // 2, len(png) - 5)]
    for bad, words in cases:
        with pytest.raises(InvalidImage, match=words):
            validate_image_bytes(bad, full_decode=full)
    with pytest.raises(InvalidImage, match="decompression bomb"):
        validate_image_bytes(_png(200, 200), max_pixels=10_000, full_decode=full)


def test_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    s = D._Settings(1, 1, 3, backoff=0.2, backoff_cap=1.0, max_bytes=1, max_pixels=None,
                    verify_cached=False, full_decode=True, fsync=False)
    for attempt, base in [(1, 0.2), (2, 0.4), (3, 0.8), (4, 1.0), (9, 1.0)]:
        delays = {D._backoff_delay(attempt, s, None) for _ in range(50)}
        assert all(base / 2 <= d <= base for d in delays) and len(delays) > 1
    assert D._backoff_delay(1, s, 0.9) >= 0.9
    assert D._backoff_delay(1, s, 100.0) <= 1.0  # capped


# ------------------------------------------------------------------------------------------------ downloading


@pytest.fixture()
def server(monkeypatch: pytest.MonkeyPatch):
    """A loopback server that does not put itself into AMAZON_ALLOW_LOCAL_IMAGES (unset here): every download
    below must allow it explicitly, or is refused."""
    monkeypatch.delenv(D.ALLOW_LOCAL_ENV, raising=False)
    with ImageServer(allow_in_env=False) as srv:
        yield srv


def test_download_with_faults(server: ImageServer, tmp_path: Path) -> None:
    good = {f"/img/ok{i}.jpg": _jpeg(60 + i, 40, (i * 20, 10, 10)) for i in range(6)}
    good["/img/ok.png"] = _png()
    urls = [server.add(p, b) for p, b in good.items()]
    flaky = server.add("/img/flaky.jpg", _jpeg(33, 33), fail_first=1, fail_status=500)
    limited = server.add("/img/limited.jpg", _jpeg(34, 34), fail_first=2, fail_status=429, retry_after="0")
    broken = server.add("/img/always500.jpg", _jpeg(), fail_first=99)
    forbidden = server.add("/img/forbidden.jpg", _jpeg(), fail_first=99, fail_status=403)
    missing = server.url("/img/missing.jpg")
    big = _jpeg(300, 200)
    cut_conn = server.add("/img/cutconn.jpg", big, truncate_at=len(big) // 2)
    cut_file = server.add("/img/cutfile.jpg", big[: len(big) // 2])
    html = server.add("/img/page.jpg", b"<html><body>robot check</body></html>", content_type="text/html")
    html_as_jpeg = server.add("/img/sneaky.jpg", b"<!doctype html><html>x</html>", content_type="image/jpeg")
    hang = server.add("/img/hang.jpg", _jpeg(), hang=2.0)
    huge = server.add("/img/huge.jpg", b"\xff" * 300_000)
    huge_chunked = server.add("/img/huge2.jpg", b"\xff" * 300_000, send_length=False)
    bomb = server.add("/img/bomb.png", _png(400, 400))
    bad = ["ftp://127.0.0.1/x.jpg", server.url("/img/..%2F..%2Fescape.jpg"), ""]
    all_urls = urls + urls[:3] + [flaky, limited, broken, forbidden, missing, cut_conn, cut_file, html,
                                   html_as_jpeg, hang, huge, huge_chunked, bomb] + bad

    t0 = time.monotonic()
    summary = download_images(all_urls, tmp_path / "cache", workers=8, max_bytes=200_000,
                              max_pixels=100_000, **FAST)
    assert time.monotonic() - t0 < 10
    cache = tmp_path / "cache"
    assert isinstance(summary, DownloadSummary)
    assert (summary.downloaded, summary.cached, summary.failed) == (9, 0, 14)
    assert str(summary) == "downloaded 9, cached 0, failed 14"
    for path, body in good.items():  # byte-identical, deduplicated: one request each
        assert (cache / Path(path).name).read_bytes() == body
        assert server.hits[path] == 1
    assert _visible_files(cache) == {Path(p).name for p in good} | {"flaky.jpg", "limited.jpg"}
    assert not [p for p in cache.iterdir() if ".part-" in p.name]

    fails = _read_failures(cache)
    assert len(fails) == 14
    assert fails[broken] == ("HTTP 500", 3)
    assert fails[forbidden] == ("HTTP 403", 1) and fails[missing] == ("HTTP 404", 1)
    assert fails[cut_conn][0].startswith("connection error") and fails[cut_conn][1] == 3
    assert "truncated" in fails[cut_file][0] and fails[cut_file][1] == 1
    assert "content-type text/html" in fails[html][0] and fails[html][1] == 1
    assert "HTML" in fails[html_as_jpeg][0]
    assert fails[hang][0].startswith("timeout") and fails[hang][1] == 3
    assert "too large" in fails[huge][0] and "too large" in fails[huge_chunked][0]
    assert "decompression bomb" in fails[bomb][0]
    assert all(fails[u][1] == 0 and fails[u][0].startswith("rejected") for u in bad)
    assert server.hits["/img/flaky.jpg"] == 2 and server.hits["/img/limited.jpg"] == 3

    # resume: everything valid is skipped, only the failures are tried again
    before = dict(server.hits)
    again = download_images(all_urls, cache, workers=8, max_bytes=200_000, max_pixels=100_000, **FAST)
    assert (again.downloaded, again.cached, again.failed) == (0, 9, 14)
    for path in good:
        assert server.hits[path] == before[path]
    assert server.hits["/img/missing.jpg"] == before["/img/missing.jpg"] + 1


def test_redirects_and_stale_keepalive_connections(server: ImageServer, tmp_path: Path) -> None:
    body = _jpeg(50, 50)
    target = server.add("/r/real.jpg", body)
    moved = server.add("/r/moved.jpg", b"", status=301, headers={"Location": "/r/real.jpg"})
    loop = server.add("/r/loop.jpg", b"", status=302, headers={"Location": "/r/loop.jpg"})
    s = download_images([moved, loop], tmp_path / "r", **FAST)
    assert (s.downloaded, s.failed) == (1, 1)
    assert (tmp_path / "r" / "moved.jpg").read_bytes() == body and server.hits["/r/real.jpg"] == 1
    assert "redirects" in s.failures[0].reason and server.hits["/r/loop.jpg"] == 6
    assert target.endswith("/r/real.jpg")
    # the server silently closes each kept-alive connection: reusing it must not cost an attempt
    urls = [server.add(f"/d/{i}.jpg", _jpeg(20 + i, 20), drop_after=True) for i in range(4)]
    s = download_images(urls, tmp_path / "d", workers=1, **{**FAST, "retries": 0})
    assert (s.downloaded, s.failed) == (4, 0)


def test_corrupt_cache_file_is_downloaded_again(server: ImageServer, tmp_path: Path) -> None:
    body = _jpeg(300, 200)
    url = server.add("/x/a.jpg", body)
    url2 = server.add("/x/b.jpg", _jpeg(20, 20))
    cache = tmp_path / "c"
    cache.mkdir()
    (cache / "a.jpg").write_bytes(body[: len(body) - 300])  # left by a non-atomic tool
    (cache / "b.jpg").write_bytes(b"")
    s = download_images([url, url2], cache, **FAST)
    assert (s.downloaded, s.cached, s.failed) == (2, 0, 0)
    assert (cache / "a.jpg").read_bytes() == body
    # a corrupt file that cannot be fetched again is removed, not left under an image name
    (cache / "gone.jpg").write_bytes(b"\xff\xd8junk")
    s = download_images([server.url("/x/gone.jpg")], cache, **FAST)
    assert s.failed == 1 and not (cache / "gone.jpg").exists()


def test_leftover_temp_files_are_cleaned(tmp_path: Path) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / f".a.jpg.part-{dead.pid}-1").write_bytes(b"partial")
    (tmp_path / ".b.jpg.part-1-1").write_bytes(b"pid 1 is alive")  # another live run: left alone
    (tmp_path / "keep.jpg").write_bytes(b"x")
    assert clean_temp_files(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".b.jpg.part-1-1", "keep.jpg"]


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="workers"):
        download_images([], tmp_path, workers=0)
    with pytest.raises(ValueError, match="iterable"):
        download_images("https://h/a.jpg", tmp_path)
    s = download_images([], tmp_path / "empty", progress=False)
    assert s.line() == "downloaded 0, cached 0, failed 0" and (tmp_path / "empty" / "failures.csv").is_file()


def test_real_dev_images_and_dataframe(server: ImageServer, tmp_path: Path, amazon_dir: Path) -> None:
    import pandas as pd

    files = sorted((amazon_dir / "dev" / "images").iterdir())[:12]
    df = pd.DataFrame({"image_link": [server.add(f"/images/I/{f.name}", f.read_bytes()) for f in files] * 2})
    real = files[0].read_bytes()
    cut = server.add("/images/I/cut.jpg", real[: len(real) * 3 // 4])
    df.loc[len(df)] = [cut]
    s = download_images(df["image_link"], tmp_path, workers=4, max_bytes=max(f.stat().st_size for f in files),
                        full_decode=True, **FAST)
    assert (s.downloaded, s.cached, s.failed) == (12, 0, 1)
    for f in files:
        assert (tmp_path / f.name).read_bytes() == f.read_bytes()
        assert load_image(tmp_path / f.name, max_side=64) is not None
    assert "truncated" in _read_failures(tmp_path)[cut][0]
    for f in files:  # the default structural check catches every cut of a real image
        body = f.read_bytes()
        assert validate_image_bytes(body, full_decode=False) == "JPEG"
        for cut in (len(body) // 10, len(body) // 2, len(body) * 9 // 10, len(body) - 1):
            with pytest.raises(InvalidImage, match="truncated"):
                validate_image_bytes(body[:cut], full_decode=False)
    small_cap = download_images([server.url(f"/images/I/{files[1].name}")], tmp_path / "cap",
                                max_bytes=files[1].stat().st_size - 1, **FAST)
    assert small_cap.failed == 1 and "too large" in small_cap.failures[0].reason


# ------------------------------------------------------------------------------------------------ CLI


def _write_csv(path: Path, urls: list[str]) -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["index", "image_link", "group_id", "entity_name"])
        for i, u in enumerate(urls):
            w.writerow([i, u, 1, "item_weight"])


def test_cli_summary_line(server: ImageServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    urls = [server.add(f"/c/{i}.jpg", _jpeg(30 + i, 30)) for i in range(3)] + [server.url("/c/404.jpg")]
    _write_csv(tmp_path / "t.csv", urls + urls[:1])
    rc = D.main(["download", str(tmp_path / "t.csv"), str(tmp_path / "cache"), "--workers", "2",
                 "--no-progress", "--retries", "0", "--timeout", "1", "--allow-local", "--max-failed-share", "0.5"])
    assert rc == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "downloaded 3, cached 0, failed 1"
    assert D.main(["download", str(tmp_path / "missing.csv"), str(tmp_path / "c2")]) == 2
    (tmp_path / "bad.csv").write_text("a,b\n1,2\n")
    assert D.main(["download", str(tmp_path / "bad.csv"), str(tmp_path / "c2")]) == 2
    assert "image_link" in capsys.readouterr().err


def test_cli_bad_input_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The downloader's hostile inputs: a file given as the folder (a FileExistsError traceback), a folder under a
    file, bytes that are not UTF-8 (no file or line), a folder given as the CSV ("CSV file not found"); and a pipe
    as the CSV (``<(cat test.csv)``) is read."""
    good = tmp_path / "t.csv"
    _write_csv(good, ["https://example.invalid/a.jpg"])
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    latin = tmp_path / "latin.csv"
    latin.write_bytes(good.read_bytes().replace(b"a.jpg", b"caf\xe9.jpg"))
    cases = [([str(good), str(a_file)], f"error: {a_file} is a file, not a folder"),
             ([str(good), str(a_file / "cache")], f"error: {a_file / 'cache'} cannot be created: {a_file} is a file"),
             ([str(latin), str(tmp_path / "c")], f"error: CSV {latin}: line 2, byte "),
             ([str(tmp_path), str(tmp_path / "c")], f"error: CSV {tmp_path}: is a folder, not a CSV file")]
    for args, message in cases:
        assert D.main(["download", *args, "--no-progress"]) == 2, args
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and err.startswith(message), err
    fifo = tmp_path / "pipe.csv"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(b"index,image_link\n"), daemon=True)
    writer.start()
    assert D.main(["download", str(fifo), str(tmp_path / "c"), "--no-progress"]) == 0
    assert capsys.readouterr().out.strip() == "downloaded 0, cached 0, failed 0"


def test_a_stored_size_cap_shrinks_only_larger_images(server: ImageServer, tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    """``max_side`` (``--max-side``, stage 01/03 ``image_max_side``): an image with a longer side is stored
    re-encoded at that side, in its own format, EXIF orientation applied; smaller ones are stored byte for byte."""
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display: 2000 x 1000 stored shows as 1000 x 2000
    big = _jpeg(2000, 1000, exif=exif.tobytes())
    small = _jpeg(600, 400)
    wide_png = _png(1800, 300, mode="RGBA")
    served = {"/cap/big.jpg": big, "/cap/small.jpg": small, "/cap/wide.png": wide_png}
    urls = [server.add(path, body) for path, body in served.items()]
    summary = download_images(urls, tmp_path / "capped", max_side=1280, **FAST)
    assert summary.downloaded == 3 and summary.failed == 0
    capped = tmp_path / "capped"
    assert (capped / "small.jpg").read_bytes() == small
    with Image.open(capped / "big.jpg") as im:
        assert im.format == "JPEG" and im.size == (640, 1280)  # upright, longest side 1280
    assert (capped / "big.jpg").stat().st_size < len(big)
    with Image.open(capped / "wide.png") as im:
        assert im.format == "PNG" and im.size == (1280, 213) and im.mode == "RGBA"
    shown = load_image(capped / "big.jpg")
    assert shown is not None and shown.size == (640, 1280)  # what a model reads: the same way up as the original
    assert summary.bytes_downloaded == sum(p.stat().st_size for p in capped.iterdir() if p.suffix != ".csv")

    uncapped = download_images(urls, tmp_path / "full", **FAST)  # the default stores what came
    assert uncapped.downloaded == 3 and (tmp_path / "full" / "big.jpg").read_bytes() == big

    _write_csv(tmp_path / "t.csv", urls)
    rc = D.main(["download", str(tmp_path / "t.csv"), str(tmp_path / "cli"), "--no-progress", "--allow-local",
                 "--max-side", "896"])
    assert rc == 0
    with Image.open(tmp_path / "cli" / "big.jpg") as im:
        assert max(im.size) == 896
    assert D.main(["download", str(tmp_path / "t.csv"), str(tmp_path / "c3"), "--max-side", "-5"]) == 2
    assert "max_side must be a positive int" in capsys.readouterr().err


@pytest.mark.slow
def test_sigkill_mid_run_never_exposes_partial_files(tmp_path: Path) -> None:
    bodies = {f"k{i:02d}.jpg": _jpeg(200 + i, 150, (i * 5, 100, 200)) for i in range(40)}
    with ImageServer(latency=0.1, allow_in_env=False) as srv:
        urls = [srv.add(f"/k/{n}", b, chunks=4, chunk_delay=0.02) for n, b in bodies.items()]
        _write_csv(tmp_path / "t.csv", urls)
        cache = tmp_path / "cache"
        cmd = [sys.executable, "-m", "utils.images", "download", str(tmp_path / "t.csv"), str(cache),
               "--workers", "4", "--no-progress", "--allow-local"]
        bad_seen: list[str] = []
        stop = threading.Event()

        def watch() -> None:  # every file visible under an image name must be complete, at every moment
            while not stop.is_set():
                if cache.is_dir():
                    for name in _visible_files(cache):
                        try:
                            data = (cache / name).read_bytes()
                        except FileNotFoundError:
                            continue
                        if data != bodies.get(name):
                            bad_seen.append(name)
                time.sleep(0.005)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (not cache.is_dir() or len(_visible_files(cache)) < 8):
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        n_before = len(_visible_files(cache))
        assert 8 <= n_before < len(bodies), "the kill should land mid-run"
        # a temp file the killed run could have left mid-write
        (cache / f".k00.jpg.part-{proc.pid}-7").write_bytes(b"\xff\xd8partial")

        out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=60)
        stop.set()
        watcher.join()
        assert out.returncode == 0, out.stderr
        n_now = len(bodies) - n_before
        assert out.stdout.strip().splitlines()[-1] == f"downloaded {n_now}, cached {n_before}, failed 0"
    assert bad_seen == []
    assert _visible_files(cache) == set(bodies)
    for name, body in bodies.items():
        assert (cache / name).read_bytes() == body
    assert not [p for p in cache.iterdir() if ".part-" in p.name]


def test_cached_image_is_none_for_links_naming_no_usable_file(tmp_path: Path) -> None:
    assert I.cached_image(tmp_path, "https://m.media-amazon.com/images/I/61I9XdN6OFL.jpg") == (
        tmp_path / "61I9XdN6OFL.jpg"
    )
    for bad in ("", None, float("nan"), "ftp://x/a.jpg", "https://x/a/..", "https://x/%2e%2e", "https://x/a%2Fb.jpg", "https://x/"):
        assert I.cached_image(tmp_path, bad) is None, bad


# ------------------------------------------------------------------------------------------------ issue point 12
# local addresses are refused (direct, by name and after a redirect), the failure threshold, one row per URL in
# failures.csv, and one pixel limit for the downloader and load_image


@pytest.mark.parametrize(
    ("address", "kind"),
    [("127.0.0.1", "loopback"), ("127.8.9.10", "loopback"), ("::1", "loopback"), ("::ffff:127.0.0.1", "loopback"),
     ("10.1.2.3", "private"), ("172.16.0.1", "private"), ("192.168.1.20", "private"), ("fc00::1", "private"),
     ("169.254.169.254", "link-local"), ("fe80::1%eth0", "link-local"), ("0.0.0.0", "unspecified"),
     ("224.0.0.1", "multicast"), ("100.64.0.1", "non-public"), ("8.8.8.8", None), ("151.101.1.69", None),
     ("2606:4700::1111", None)],
)
def test_local_address_kind(address: str, kind: str | None) -> None:
    assert D.local_address_kind(address) == kind


def test_address_policy_from_argument_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(D.ALLOW_LOCAL_ENV, raising=False)
    assert D.address_policy().refusal("127.0.0.1") == "127.0.0.1, a loopback address"
    assert D.address_policy(True).refusal("10.0.0.7") is None
    assert D.address_policy(False).refusal("8.8.8.8") is None  # public addresses are always fine
    nets = D.address_policy(["10.0.0.0/8", "127.0.0.2"])
    assert nets.refusal("10.9.9.9") is None and nets.refusal("127.0.0.2") is None
    assert nets.refusal("127.0.0.1") and nets.refusal("192.168.0.1") and nets.refusal("::1")
    for value, loopback_ok in [("1", True), ("yes", True), ("all", True), ("0", False), ("", False),
                               ("127.0.0.0/8, 10.0.0.0/8", True), ("192.168.0.0/16", False)]:
        monkeypatch.setenv(D.ALLOW_LOCAL_ENV, value)
        assert (D.address_policy().refusal("127.0.0.1") is None) is loopback_ok, value
        assert D.address_policy(False).refusal("127.0.0.1") is not None  # an explicit False wins over the env
    monkeypatch.setenv(D.ALLOW_LOCAL_ENV, "my-mirror")
    with pytest.raises(ValueError, match=f"environment variable {D.ALLOW_LOCAL_ENV}: 'my-mirror' is not an IP"):
        D.address_policy()
    with pytest.raises(ValueError, match="allow_local: '10.0.0.0/33'"):
        D.address_policy(["10.0.0.0/33"])


def test_loopback_is_refused_by_default_before_any_request(server: ImageServer, tmp_path: Path) -> None:
    direct = server.add("/l/direct.jpg", _jpeg())
    by_name = f"http://localhost:{server.port}/l/byname.jpg"  # resolved by DNS: the connected address decides
    server.add("/l/byname.jpg", _jpeg())
    kw = {**FAST, "allow_local": None}  # the default: refuse (the fixture unset the environment variable)
    s = download_images([direct, by_name], tmp_path / "c", **kw)
    assert (s.downloaded, s.failed) == (0, 2)
    fails = _read_failures(tmp_path / "c")
    for url in (direct, by_name):
        reason, attempts = fails[url]
        assert reason.startswith(f"refused: {url} connects to ") and "a loopback address" in reason, reason
        assert "--allow-local" in reason and attempts == 1  # permanent: not retried
    assert server.hits["/l/direct.jpg"] == 0 and server.hits["/l/byname.jpg"] == 0  # nothing was sent
    assert not (tmp_path / "c" / "direct.jpg").exists()
    # explicitly allowed: the same URLs download
    s = download_images([direct, by_name], tmp_path / "c", **FAST)
    assert (s.downloaded, s.failed) == (2, 0) and _read_failures(tmp_path / "c") == {}


@pytest.fixture()
def second_loopback(monkeypatch: pytest.MonkeyPatch):
    """A second server on another loopback address (127.0.0.2), to tell two hops apart by address."""
    monkeypatch.delenv(D.ALLOW_LOCAL_ENV, raising=False)
    try:
        srv = ImageServer(host="127.0.0.2", allow_in_env=False).start()
    except OSError as exc:  # pragma: no cover - Linux routes all of 127/8 to lo; other systems may not
        pytest.skip(f"cannot listen on 127.0.0.2: {exc}")
    yield srv
    srv.stop()


def test_redirect_to_a_refused_address_is_checked_on_every_hop(
    server: ImageServer, second_loopback: ImageServer, tmp_path: Path
) -> None:
    """The first hop (127.0.0.2) is allowed, the redirect target (127.0.0.1, or a name resolving to it) is not."""
    body = _jpeg(40, 40)
    target = server.add("/t/real.jpg", body)  # on 127.0.0.1
    hop = second_loopback.add("/h/hop.jpg", b"", status=302, headers={"Location": target})
    by_name = second_loopback.add("/h/byname.jpg", b"", status=301,
                                  headers={"Location": f"http://localhost:{server.port}/t/real.jpg"})
    two = second_loopback.add("/h/two.jpg", b"", status=302, headers={"Location": "/h/hop.jpg"})  # 2 hops
    only_first = {**FAST, "allow_local": ["127.0.0.2"]}
    s = download_images([hop, by_name, two], tmp_path / "c", **only_first)
    assert (s.downloaded, s.failed) == (0, 3)
    fails = _read_failures(tmp_path / "c")
    assert fails[hop][0].startswith(f"refused: redirect 1 to {target} connects to 127.0.0.1, a loopback address")
    assert fails[by_name][0].startswith("refused: redirect 1 to http://localhost:")
    assert fails[two][0].startswith(f"refused: redirect 2 to {target} connects to 127.0.0.1")
    assert second_loopback.hits["/h/hop.jpg"] == 2 and second_loopback.hits["/h/byname.jpg"] == 1
    assert server.hits["/t/real.jpg"] == 0  # the refused target never saw a request
    # control: the same redirects work when the target is allowed too, so the refusal above was the check's
    s = download_images([hop, by_name, two], tmp_path / "ok", **{**FAST, "allow_local": ["127.0.0.0/8", "::1"]})
    assert (s.downloaded, s.failed) == (3, 0) and (tmp_path / "ok" / "hop.jpg").read_bytes() == body
    assert server.hits["/t/real.jpg"] == 3


def test_environment_variable_allows_a_local_mirror(server: ImageServer, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    url = server.add("/e/a.jpg", _jpeg())
    kw = {**FAST, "allow_local": None}
    monkeypatch.setenv(D.ALLOW_LOCAL_ENV, "10.0.0.0/8")
    assert download_images([url], tmp_path / "a", **kw).failed == 1
    monkeypatch.setenv(D.ALLOW_LOCAL_ENV, "127.0.0.1")
    assert download_images([url], tmp_path / "b", **kw).downloaded == 1
    monkeypatch.setenv(D.ALLOW_LOCAL_ENV, "not-an-address")
    with pytest.raises(ValueError, match=D.ALLOW_LOCAL_ENV):
        download_images([url], tmp_path / "c", **kw)


def test_image_server_puts_itself_into_the_environment_while_running(monkeypatch: pytest.MonkeyPatch) -> None:
    """What lets callers that cannot pass allow_local (utils.data.census.fetch_missing) reach the test server."""
    monkeypatch.delenv(D.ALLOW_LOCAL_ENV, raising=False)
    with ImageServer():
        assert os.environ[D.ALLOW_LOCAL_ENV] == "127.0.0.1"
        assert D.address_policy().refusal("127.0.0.1") is None
    assert D.ALLOW_LOCAL_ENV not in os.environ
    monkeypatch.setenv(D.ALLOW_LOCAL_ENV, "10.0.0.0/8")
    with ImageServer():
        assert os.environ[D.ALLOW_LOCAL_ENV] == "10.0.0.0/8,127.0.0.1"
    assert os.environ[D.ALLOW_LOCAL_ENV] == "10.0.0.0/8"


def test_cli_refuses_loopback_without_allow_local(server: ImageServer, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    urls = [server.add(f"/cl/{i}.jpg", _jpeg(20 + i, 20)) for i in range(3)]
    _write_csv(tmp_path / "t.csv", urls)
    args = ["download", str(tmp_path / "t.csv"), str(tmp_path / "cache"), "--no-progress", "--retries", "0"]
    assert D.main(args) == 1
    captured = capsys.readouterr()
    assert captured.out.strip().splitlines()[-1] == "downloaded 0, cached 0, failed 3"
    assert "error: 3 of 3 images failed (100.0%)" in captured.err
    assert all(r.startswith("refused:") for r, _ in _read_failures(tmp_path / "cache").values())
    assert sum(server.hits.values()) == 0
    assert D.main([*args, "--allow-local"]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == "downloaded 3, cached 0, failed 0"


def test_cli_exits_nonzero_above_the_failure_threshold(server: ImageServer, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    ok = [server.add(f"/th/{i}.jpg", _jpeg(20 + i, 20)) for i in range(3)]
    urls = ok + [server.url("/th/404.jpg")]  # 1 of 4 unique images fails: 25%
    _write_csv(tmp_path / "t.csv", urls)

    def run(*extra: str) -> int:
        rc = D.main(["download", str(tmp_path / "t.csv"), str(tmp_path / "cache"), "--no-progress",
                     "--retries", "0", "--allow-local", *extra])
        capsys.readouterr()
        return rc

    assert run() == 1  # default: more than 1% failed
    assert run("--max-failed-share", "0.25") == 0  # exactly the threshold is fine
    assert run("--max-failed-share", "0.2") == 1
    assert run("--max-failed-share", "1") == 0
    with pytest.raises(SystemExit) as exc:
        run("--max-failed-share", "25")
    assert exc.value.code == 2
    # the library reports the share and leaves the decision to its caller
    s = download_images(urls, tmp_path / "lib", **FAST)
    assert s.failed_share == 0.25 and (s.failed, s.total) == (1, 4)
    assert DownloadSummary().failed_share == 0.0


def test_failures_csv_has_one_row_per_url_across_runs(server: ImageServer, tmp_path: Path) -> None:
    """How rows went wrong before: every run rewrote failures.csv with its own failures only, so a run over a
    subset (a shard fetching its own rows' images into the shared folder) erased the rows of the others. Rows now
    merge by URL: never repeated, replaced by the newest outcome, dropped once the image is cached."""
    cache = tmp_path / "cache"
    kw = {**FAST, "retries": 0}
    a, b = server.url("/f/a.jpg"), server.url("/f/b.jpg")  # both 404 for now
    ok = server.add("/f/ok.jpg", _jpeg())
    bad = "ftp://example.com/x.jpg"
    shard1 = [a, a, f" {a} ", ok, bad, bad, None, float("nan"), ""]  # duplicates inside one run
    shard2 = [b, bad]
    download_images(shard1, cache, **kw)
    download_images(shard2, cache, **kw)
    rows = list(csv.DictReader(open(cache / "failures.csv", newline="")))
    assert sorted(r["url"] for r in rows) == sorted([a, b, bad, ""])  # shard 1's rows survived shard 2
    for _ in range(3):  # reruns: same rows, not repeated
        download_images(shard1 + shard2, cache, **kw)
    rows = list(csv.DictReader(open(cache / "failures.csv", newline="")))
    assert sorted(r["url"] for r in rows) == sorted([a, b, bad, ""])
    # a URL that works now loses its row when retried; one fetched by a run for other rows loses it as well
    server.add("/f/a.jpg", _jpeg(30, 30))
    server.add("/f/b.jpg", _jpeg(31, 31))
    download_images([a], cache, **kw)
    assert sorted(_read_failures(cache)) == sorted([b, bad, ""])
    (cache / "b.jpg").write_bytes(_jpeg(31, 31))  # e.g. another shard cached it
    download_images([ok], cache, **kw)
    assert sorted(_read_failures(cache)) == sorted([bad, ""])


def test_concurrent_runs_keep_each_others_failure_rows(server: ImageServer, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    groups = [[server.url(f"/cc/{g}-{i}.jpg") for i in range(5)] for g in range(4)]
    threads = [threading.Thread(target=download_images, args=(urls, cache), kwargs={**FAST, "retries": 0})
               for urls in groups]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(_read_failures(cache)) == sorted(u for urls in groups for u in urls)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_one_pixel_limit_for_the_downloader_and_load_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pillow warns above Image.MAX_IMAGE_PIXELS but only refuses above twice that: load_image used to accept
    images (limit, 2 x limit] that the downloader rejected as decompression bombs."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 6_000)  # Pillow's thresholds, scaled down: warn 6,000, error 12,000
    monkeypatch.setattr(I, "MAX_PIXELS", 6_000, raising=False)
    big = _png(100, 100)  # 10,000 pixels: between the two thresholds
    with pytest.raises(InvalidImage, match="decompression bomb"):
        validate_image_bytes(big)
    (tmp_path / "big.png").write_bytes(big)
    assert load_image(tmp_path / "big.png") is None
    (tmp_path / "ok.png").write_bytes(_png(60, 100))  # exactly the limit is fine for both
    assert validate_image_bytes((tmp_path / "ok.png").read_bytes()) == "PNG"
    assert load_image(tmp_path / "ok.png").size == (60, 100)


def test_cached_image_over_the_pixel_limit_is_not_kept(server: ImageServer, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(I, "MAX_PIXELS", 6_000)
    url = server.add("/px/big.png", _png(100, 100), content_type="image/png")
    cache = tmp_path / "c"
    cache.mkdir()
    (cache / "big.png").write_bytes(_png(100, 100))  # cached by an older version with a higher limit
    s = download_images([url], cache, **FAST)
    assert s.failed == 1 and "decompression bomb" in s.failures[0].reason
    assert not (cache / "big.png").exists() and server.hits["/px/big.png"] == 1


def _bomb_png(w: int = 50_000, h: int = 50_000) -> bytes:
    """A tiny PNG whose header claims ``w`` x ``h`` pixels (a decompression bomb: Pillow refuses it on open)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + chunk(b"IEND", b""))


def test_only_regular_files_are_opened_as_images(tmp_path: Path) -> None:
    """A FIFO named like an image is never opened (that blocks until someone writes into it: the shard hung
    forever); a folder, a symlink loop and a bomb are no image either."""
    from utils.models.ocr.engine import OcrSettings
    from utils.models.ocr.reading import cache_file

    fifo = tmp_path / "x.jpg"
    os.mkfifo(fifo)
    (tmp_path / "folder.jpg").mkdir()
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    (tmp_path / "bomb.png").write_bytes(_bomb_png())
    results: dict[str, object] = {}

    def look() -> None:
        results["fifo"] = (load_image(fifo), I.read_image_bytes(fifo),
                           cache_file(tmp_path / "c", fifo, OcrSettings()))

    reader = threading.Thread(target=look, daemon=True)
    reader.start()
    reader.join(timeout=10)
    if reader.is_alive():  # blocked in open(): let it go by opening the FIFO's other end, then fail
        os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        pytest.fail("opening a FIFO as an image blocked")
    assert results["fifo"] == (None, None, None)
    assert not I.is_image_file(fifo) and not I.is_image_file(tmp_path / "folder.jpg")
    for name in ("folder.jpg", "loop.jpg", "bomb.png", "absent.jpg"):
        assert load_image(tmp_path / name) is None, name
        assert I.read_image_bytes(tmp_path / name) is None or name == "bomb.png"
    assert len(_bomb_png()) < 300
