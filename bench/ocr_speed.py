"""OCR speed choices, each as a ratio to rapidocr's defaults, measured in one run on the same images.

Absolute images/s differ several-fold between machines, so every figure here is a ratio: the images/s of a
configuration (uncached OCR through ``utils.models.ocr.reading.ocr_many``, fresh worker processes so model loading
counts, no turned second pass) over the images/s of rapidocr called with its defaults on the full-resolution files,
one image at a time in one process (engine construction included). The baseline runs first and last; its mean is the
denominator. Besides speed, each configuration's texts are compared with the first configuration's (share of images
with the very same text lines): a quick sign of changed output, not an accuracy figure (``bench/ocr_dev.py``
measures that).

The choices (``--choices``, default all but max_side and combos): the engine (openvino / onnxruntime), openvino's
precision (f32 / bf16), the recogniser's characters (no-cjk / all), the 180-degree classifier, the recognition batch
size, the detector's side length, the OCR'd image's longest side, and threads per worker against the number of
workers. ``--cpu-time`` instead gives CPU seconds per image on one thread (robust to a busy machine). Do not
``nice`` a wall-clock run: a neighbour at normal priority then takes the cores from the workers first.

    python bench/ocr_speed.py [--images 20] [--rounds 2] [--choices engine precision charset cls ...]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402

from bench.ocr_dev import rapidocr_default_speed, speed_sample  # noqa: E402
from utils.data.images import cached_image  # noqa: E402
from utils.models.ocr.engine import OcrSettings  # noqa: E402
from utils.models.ocr.reading import ocr_many, shutdown_pools  # noqa: E402

BASE = OcrSettings()  # the backend's defaults


def variants(choices: list[str]) -> list[tuple[str, OcrSettings, int, int]]:
    """(name, settings, workers, threads per worker) per configuration; the first is the backend's default."""
    out = [("default", BASE, 2, 1)]
    if "engine" in choices:
        out.append(("onnxruntime", replace(BASE, engine="onnxruntime"), 2, 1))
    if "precision" in choices:
        out.append(("openvino bf16", replace(BASE, precision="bf16"), 2, 1))
    if "charset" in choices:
        out.append(("all characters", replace(BASE, charset="all"), 2, 1))
    if "cls" in choices:
        out.append(("no cls", replace(BASE, use_cls=False), 2, 1))
    if "rec_batch" in choices:
        out += [(f"rec_batch {b}", replace(BASE, rec_batch=b), 2, 1) for b in (1, 16, 32) if b != BASE.rec_batch]
    if "det_side" in choices:
        out += [(f"det_side {d}", replace(BASE, det_side=d), 2, 1) for d in (960, 1120)]
    if "max_side" in choices:
        out += [(f"max_side {m}", replace(BASE, max_side=m), 2, 1) for m in (1024, 1600)]
    if "combos" in choices:
        out += [("no cls, det_side 1120", replace(BASE, use_cls=False, det_side=1120), 2, 1),
                ("no cls, det_side 960", replace(BASE, use_cls=False, det_side=960), 2, 1)]
    if "workers" in choices:
        out += [("1 worker x 2 threads", BASE, 1, 2), ("2 workers x 2 threads", BASE, 2, 2),
                ("1 worker x 1 thread", BASE, 1, 1)]
    return out


def timed(paths: list[Path], settings: OcrSettings, workers: int, threads: int) -> tuple[float, list[list[str]]]:
    """(images/s, text lines per image) of uncached OCR with fresh workers."""
    shutdown_pools()
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        res = list(ocr_many(paths, Path(tmp), settings, workers, threads))
        sec = time.perf_counter() - t0
    shutdown_pools()
    return len(paths) / sec, [[b.text for b in r.boxes] if r else [] for _, r in res]


def cpu_seconds(paths: list[Path], settings: OcrSettings) -> tuple[float, float]:
    """(CPU seconds per image, CPU seconds to build the engine) of OCR in this process on one thread: what a
    configuration costs whatever else the machine runs (wall-clock ratios swing with a busy neighbour)."""
    from utils.models.ocr.engine import OcrEngine

    t0 = time.process_time()
    engine = OcrEngine(settings, threads=1)
    engine._get()
    load = time.process_time() - t0
    t0 = time.process_time()
    for p in paths:
        engine.run_path(p)
    return (time.process_time() - t0) / len(paths), load


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    default_data = Path(os.environ.get("AMAZON_DATA_DIR", REPO.parent / "shared/data/amazon"))
    ap.add_argument("--data", type=Path, default=default_data)
    ap.add_argument("--images", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=2, help="rounds; each times the baseline and every configuration"
                                                          " (order turned each round); ratios are per round")
    ap.add_argument("--choices", nargs="+",
                    default=["engine", "precision", "charset", "cls", "rec_batch", "det_side", "workers"])
    ap.add_argument("--cpu-time", action="store_true", help="instead: CPU seconds per image of each configuration "
                                                              "on one thread in this process (robust to a busy "
                                                              "machine; says nothing of workers and threads)")
    a = ap.parse_args(argv)
    dev = pd.read_csv(a.data / "dev/labels.csv")
    paths = [p for p in (cached_image(a.data / "dev/images", u) for u in speed_sample(dev, a.images)) if p]
    confs = variants(a.choices)
    if a.cpu_time:
        import os as _os

        _os.environ.setdefault("OMP_NUM_THREADS", "1")
        first = None
        print(f"{'configuration':>24} | CPU s/image | relative to {confs[0][0]} | engine build CPU s")
        for name, settings, workers, threads in confs:
            if (workers, threads) != (2, 1):
                continue
            per, load = cpu_seconds(paths, settings)
            first = first or per
            print(f"{name:>24} | {per:11.3f} | {first / per:8.2f}x faster | {load:.1f}", flush=True)
        return 0
    ratios: dict[str, list[float]] = {name: [] for name, *_ in confs}
    ips_all: dict[str, list[float]] = {name: [] for name, *_ in confs}
    texts: dict[str, list[list[str]]] = {}
    bases: list[float] = []
    for r in range(a.rounds):
        base = rapidocr_default_speed(paths)[0]
        bases.append(base)
        print(f"round {r + 1}: rapidocr defaults, full resolution, one at a time: {base:.2f} images/s", flush=True)
        k = r % len(confs)
        for name, settings, workers, threads in confs[k:] + confs[:k]:
            ips, out = timed(paths, settings, workers, threads)
            texts.setdefault(name, out)
            ratios[name].append(ips / base)
            ips_all[name].append(ips)
            print(f"  {name:>24}: {ips:.2f} images/s, {ips / base:.2f}x", flush=True)
    ref = texts[confs[0][0]]
    print(f"\nrapidocr defaults: {', '.join(f'{b:.2f}' for b in bases)} images/s")
    print(f"{'configuration':>24} | images/s (per round) | ratio to rapidocr defaults (per round) | mean ratio "
          f"| same texts as {confs[0][0]}")
    for name, *_ in confs:
        same = sum(t == r for t, r in zip(texts[name], ref)) / len(paths)
        print(f"{name:>24} | {' '.join(f'{v:.2f}' for v in ips_all[name]):>20} | "
              f"{' '.join(f'{v:.2f}' for v in ratios[name]):>38} | {sum(ratios[name]) / len(ratios[name]):10.2f} "
              f"| {same:.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
