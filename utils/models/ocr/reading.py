"""Reading many images: the per-image OCR cache, a process pool of engines, and ``ocr_many`` over both.

Results are cached per image on disk (one small JSON per image, keyed by the image's file name, content and the
OCR settings), so a rerun over the same images costs nothing, and a missing image is never cached (it may be
downloaded later). Both cores are used by a small process pool kept alive between calls (models load once per
worker), each worker with one inference thread (``threads``). ``ocr_many`` is the one route every caller takes:
the backend's fit, predict and warm, the benchmarks and the CLI.

CLI: ``python -m utils.models.ocr.reading IMAGE_DIR CACHE_DIR [--max-side 1280] [--workers 2] [--engine openvino]
[--precision f32]`` OCRs every image in a folder into the cache.
"""

from __future__ import annotations

import argparse
import atexit
import hashlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import Any

from utils.data.images import read_image_bytes
from utils.env.fileio import atomic_write_bytes
from utils.models.ocr.engine import (
    CHARSETS,
    DEFAULT_CACHE_ENV,
    DEFAULT_ENGINE,
    DEFAULT_MAX_SIDE,
    ENGINES,
    PRECISIONS,
    OcrEngine,
    OcrResult,
    OcrSettings,
    get_engine,
)


def cache_file(cache_dir: Path, image: Path, settings: OcrSettings) -> Path | None:
    """The cache JSON for an image: named by file name and keyed by the file's content and the settings; None if
    the image is missing. Keying on content (not mtime) keeps hits when a folder is copied or re-mounted (a Kaggle
    input copied to the working dir, a data share materialised afresh): hashing costs ~1 ms, OCR ~0.5 s."""
    image = Path(image)
    data = read_image_bytes(image)  # None for a missing file, a folder or a FIFO (never blocks on one)
    if data is None:
        return None
    digest = hashlib.blake2b(data, digest_size=16)
    digest.update(settings.key().encode())
    return Path(cache_dir) / settings.key() / f"{image.name}.{digest.hexdigest()[:12]}.json"


def image_cache_file(cache_dir: Path | None, image: Path, settings: OcrSettings) -> Path | None:
    """``cache_file`` when caching is on (``cache_dir`` given), else None: computed once per image by callers,
    since it hashes the image's bytes."""
    return None if cache_dir is None else cache_file(cache_dir, image, settings)


def read_cache(f: Path | None) -> tuple[bool, OcrResult | None]:
    """(hit, result) from cache file ``f`` (None: no cache); a hit may hold None for an undecodable image."""
    if f is None or not f.is_file():
        return False, None
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError):
        return False, None
    return True, (OcrResult.from_json(data) if data.get("ok", True) else None)


def write_cache(f: Path | None, result: OcrResult | None) -> None:
    """Store one result in cache file ``f`` (None: no cache) atomically (write + rename), so a killed run never
    leaves a torn file."""
    if f is None:
        return
    f.parent.mkdir(parents=True, exist_ok=True)
    data = {"ok": False} if result is None else {"ok": True, **result.to_json()}
    atomic_write_bytes(f, json.dumps(data).encode("utf-8"), tmp=f.with_suffix(f".tmp{os.getpid()}"), fsync=False)


def default_cache_dir() -> Path | None:
    """``$OCR_CACHE_DIR`` when set, else None (no cache)."""
    v = os.environ.get(DEFAULT_CACHE_ENV)
    return Path(v) if v else None


def ocr_to_cache(path: Path, f: Path | None, engine: OcrEngine, rotate: int | None = None) -> OcrResult | None:
    """OCR one image (a known cache miss), turned by ``rotate`` (default the engine's), and store the result in
    cache file ``f``. A missing image has no cache file (``cache_file`` is None), so "missing" is never cached: the
    file may be downloaded later."""
    res = engine.run_path(path, rotate)
    write_cache(f, res)
    return res


# ---- process pool: one engine per worker, one inference thread each ---------------------------------------------

_WORKER: OcrEngine | None = None


def _worker_init(settings: OcrSettings, threads: int = 1) -> None:
    global _WORKER
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))
    _WORKER = OcrEngine(settings, threads=threads)


def _worker_run(args: tuple[str, str | None, int]) -> tuple[str, dict[str, Any] | None]:
    """OCR one cache miss in a worker: (image path, its cache file or None, rotation) -> (path, result as JSON)."""
    path, f, rotate = args
    assert _WORKER is not None
    res = ocr_to_cache(Path(path), Path(f) if f else None, _WORKER, rotate)
    return path, (res.to_json() if res is not None else None)


def default_workers() -> int:
    """Two workers where two cores exist (the target machine), else one."""
    return max(1, min(2, os.cpu_count() or 1))


Progress = Callable[[int, int], None]


def tqdm_progress(desc: str = "OCR") -> Progress:
    """A ``progress`` callback for ``ocr_many`` drawing a tqdm bar on stderr (closed when the last image is done)."""
    from tqdm import tqdm

    bar: list[Any] = []

    def update(done: int, total: int) -> None:
        if not bar:
            bar.append(tqdm(total=total, desc=desc, unit="img", file=sys.stderr, mininterval=1.0))
        bar[0].update(done - bar[0].n)
        if done >= total:
            bar[0].close()

    return update


