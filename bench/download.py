"""Benchmark the image downloader: real-size images from a loopback server that adds 50 ms per request.

Serves the dev images (``../shared/data/amazon/dev/images``, about 180 KB each) under N distinct URLs from a
threading HTTP server in a child process (so it does not share the client's GIL), then measures with the default
settings of ``utils.data.download.download_images``:

- parallel: N downloads into an empty cache (default N = 2,000), images/s;
- sequential: one-at-a-time (``workers=1``, same validation and fsync) on the first M URLs (default 100), images/s;
- the ratio parallel / sequential, measured in the same run.

The server is on the loopback interface, which the downloader refuses by default: every call here passes
``allow_local=True``.

Usage: ``nice python bench/download.py [--n 2000] [--sequential 100] [--latency 0.05] [--workers W]``
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.image_server import serve_in_process  # noqa: E402
from utils.data.download import DEFAULT_WORKERS, download_images  # noqa: E402

DEFAULT_DATA = Path(os.environ.get("AMAZON_DATA_DIR", REPO.parent / "shared" / "data" / "amazon"))


def _run(urls: list[str], cache: Path, **kw: object) -> tuple[float, int]:
    t0 = time.perf_counter()
    summary = download_images(urls, cache, progress=False, allow_local=True, **kw)  # type: ignore[arg-type]
    dt = time.perf_counter() - t0
    if summary.failed or summary.downloaded != len(urls):
        raise SystemExit(f"benchmark run not clean: {summary.line()}; first failures {summary.failures[:3]}")
    return dt, summary.bytes_downloaded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=Path, default=DEFAULT_DATA / "dev" / "images", help="folder of images")
    ap.add_argument("--n", type=int, default=2000, help="parallel downloads (distinct URLs)")
    ap.add_argument("--sequential", type=int, default=100, help="one-at-a-time downloads (a subset)")
    ap.add_argument("--latency", type=float, default=0.05, help="seconds the server adds per request")
    ap.add_argument("--workers", type=int, default=None, help=f"override workers (default {DEFAULT_WORKERS})")
    ap.add_argument("--full-decode", choices=("yes", "no"), default=None, help="override the decode check")
    args = ap.parse_args()

    files = sorted(p for p in args.images.iterdir() if p.is_file())
    if not files:
        raise SystemExit(f"no images in {args.images}")
    mean_kb = sum(p.stat().st_size for p in files) / len(files) / 1024
    base, paths, stop = serve_in_process(files, args.n, args.latency)
    kw: dict[str, object] = {} if args.workers is None else {"workers": args.workers}
    if args.full_decode is not None:
        kw["full_decode"] = args.full_decode == "yes"
    try:
        with tempfile.TemporaryDirectory(prefix="bench-dl-") as tmp:
            urls = [base + p for p in paths]
            seq_dt, _ = _run(urls[: args.sequential], Path(tmp) / "seq", **{**kw, "workers": 1})
            cpu0 = time.process_time()
            par_dt, nbytes = _run(urls, Path(tmp) / "par", **kw)
            cpu = time.process_time() - cpu0
            again_dt = time.perf_counter()
            resume = download_images(urls, Path(tmp) / "par", progress=False, allow_local=True, **kw)
            again_dt = time.perf_counter() - again_dt
    finally:
        server_cpu = stop()
    seq_rate = args.sequential / seq_dt
    par_rate = args.n / par_dt
    print(f"images: {len(files)} dev files served under {args.n} distinct URLs, mean {mean_kb:.0f} KB, "
          f"server latency {args.latency * 1000:.0f} ms/request, {os.cpu_count()} CPUs")
    print(f"sequential (workers=1, first {args.sequential} URLs): {seq_rate:.1f} images/s ({seq_dt:.2f} s)")
    print(f"settings: {kw or 'defaults'}")
    print(f"parallel (workers={args.workers or DEFAULT_WORKERS}, {args.n} URLs): {par_rate:.1f} images/s "
          f"({par_dt:.2f} s, {nbytes / par_dt / 1e6:.1f} MB/s, client CPU {cpu:.2f} s)")
    print(f"speedup: {par_rate / seq_rate:.1f}x")
    if server_cpu is not None:
        per = server_cpu / (args.n + args.sequential) * 1000
        print(f"server CPU: {server_cpu:.2f} s in all ({per:.2f} ms/request); load average "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"resume (all cached): {resume.line()} in {again_dt:.2f} s")


if __name__ == "__main__":
    main()
