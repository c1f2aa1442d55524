"""Lines meant for the person watching: progress, counts, plans and warnings of the long-running stages.

They are printed with a marker (``» ``) so that ``run_all.sh`` (which runs each stage as a papermill notebook) can
echo them on its own console while everything else goes to the stage's log; in a notebook they are plain output.
"""

from __future__ import annotations

import sys
import time

MARK = "» "


def say(message: str) -> None:
    """Print one line for the console (flushed at once, so a batch run shows it while the stage works)."""
    for line in str(message).splitlines() or [""]:
        print(MARK + line, file=sys.stdout, flush=True)


def duration(seconds: float) -> str:
    """``42 s``, ``7 min 05 s``, ``3 h 12 min``."""
    seconds = max(0.0, float(seconds))
    if seconds < 60:
        return f"{seconds:.0f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


class Every:
    """True at most once per ``seconds`` (and on the first call): throttles periodic progress lines."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.last: float | None = None

    def __call__(self, force: bool = False) -> bool:
        now = time.monotonic()
        if force or self.last is None or now - self.last >= self.seconds:
            self.last = now
            return True
        return False


def progress_line(tag: str, done: int, total: int, started: float, unit: str = "rows", extra: str = "") -> str:
    """``[03 shard 1/4] 120/250 rows (48%), 2.10 rows/s, ETA 1 min 02 s`` from a start time (``time.monotonic``)."""
    elapsed = max(time.monotonic() - started, 1e-9)
    rate = done / elapsed
    share = f" ({100 * done / total:.0f}%)" if total else ""
    eta = f", ETA {duration((total - done) / rate)}" if rate > 0 and total > done else ""
    line = f"[{tag}] {done}/{total} {unit}{share}, {rate:.2f} {unit}/s{eta}"
    return line + (f", {extra}" if extra else "")