def ocr_many(
    paths: Iterable[Path],
    cache_dir: Path | None = None,
    settings: OcrSettings | None = None,
    workers: int | None = None,
    threads: int = 1,
    progress: Progress | None = None,
) -> Iterator[tuple[Path, OcrResult | None]]:
    """OCR many images (cache first), yielding (path, result) in input order; uses ``workers`` processes of
    ``threads`` inference threads each. ``progress(done, total)`` is called as cache misses finish (``total`` =
    the number of misses; never called when everything is cached): e.g. ``tqdm_progress()``."""
    settings = settings or OcrSettings()
    paths = [Path(p) for p in paths]
    todo: dict[Path, Path | None] = {}  # cache miss -> its cache file (hashed once, here)
    cached: dict[Path, OcrResult | None] = {}
    for p in dict.fromkeys(paths):
        f = image_cache_file(cache_dir, p, settings)
        hit, res = read_cache(f)
        if hit:
            cached[p] = res
        else:
            todo[p] = f
    workers = default_workers() if workers is None else max(1, int(workers))
    computed: dict[Path, OcrResult | None] = {}
    upright = replace(settings, rotate=0)  # engines and pools serve every rotation
    threads = max(1, int(threads))
    # one image with no pool yet: read here rather than start workers; with the pool up (a shard's turned pass of
    # one image), its workers, which have the models loaded, rather than compiling them a third time in here
    if todo and (workers == 1 or (len(todo) == 1 and _pool_key(upright, workers, threads) not in _POOLS)):
        engine = get_engine(upright, threads=threads * workers)
        it: Iterator[tuple[Path, OcrResult | None]] = (
            (p, ocr_to_cache(p, f, engine, settings.rotate)) for p, f in todo.items())
    elif todo:
        pool = get_pool(upright, workers, threads)
        jobs = [(str(p), str(f) if f else None, settings.rotate) for p, f in todo.items()]
        it = (
            (Path(p), OcrResult.from_json(d) if d is not None else None)
            for p, d in pool.map(_worker_run, jobs, chunksize=1)
        )
    else:
        it = iter(())
    for p in paths:
        if p in cached:
            yield p, cached[p]
            continue
        while p not in computed:
            q, r = next(it)
            computed[q] = r
            if progress is not None:
                progress(len(computed), len(todo))
        yield p, computed[p]


_POOLS: dict[tuple[OcrSettings, int, int], ProcessPoolExecutor] = {}


def _pool_key(settings: OcrSettings, workers: int, threads: int) -> tuple[OcrSettings, int, int]:
    return settings, int(workers), int(threads)


def get_pool(settings: OcrSettings, workers: int, threads: int = 1) -> ProcessPoolExecutor:
    """A process pool kept for the life of this process (models load once per worker, not once per batch)."""
    key = _pool_key(settings, workers, threads)
    if key not in _POOLS:
        _POOLS[key] = ProcessPoolExecutor(workers, initializer=_worker_init, initargs=(settings, int(threads)))
    return _POOLS[key]


def shutdown_pools() -> None:
    """Stop the OCR worker processes (also done at interpreter exit)."""
    while _POOLS:
        _, pool = _POOLS.popitem()
        pool.shutdown(cancel_futures=True)


atexit.register(shutdown_pools)


def main(argv: list[str] | None = None) -> int:
    """CLI: OCR every image of a folder into the cache; prints images/s."""
    ap = argparse.ArgumentParser(description="OCR a folder of images into a per-image JSON cache")
    ap.add_argument("image_dir", type=Path)
    ap.add_argument("cache_dir", type=Path)
    ap.add_argument("--max-side", type=int, default=DEFAULT_MAX_SIDE, help="longest side before OCR; 0 = full")
    ap.add_argument("--workers", type=int, default=default_workers())
    ap.add_argument("--limit", type=int, default=0, help="only the first N images (sorted by name)")
    ap.add_argument("--engine", default=DEFAULT_ENGINE, choices=ENGINES)
    ap.add_argument("--precision", default=OcrSettings.precision, choices=PRECISIONS, help="openvino's precision")
    ap.add_argument("--charset", default=OcrSettings.charset, choices=CHARSETS, help="characters recognition reads")
    a = ap.parse_args(argv)
    if not a.image_dir.is_dir():
        ap.error(f"not a folder: {a.image_dir}")
    files = sorted(p for p in a.image_dir.iterdir() if p.suffix.lower() in {".jpg", ".jpeg", ".png", ".webp"})
    if a.limit:
        files = files[: a.limit]
    settings = OcrSettings(max_side=a.max_side or None, engine=a.engine, precision=a.precision, charset=a.charset)
    t0 = time.perf_counter()
    n = bad = 0
    for _, res in ocr_many(files, a.cache_dir, settings, a.workers, progress=tqdm_progress()):
        n += 1
        bad += res is None
    dt = time.perf_counter() - t0
    print(f"ocr {n} images ({bad} unreadable) in {dt:.1f}s: {n / max(dt, 1e-9):.2f} images/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
