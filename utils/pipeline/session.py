"""Whether stage 03 fits in what is left of this session: measured from the shards' first batches, said in time.

A Kaggle session ends 12 hours after it started (Colab: about 12 at most), whatever is running. The runner feeds
``ShardClock`` the rows each running shard has written; once every running shard has written batches after its
first one, it prints one line::

    [03] measured 3.1 rows/s over 2 shards: about 6.2 h for the rest; this session has about 4.5 h left
    (Kaggle 12 h from its start, 2025-01-01 08:00 UTC: the machine's first process)

and, when the rest will not fit (with ``MARGIN_HOURS`` to save the output), a warning saying what to do. The line
comes again every ``REPORT_EVERY_S`` seconds.

Where the session started is known only approximately: ``PRODUCT_VALUES_SESSION_START`` (seconds since the epoch,
or an ISO 8601 time) says it exactly; otherwise, on Kaggle and Colab, the start of the machine's first process (the
notebook's container starts with the session), else this runner's own start. ``PRODUCT_VALUES_SESSION_HOURS`` sets
the session's length (Kaggle and Colab: 12; elsewhere none, and then only the estimate is printed).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

START_ENV = "PRODUCT_VALUES_SESSION_START"
HOURS_ENV = "PRODUCT_VALUES_SESSION_HOURS"
PLATFORM_HOURS = {"kaggle": 12.0, "colab": 12.0}
MARGIN_HOURS = 0.5  # kept free at the end: stage 04 and saving the output (a Kaggle commit copies the folder)
REPORT_EVERY_S = 1800.0


@dataclass(frozen=True)
class Session:
    """When this session started (seconds since the epoch), how long it may last (None: no limit known), and
    how the start was found."""

    start: float
    hours: float | None
    source: str
    platform: str

    def left_hours(self, now: float) -> float | None:
        return None if self.hours is None else (self.start + 3600 * self.hours - now) / 3600

    def describe(self) -> str:
        when = datetime.fromtimestamp(self.start, timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        length = f"{self.hours:g} h" if self.hours is not None else "no limit known"
        return f"{self.platform.capitalize()} {length} from its start, {when}: {self.source}"


def _parse_start(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        stamp = datetime.fromisoformat(text.strip())
        return (stamp if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)).timestamp()


def this_session(environ: dict[str, str] | None = None) -> Session:
    """The session this process runs in (see the module docstring)."""
    import psutil

    from utils.env.paths import detect_platform

    env = os.environ if environ is None else environ
    platform = detect_platform(env)
    hours = float(env[HOURS_ENV]) if env.get(HOURS_ENV) else PLATFORM_HOURS.get(platform)
    if env.get(START_ENV):
        try:
            return Session(_parse_start(env[START_ENV]), hours, START_ENV, platform)
        except ValueError:
            pass  # a malformed value: fall back as if unset
    if platform in PLATFORM_HOURS:
        try:
            return Session(psutil.Process(1).create_time(), hours, "the machine's first process", platform)
        except (psutil.Error, OSError):
            pass
    return Session(psutil.Process().create_time(), hours, "this run's start", platform)


@dataclass
class _Shard:
    started: float  # when its notebook started
    rows_at_start: int
    first: tuple[float, int] | None = None  # (time, rows) of its first written batch
    last: tuple[float, int] | None = None
    batches: int = 0  # writes seen after the first


@dataclass
class ShardClock:
    """Stage 03's estimate: fed the rows each shard has written (``seen``), it says once the first batches are in
    (and every ``REPORT_EVERY_S``) how long the rest takes and whether the session holds it."""

    session: Session
    sizes: dict[int, int]  # rows per shard
    slots: int
    echo: Callable[[str], None]
    now: Callable[[], float] = time.time
    shards: dict[int, _Shard] = field(default_factory=dict)
    reported: float | None = None
    warned: bool = False

    def started(self, shard: int, written: int) -> None:
        self.shards[shard] = _Shard(self.now(), written)

    def seen(self, written: dict[int, int], running: set[int]) -> None:
        """Record the rows written so far (every shard of ``sizes``), then report when it is time."""
        t = self.now()
        for shard in running:
            state = self.shards.get(shard)
            n = written.get(shard, 0)
            if state is None:
                continue
            if state.first is None and n > state.rows_at_start:
                state.first = state.last = (t, n)
            elif state.last is not None and n > state.last[1]:
                state.last = (t, n)
                state.batches += 1
        measured = [s for k, s in self.shards.items() if k in running and s.batches >= 1 and s.first and s.last
                    and s.last[0] > s.first[0]]
        waiting = [k for k in running if k in self.shards and self.shards[k].batches < 1
                   and written.get(k, 0) < self.sizes.get(k, 0)]
        if not measured or waiting:
            return
        if self.reported is not None and t - self.reported < REPORT_EVERY_S:
            return
        self.reported = t
        self._report(t, written, measured, running)

    def _report(self, t: float, written: dict[int, int], measured: list[_Shard], running: set[int]) -> None:
        rate = sum((s.last[1] - s.first[1]) / (s.last[0] - s.first[0]) for s in measured)  # type: ignore[index]
        per_shard = rate / len(measured)
        left_rows = sum(max(0, size - written.get(k, 0)) for k, size in self.sizes.items())
        load = sum(s.first[0] - s.started for s in measured) / len(measured)  # type: ignore[index]
        queued = [k for k in self.sizes if k not in self.shards]
        slots = max(1, min(self.slots, len(self.sizes)))
        rest_h = (left_rows / max(per_shard * slots, 1e-9) + load * len(queued) / slots) / 3600
        left_h = self.session.left_hours(t)
        line = (f"[03] measured {rate:.1f} rows/s over {len(measured)} shards: about {rest_h:.1f} h for the rest "
                f"({left_rows} rows)")
        if left_h is None:
            self.echo(line + f"; no session limit known ({HOURS_ENV} sets one)")
            return
        self.echo(line + f"; this session has about {max(left_h, 0):.1f} h left ({self.session.describe()})")
        if rest_h > left_h - MARGIN_HOURS:
            self.warned = True
            self.echo(
                f"warning: [03] the rest will NOT fit this session (about {rest_h:.1f} h needed, "
                f"{max(left_h, 0):.1f} h left, {MARGIN_HOURS:g} h kept for stage 04 and saving). Every written row "
                "is kept and a rerun continues where the shards stopped, so either stop this run (Ctrl-C / kill) "
                "while there is time to save the output (Kaggle: Save Version), then in the next session add that "
                "output as an input, copy its work/shards into the new work folder and run the same command with "
                "--stages 03,04; or share the shards over more sessions (--prepare-only, one notebook per "
                "session, then --stages 04 on the collected shards)")
