"""``run_all.sh``: the four notebooks in batch through papermill, shards in parallel, safe to kill and to rerun.

``python -m utils.pipeline.run [options]`` (``bash run_all.sh`` runs it) executes 01 prepare, 02 fit, the shards of 03
and 04 postprocess, each as a papermill notebook kept under ``RUNS/<time>/`` with its log. What it guarantees:

- Every option is checked before stage 01 starts (paths that must exist, folders that must not be files, the
  backend, numbers, JSON): a typo fails in a second, not after an hour of inference.
- One run per work folder: the runner holds a lock on it; a second run fails at once naming the first (or waits
  behind it with ``--wait``). Killed with SIGTERM or Ctrl-C, it stops every process it started (papermill, the
  kernels, their OCR workers) before it exits.
- Shards run at most ``--parallel`` at once (default: one per GPU for a GPU backend such as paligemma,
  ``--shards-per-gpu`` to pack more,
  each shard pinned to its GPU with ``CUDA_VISIBLE_DEVICES``; CPU cores / ``--threads`` otherwise); the rest wait in
  a queue. Shards without rows are finished without a kernel. The plan is printed before stage 03 starts.
- A shard whose kernel fails to start (jupyter's port race, papermill issue #511) is retried after a short random
  delay; a cell error is not retried.
- The console shows each stage's progress (the notebooks' ``» `` lines: counts, missing images, rows/s, ETA)
  while the full output goes to the stage's log.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from utils.env.console import MARK, duration
from utils.pipeline.options import EXIT_USAGE, PROG, REPO, Interrupted, Plan, RunnerError, parse
from utils.pipeline.params import papermill_args
from utils.pipeline.processes import (
    START_FAILURES,
    Children,
    Job,
    Stopping,
    WorkLock,
    executed_any_cell,
    failure_line,
    say_console,
    shard_slots,
    signal_name,
)
from utils.pipeline.workdir import WorkDir

NOTEBOOKS = REPO / "notebooks"
NOTEBOOK_OF = {"01": "01_prepare_data.ipynb", "02": "02_finetune_lora.ipynb", "03": "03_infer_shard.ipynb",
               "04": "04_postprocess.ipynb"}
class Runner:
    """Executes a ``Plan`` (see the module docstring)."""

    def __init__(self, plan: Plan, echo: Callable[[str], None] = say_console) -> None:
        self.plan = plan
        self.echo = echo
        self.children = Children()
        self._secrets: dict[str, str] | None = None  # read once, in this process (see secrets_for_children)

    # -- one notebook
    def _env(self, extra: dict[str, str]) -> dict[str, str]:
        if self._secrets is None:
            from utils.env.secrets import secrets_for_children

            self._secrets = secrets_for_children()
        env = {**os.environ, **self._secrets}  # a kernel may not reach the secret store itself (Colab)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env.setdefault("WANDB_DIR", self.plan.run.work_dir)
        from utils.models.backend import run_environment

        for backend in dict.fromkeys((self.plan.fit.backend, self.plan.infer.backend)):
            for key, value in run_environment(backend, self.plan.run.work_dir).items():
                env.setdefault(key, value)  # e.g. a cache folder the shards share
        env["MPLBACKEND"] = "Agg"
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra)
        return env

    def _command(self, job: Job, prepare_only: bool = False) -> list[str]:
        cmd = [sys.executable, "-m", "papermill", str(NOTEBOOKS / job.notebook), str(job.output),
               "-k", self.plan.run.kernel, "--cwd", str(NOTEBOOKS), "-r", "repo_dir", self.plan.run.repo_dir,
               *job.args]
        if prepare_only:  # a session of its own: the notebook installs the requirements first
            return cmd + ["-p", "install_requirements", "True", "--prepare-only"]
        return cmd + ["--log-output", "--no-progress-bar", "--start-timeout", "120"]

    def execute(self, job: Job) -> None:
        """Run one notebook, echoing its ``» `` lines; retry a kernel that failed to start; RunnerError on failure."""
        retries = self.plan.run.start_retries
        for attempt in range(retries + 1):
            rc = self._execute_once(job)
            if self.children.closed:  # the run is stopping: whatever papermill answered, the notebook was stopped
                raise Stopping(f"[{job.tag}] stopped")
            if rc == 0:
                return
            text = job.log.read_text(encoding="utf-8", errors="replace") if job.log.is_file() else ""
            start_failed = any(s in text for s in START_FAILURES) and "PapermillExecutionError" not in text \
                and not executed_any_cell(job.output)
            if start_failed and attempt < retries:
                delay = random.uniform(1.0, 3.0) * (attempt + 1)
                self.echo(f"[{job.tag}] the kernel failed to start (jupyter port race); retry {attempt + 1} of "
                          f"{retries} in {delay:.1f} s")
                job.log.rename(job.log.with_name(f"{job.log.name}.attempt{attempt + 1}"))
                time.sleep(delay)
                continue
            reason = failure_line(text) or (f"papermill was stopped by {signal_name(-rc)} (from outside this run)"
                                             if rc < 0 else "see the log")
            tail = "\n".join(text.strip().splitlines()[-15:])
            raise RunnerError(f"[{job.tag}] failed: {reason}\n  notebook: {job.output}\n  log: {job.log}\n"
                              f"--- last lines of the log ---\n{tail}")

    def _execute_once(self, job: Job) -> int:
        proc = subprocess.Popen(self._command(job), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                bufsize=1, env=self._env(job.env), start_new_session=True,
                                errors="replace")
        self.children.add(proc)
        # Only a process that has ended leaves the stop list: on SIGTERM/Ctrl-C (``Interrupted`` raised here, in the
        # main thread) it must stay there for ``main``'s ``stop_all``, with its kernel below it.
        with open(job.log, "w", encoding="utf-8") as log:
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                log.flush()
                stripped = line.strip()
                if stripped.startswith(MARK):
                    self.echo(stripped[len(MARK):])
        rc = proc.wait()
        self.children.discard(proc)
        return rc

    # -- the whole run
    def run(self) -> int:
        plan = self.plan
        if plan.run.prepare_only:
            return self.prepare_only()
        if plan.infer.executor == "ray":
            self.check_cluster()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        run_dir = Path(plan.run.runs_dir) / stamp
        n = 1
        while run_dir.exists():
            run_dir = Path(plan.run.runs_dir) / f"{stamp}-{n}"
            n += 1
        run_dir.mkdir(parents=True)
        Path(plan.run.out_dir).mkdir(parents=True, exist_ok=True)
        self.echo(f"{PROG}: executed notebooks and logs in {run_dir}")
        started = time.monotonic()

        def job(tag: str, stage: str, params: Any, name: str | None = None, env: dict[str, str] | None = None):
            stem = name or NOTEBOOK_OF[stage].removesuffix(".ipynb")
            return Job(tag, NOTEBOOK_OF[stage], run_dir / f"{stem}.ipynb", run_dir / f"{stem}.log",
                       papermill_args(params), env or {})

        if "01" in plan.stages:
            self.echo("[01] prepare data")
            self.execute(job("01", "01", plan.prepare))
        if "02" in plan.stages:
            self.echo(f"[02] fit backend '{plan.fit.backend}'")
            self.execute(job("02", "02", plan.fit))
        if "03" in plan.stages and plan.infer.executor == "ray":  # one notebook drives every shard on the cluster
            self.echo(f"[03] {plan.infer.num_shards} shards on Ray at {plan.infer.ray_address or 'a local instance'}")
            self.execute(job("03 ray", "03", plan.infer, "03_infer_ray"))
        elif "03" in plan.stages:
            self.run_shards(lambda i, env: job(f"03 shard {i}/{plan.infer.num_shards}", "03",
                                               replace(plan.infer, shard_index=i),
                                               f"03_infer_shard_{i:02d}_of_{plan.infer.num_shards:02d}", env))
        if "04" not in plan.stages:
            self.echo(f"{PROG}: stages {', '.join(plan.stages)} done in {duration(time.monotonic() - started)}; "
                      f"the hand-over folder: {plan.run.work_dir}")
            return 0
        self.echo("[04] merge, check, submit, report")
        self.execute(job("04", "04", plan.post))
        submission = Path(plan.run.out_dir) / "submission.csv"
        self.echo(f"{PROG}: done in {duration(time.monotonic() - started)}: {submission}")
        report = Path(plan.run.out_dir) / "report.md"
        if report.is_file():
            line = next((ln for ln in report.read_text(encoding="utf-8").splitlines() if "Overall F1" in ln), None)
            if line:
                self.echo(line)
        return 0

    def check_cluster(self) -> None:
        """``--executor ray``: the cluster is there, has a GPU for a GPU backend and runs our Ray and Python
        versions, checked before stage 01 (one line; exit 2 otherwise)."""
        from utils.pipeline.ray_executor import ClusterError, preflight, start_local

        infer = self.plan.infer
        try:
            if infer.ray_address:
                line = preflight(infer.ray_address, infer.backend, self._env({}))
            else:  # a local instance for this run, started now (stopped with the run's other children)
                proc, address, join, line = start_local(infer.backend, self._env({}))
                self.children.add(proc)
                self.plan.infer = replace(infer, ray_address=address)
                os.environ.update(join)  # the notebooks join it on 127.0.0.1 (with its token when it has one)
        except ClusterError as exc:
            raise RunnerError(f"{PROG}: --executor ray: {exc}", EXIT_USAGE) from None
        self.echo(f"[03] Ray: {line}")

    def run_shards(self, make_job: Callable[[int, dict[str, str]], Job]) -> None:
        """Stage 03: empty shards finished directly, the others queued over the slots, at most one per slot."""
        from utils.pipeline.predict import empty_shard
        from utils.pipeline.shards import shard_path, shard_rows
        from utils.pipeline.stages import load_test_rows
        from utils.pipeline.workdir import WorkDir

        infer = self.plan.infer
        n = infer.num_shards
        work = WorkDir.of(infer.work_dir)
        test = load_test_rows(work, infer.test_csv)
        shards_dir = work.shards(infer.shards_dir)
        empty = [i for i in range(n) if empty_shard(shards_dir, i, n, test) is not None]
        todo = [i for i in range(n) if i not in empty]
        slots, described = shard_slots(self.plan.run, self.plan.infer)
        if empty:
            self.echo(f"[03] {len(empty)} of {n} shards have no rows ({len(test)} test rows): finished without a "
                      "kernel")
        def where(slot: int) -> str:
            gpu = slots[slot].get("CUDA_VISIBLE_DEVICES")
            return f"GPU {gpu}" if gpu is not None else "CPU"

        placed = ", ".join(f"shard {i} -> {where(k)}" for k, i in enumerate(todo[: len(slots)]))
        queued = todo[len(slots):]
        self.echo(f"[03] {len(todo)} shards, {described}: {placed or 'none'}"
                  + (f"; queued: {', '.join(map(str, queued))} (each starts where one finishes)" if queued else ""))
        free = list(range(len(slots)))
        pending = list(todo)
        running: dict[int, threading.Thread] = {}
        helpers: dict[int, tuple[subprocess.Popen[str], int]] = {}  # shard -> (warm process, its slot)
        errors: dict[int, BaseException] = {}
        done_event = threading.Event()
        state_lock = threading.Lock()
        can_warm = self._backend_warms()

        def stop_helper(shard: int) -> None:
            helper = helpers.pop(shard, None)
            if helper is not None:
                self.children.stop_one(helper[0])
                free.append(helper[1])

        def work_on(shard: int, slot: int) -> None:
            t0 = time.monotonic()
            try:
                self.execute(make_job(shard, slots[slot]))
                self.echo(f"[03] shard {shard}/{n} finished in {duration(time.monotonic() - t0)}")
            except Stopping:  # the run was stopped (SIGTERM, Ctrl-C): the shard did not finish
                self.echo(f"[03] shard {shard}/{n} stopped after {duration(time.monotonic() - t0)}")
            except BaseException as exc:  # noqa: BLE001 - reported below, the others go on
                errors[shard] = exc
            finally:
                with state_lock:
                    free.append(slot)
                    running.pop(shard, None)
                    stop_helper(shard)
                done_event.set()

        def watch_helper(shard: int, proc: subprocess.Popen[str]) -> None:
            proc.wait()
            with state_lock:
                helper = helpers.get(shard)
                if helper is not None and helper[0] is proc:  # ended by itself (stop_helper frees the slot else)
                    helpers.pop(shard)
                    free.append(helper[1])
                self.children.discard(proc)
            done_event.set()

        sizes = {i: len(shard_rows(test, i, n)) for i in todo}

        def rows_left(shard: int) -> int:
            """The shard's rows not written yet (its file's lines, read without parsing)."""
            try:
                with open(shard_path(shards_dir, shard, n), "rb") as fh:
                    written = max(0, sum(1 for _ in fh) - 1)
            except OSError:
                written = 0
            return sizes[shard] - written

        from utils.pipeline.session import ShardClock, this_session

        clock = ShardClock(this_session(), sizes, len(slots), self.echo)
        while pending or running:
            with state_lock:
                clock.seen({s: sizes[s] - rows_left(s) for s in todo}, set(running))
                while pending and free and not errors:
                    shard, slot = pending.pop(0), free.pop(0)
                    clock.started(shard, sizes[shard] - rows_left(shard))
                    self.echo(f"[03] shard {shard}/{n} started on {where(slot)}")
                    thread = threading.Thread(target=work_on, args=(shard, slot), daemon=True)
                    running[shard] = thread
                    thread.start()
                if errors:
                    pending.clear()
                while can_warm and not pending and free and not errors:
                    left = {s: rows_left(s) for s in running if s not in helpers}
                    left = {s: n_left for s, n_left in left.items() if n_left > 0}  # a shard that wrote its last row
                    if not left:  # has nothing to read ahead
                        break
                    shard, slot = max(left, key=left.__getitem__), free.pop(0)
                    proc = self._start_helper(shard, slots[slot], run_dir=make_job(shard, {}).log.parent)
                    helpers[shard] = (proc, slot)
                    threading.Thread(target=watch_helper, args=(shard, proc), daemon=True).start()
                    self.echo(f"[03] an idle slot ({where(slot)}) helps shard {shard}/{n}: preparing its last rows "
                              "first (into the backend's shared cache), while the shard writes its own rows")
                if not running:
                    break
            done_event.wait(timeout=1.0)
            done_event.clear()
        with state_lock:
            for shard in list(helpers):
                stop_helper(shard)
        if errors:
            lines = [str(e) for _, e in sorted(errors.items())]
            raise RunnerError("\n".join(lines) + f"\n[03] {len(errors)} shard(s) failed; the finished ones are kept "
                              "and skipped when you run again")

    def _backend_warms(self) -> bool:
        """Whether the backend can prepare rows ahead of a shard (an optional ``warm`` method)."""
        from utils.models.backend import backend_class

        return hasattr(backend_class(self.plan.infer.backend), "warm")

    def _start_helper(self, shard: int, slot_env: dict[str, str], run_dir: Path) -> subprocess.Popen[str]:
        """``python -m utils.pipeline.warm`` for ``shard`` on a free slot (its log beside the shard's)."""
        import json
        from dataclasses import asdict

        infer = self.plan.infer
        # the shard's own parameters: the helper prepares its rows the way the shard reads them
        params = asdict(replace(infer, shard_index=shard, work_dir=infer.work_dir or self.plan.run.work_dir))
        cmd = [sys.executable, "-m", "utils.pipeline.warm", "--params", json.dumps(params)]
        log = open(run_dir / f"03_warm_shard_{shard:02d}_of_{infer.num_shards:02d}.log", "a", encoding="utf-8")
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=self._env(slot_env),
                                start_new_session=True)
        log.close()
        self.children.add(proc)
        return proc

    def prepare_only(self) -> int:
        """Write the parameterised shard notebooks for separate Kaggle sessions; run nothing."""
        plan = self.plan
        dest = Path(plan.run.out_dir) / "shard_notebooks"
        dest.mkdir(parents=True, exist_ok=True)
        n = plan.infer.num_shards
        for i in range(n):
            name = f"03_infer_shard_{i:02d}_of_{n:02d}.ipynb"
            job = Job(f"03 shard {i}/{n}", NOTEBOOK_OF["03"], dest / name, dest / f"{name}.log",
                      papermill_args(replace(plan.infer, shard_index=i)))
            result = subprocess.run(self._command(job, prepare_only=True), capture_output=True, text=True,
                                    env=self._env({}))
            if result.returncode != 0:
                raise RunnerError(f"{PROG}: writing {name} failed:\n{result.stderr.strip()}")
            self.echo(f"wrote {dest / name}")
        infer = plan.infer
        shards = infer.shards_dir or (infer.work_dir or "<the session's default work folder>") + "/shards"
        self.echo(f"each runs in a session of its own: it installs the requirements, reads the test rows from "
                  f"{infer.test_csv} and the model from {infer.artifact_dir} (read-only is fine), "
                  f"{'reads the images from ' + infer.image_dir if infer.image_dir else 'downloads its images'} and "
                  f"writes its shard into {shards}; the repository must be at {plan.run.repo_dir} there. Then put "
                  f"every shard_*.csv with its .run and .done files into one folder and run: bash run_all.sh "
                  f"--stages 04 --shards {n} --test-csv TEST.csv --shards-dir FOLDER")
        return 0


