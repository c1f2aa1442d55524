"""The runner's processes: the children it must stop with everything below them, and the work folder's lock.

``Children`` collects every process the runner starts (papermill, and through it the kernels and their OCR
workers); ``stop_all`` stops the whole tree, so that a killed run leaves no orphan writing a shard. ``WorkLock`` is an
exclusive ``flock`` held for the whole run: two runs never write one work folder. ``Job`` is one notebook to
execute; ``failure_line`` / ``executed_any_cell`` / ``START_FAILURES`` read how its run went.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from utils.pipeline.options import EXIT_BUSY, PROG, RunnerError, RunParams
from utils.pipeline.params import InferParams


class Stopping(RuntimeError):
    """A process was started after the run began to stop (it was stopped at once)."""


class Children:
    """The processes this run started, and how to stop each with everything below it (kernels, OCR workers)."""

    def __init__(self) -> None:
        self.procs: list[subprocess.Popen[str]] = []
        self.lock = threading.Lock()
        self.closed = False  # set by stop_all: a process started after it (a shard's retry) is stopped at once

    def add(self, proc: subprocess.Popen[str]) -> None:
        """Keep ``proc`` to stop it later; once ``stop_all`` ran, stop it now and raise ``Stopping``."""
        with self.lock:
            if not self.closed:
                self.procs.append(proc)
                return
        _stop(_tree([proc]), 1.0)
        raise Stopping("the run is stopping: no new process is started")

    def discard(self, proc: subprocess.Popen[str]) -> None:
        with self.lock:
            if proc in self.procs:
                self.procs.remove(proc)

    def stop_one(self, proc: subprocess.Popen[str], grace: float = 5.0) -> None:
        """Stop one started process and everything below it."""
        _stop(_tree([proc]), grace)
        self.discard(proc)

    def stop_all(self, grace: float = 10.0) -> int:
        """SIGTERM every started process and all its descendants, SIGKILL what is left after ``grace`` seconds;
        how many processes were stopped. The tree is collected before any signal (orphans get re-parented)."""
        with self.lock:
            self.closed = True
            roots = list(self.procs)
        tree = _tree(roots)
        _stop(tree, grace)
        return len(tree)


def _tree(roots: list[subprocess.Popen[str]]) -> list[psutil.Process]:
    """The processes ``roots`` started, each with all its descendants (collected before any is signalled)."""
    tree: list[psutil.Process] = []
    for proc in roots:
        try:
            root = psutil.Process(proc.pid)
            tree += [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
    return tree


def _stop(tree: list[psutil.Process], grace: float) -> None:
    """SIGTERM each process, SIGKILL those still alive after ``grace`` seconds, and reap them."""
    for p in tree:
        try:
            p.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(tree, timeout=grace)
    for p in alive:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace)


class WorkLock:
    """An exclusive ``flock`` on the work folder's ``.run.lock`` for the whole run (released if the runner dies)."""

    def __init__(self, path: Path, wait: bool, command: str) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(self.fd, 2000, 0).decode("utf-8", "replace").strip() or "another run"
            if not wait:
                os.close(self.fd)
                raise RunnerError(f"{PROG}: the work folder {path.parent} is in use by {holder}. Two runs must not "
                                  "write one work folder: wait for it, stop it (kill its pid), use another --work, "
                                  "or pass --wait to start when it ends", EXIT_BUSY) from None
            say_console(f"waiting for {holder} to release {path.parent} ...")
            fcntl.flock(self.fd, fcntl.LOCK_EX)
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"pid {os.getpid()}, started {time.strftime('%Y-%m-%d %H:%M:%S')}: {command}".encode(), 0)

    def release(self) -> None:
        os.close(self.fd)


_PRINT = threading.Lock()


def say_console(line: str) -> None:
    """One line on the runner's console (thread-safe)."""
    with _PRINT:
        print(line, flush=True)


# ------------------------------------------------------------------------------- a notebook run and its outcome

#: What a kernel that never started looks like in papermill's output (retried); a cell error is not among them.
START_FAILURES = ("Kernel died before replying to kernel_info", "ZMQError", "Address already in use",
                  "Kernel didn't respond in", "Kernel not responding", "kernel_info_request timed out")


def failure_line(log_text: str) -> str | None:
    """The exception line of a failed notebook (``utils.models.finetune.hub.ModelAccessError: ...``), if any."""
    import re

    found = re.findall(r"^(?:\x1b\[[0-9;]*m)*([A-Za-z_][\w.]*(?:Error|Exception|Interrupt)\b:? .*)$", log_text,
                       re.MULTILINE)
    return found[-1].strip() if found else None


def signal_name(signum: int) -> str:
    """``SIGTERM`` for 15 (``signal N`` for a number without a name)."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def executed_any_cell(notebook: Path) -> bool:
    """Whether papermill executed any cell of ``notebook`` (a kernel that never started executed none)."""
    try:
        import nbformat

        nb = nbformat.read(notebook, as_version=4)
    except Exception:
        return False
    return any(c.get("execution_count") for c in nb.cells if c.cell_type == "code")


@dataclass
class Job:
    """One notebook to execute."""

    tag: str  # "01", "03 shard 2/4"
    notebook: str
    output: Path
    log: Path
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)


def shard_slots(run: RunParams, infer: InferParams) -> tuple[list[dict[str, str]], str]:
    """The places a shard can run at once (their environment: its GPU, its threads) and a sentence describing
    them, for ``RunParams`` ``run`` and ``InferParams`` ``infer``."""
    threads = {k: str(infer.num_threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
    from utils.models.backend import uses_gpu

    if uses_gpu(infer.backend):
        from utils.env.gpu import gpus

        found = gpus()
        if found:
            slots = [{**threads, "CUDA_VISIBLE_DEVICES": str(g.index)}
                     for g in found for _ in range(run.shards_per_gpu)]
            if run.parallel:
                slots = slots[: run.parallel]
            names = ", ".join(g.describe() for g in found)
            return slots, (f"{len(slots)} at a time on {len(found)} GPU(s), {run.shards_per_gpu} per GPU "
                           f"({names}); each shard sees only its GPU (CUDA_VISIBLE_DEVICES)")
    cores = os.cpu_count() or 1
    n = run.parallel or max(1, cores // infer.num_threads)
    return [dict(threads) for _ in range(n)], (f"{n} at a time ({cores} CPU cores, {infer.num_threads} "
                                               f"thread(s) per shard)")