def main(argv: list[str] | None = None) -> int:
    """The command line (see the module docstring and ``--help``)."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        plan = parse(argv, __doc__.split("\n\n", 1)[1])
    except RunnerError as exc:
        print(str(exc), file=sys.stderr)
        return exc.code
    runner = Runner(plan)

    def interrupted(signum: int, frame: Any) -> None:
        raise Interrupted(signum)

    old = {s: signal.signal(s, interrupted) for s in (signal.SIGTERM, signal.SIGINT)}
    lock = None
    try:
        if not plan.run.prepare_only:
            lock = WorkLock(WorkDir(Path(plan.run.work_dir)).run_lock, plan.run.wait, plan.command)
        return runner.run()
    except RunnerError as exc:
        print(str(exc), file=sys.stderr)
        return exc.code
    except Interrupted as exc:
        stopped = runner.children.stop_all()
        name = signal.Signals(exc.signum).name
        print(f"{PROG}: stopped by {name}; {stopped} process(es) it had started were stopped. Running it again "
              "resumes: finished shards are kept and unfinished ones continue.", file=sys.stderr)
        return 128 + exc.signum
    finally:
        runner.children.stop_all(grace=5.0)
        if lock is not None:
            lock.release()
        for s, handler in old.items():
            signal.signal(s, handler)


if __name__ == "__main__":
    sys.exit(main())
