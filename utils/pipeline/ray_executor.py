"""Stage 03 on a Ray cluster: every shard at once, through Ray Data, into the same shard files.

``run_all.sh --executor ray [--ray-address ADDRESS]`` runs notebook 03 once with ``executor="ray"``; its kernel is
the Ray *driver* and calls :func:`run_on_ray`. What happens there:

- The driver opens every shard's writer as a local shard does (``utils.pipeline.predict``: the run record, answers
  of an earlier run moved aside, the lock, rows already written skipped) and gathers the rows still to predict.
- Those rows become a Ray dataset of blocks of ``batch_size`` rows, and ``map_batches`` sends each block to a pool
  of actors (:class:`Predictor`), each of which builds the backend once (``Backend.predict``; a GPU backend gets one
  GPU per actor, a CPU backend ``num_threads`` CPUs) and answers block after block.
- The driver receives the answers as they come and writes them, cleaned, into their shard files (append + fsync);
  a shard whose rows are all written gets its ``.done`` marker. Stage 04 sees the same files as after a local run.
- Faults: Ray restarts an actor that dies and retries its block (Ray Data's defaults: ``max_restarts=-1``,
  ``max_task_retries=-1``); rows are written only by the driver, once (an answer for a row already written is
  dropped and counted). A driver that dies loses at most the blocks in flight: a rerun skips what was written.
- Reaching nodes without a shared disk: our code travels as ``py_modules`` of the job's runtime environment, the
  fitted artifact through the object store (an actor that sees the same artifact at the same path uses it in
  place), and images come from the image folder where a node has it, else the actor downloads its rows' images
  into a node-local cache with our downloader (``utils.data.download``, the same address policy).

``python -m utils.pipeline.ray_executor --check --address A --backend B`` is the runner's check before stage 01:
one line, ``ok: ...`` or ``error: ...`` (no cluster, no GPU for a GPU backend, another Ray or Python version).
Without an address the runner starts a local instance there instead (``--serve``, :func:`start_local`), on
127.0.0.1, held by a child process for the whole run, so that Ray's start overlaps stages 01 and 02.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from utils.env.console import Every, progress_line, say
from utils.pipeline.predict import (
    artifact_fingerprint,
    clean_batch,
    finish_shard,
    open_writer,
    shard_record,
)
from utils.pipeline.ray_actors import Predictor, pack_artifact
from utils.pipeline.shards import shard_rows

TAG = "03 ray"
#: Ray's switch that keeps a local instance on the loopback address (read when ``ray`` is imported).
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
#: Ray's token authentication switch (``token``: a driver must present ``~/.ray/auth_token`` or ``RAY_AUTH_TOKEN``).
AUTH_MODE_ENV = "RAY_AUTH_MODE"
#: Environment variables the actors get from the driver (never secrets: a node brings its own HF_TOKEN).
PASSED_ENV = ("PRODUCT_VALUES_BACKENDS", "AMAZON_ALLOW_LOCAL_IMAGES", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE",
              "WANDB_MODE", "PRODUCT_VALUES_NODE_CACHE")
#: Artifacts up to this size travel through the object store; larger ones must be on a path every node sees.
MAX_SHIPPED_ARTIFACT = 2 * 2**30


class ClusterError(RuntimeError):
    """The cluster cannot run this stage; the message is one line for the person."""


@dataclass
class ClusterInfo:
    """The alive nodes of the cluster the driver joined, and the actor pool planned on them."""

    address: str
    nodes: list[dict[str, Any]] = field(default_factory=list)  # id, ip, cpus, gpus

    @property
    def cpus(self) -> int:
        return int(sum(n["cpus"] for n in self.nodes))

    @property
    def gpus(self) -> int:
        return int(sum(n["gpus"] for n in self.nodes))

    def line(self) -> str:
        each = "; ".join(f"node {n['id']} {n['ip']}: {n['cpus']:g} CPU, {n['gpus']:g} GPU" for n in self.nodes)
        where = self.address or "a local Ray instance"
        return f"{where}: {len(self.nodes)} node(s), {self.cpus} CPU(s), {self.gpus} GPU(s) ({each})"


def pool_plan(cluster: ClusterInfo, gpu: bool, num_threads: int, blocks: int) -> tuple[int, dict[str, float]]:
    """How many actors, and what each asks of Ray: one GPU each for a GPU backend, else ``num_threads`` CPUs."""
    if gpu:
        if cluster.gpus < 1:
            raise ClusterError(f"the backend needs a GPU and {cluster.line()} has none")
        size, each = cluster.gpus, {"num_gpus": 1.0, "num_cpus": 1.0}
    else:
        size, each = max(1, cluster.cpus // num_threads), {"num_cpus": float(num_threads)}
    return max(1, min(size, blocks)), each


# ----------------------------------------------------------------------------------------------- the cluster


def _probe(address: str, timeout: float = 5.0) -> None:
    """A TCP connect to ``HOST:PORT`` (or ``ray://HOST:PORT``): an unreachable address fails in seconds, not after
    Ray's minutes of retries."""
    hostport = address.removeprefix("ray://")
    host, sep, port = hostport.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ClusterError(f"--ray-address {address!r} is not auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        raise ClusterError(f"no Ray cluster answers at {address} ({exc.strerror or exc}); start one "
                           "(`ray start --head`) or fix --ray-address") from None


def runtime_env(backend: str = "") -> dict[str, Any]:
    """The job's runtime environment: our package (and plugin backends' packages found outside site-packages) as
    ``py_modules``, so nodes without this checkout run the same code; ``PASSED_ENV`` variables that are set, and
    those of the backend's ``run_environment`` (a node without the driver's folder makes its own: ``ray_actors``)."""
    import importlib

    import utils
    from utils.models.backend import _plugins, run_environment

    modules = {str(Path(utils.__file__).parent)}
    for target in _plugins().values():
        top = target.partition(":")[0].split(".")[0]
        try:
            module = importlib.import_module(top)
        except ImportError:
            continue
        where = Path(getattr(module, "__file__", "") or next(iter(getattr(module, "__path__", [""])), ""))
        if where.name == "__init__.py":
            where = where.parent
        if str(where) and "-packages" not in str(where):
            modules.add(str(where))
    names = PASSED_ENV + (tuple(run_environment(backend, Path("."))) if backend else ())
    env = {k: os.environ[k] for k in names if k in os.environ}
    return {"py_modules": sorted(modules), "env_vars": env}


def connect(address: str = "", ship: bool = True, backend: str = "") -> ClusterInfo:
    """Join the cluster at ``address`` (``""``: start a local instance on the loopback address); ClusterError in
    one line for an address nobody answers, no Ray running (``auto``) or another Ray/Python version there."""
    address = address.strip()
    if address and address != "auto":
        _probe(address)
    if not address:
        os.environ.setdefault(LOOPBACK_ENV, "0")  # before ray is imported: a local instance listens on 127.0.0.1
    try:
        import ray
    except ImportError:
        raise ClusterError("executor 'ray' needs Ray: pip install 'ray[data]' (setup.sh installs it)") from None
    kwargs: dict[str, Any] = {"logging_level": "WARNING", "ignore_reinit_error": True}
    if ship:  # the job's code and variables (a check joins without them)
        kwargs["runtime_env"] = runtime_env(backend)
    if not address:
        kwargs["include_dashboard"] = False
    try:
        ray.init(address=address or "local", **kwargs)
    except Exception as exc:  # noqa: BLE001 - Ray raises several kinds; each becomes one line
        text = " ".join(str(exc).split())
        if "version mismatch" in text.lower() or "Version mismatch" in text:
            raise ClusterError(f"the Ray cluster at {address} runs another Ray or Python version than this "
                               f"machine (Ray {ray.__version__}, Python {sys.version.split()[0]}): {text[:300]}"
                               ) from None
        raise ClusterError(f"could not join a Ray cluster at {address or 'a new local instance'}: "
                           f"{type(exc).__name__}: {text[:300]}") from None
    nodes = []
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        res = node.get("Resources", {})
        nodes.append({"id": node["NodeID"][:8], "ip": node.get("NodeManagerAddress", "?"),
                      "cpus": res.get("CPU", 0.0), "gpus": res.get("GPU", 0.0)})
    return ClusterInfo(address, nodes)


def check(address: str, backend: str) -> str:
    """The runner's check before stage 01 of a cluster at ``address`` (see the module docstring; without an address
    the runner starts a local instance instead: ``start_local``): the cluster's line, or ClusterError."""
    from utils.models.backend import uses_gpu

    try:
        cluster = connect(address, ship=False)
        pool_plan(cluster, uses_gpu(backend), 1, 1 << 30)
        return cluster.line()
    finally:
        ray = sys.modules.get("ray")
        if ray is not None and ray.is_initialized():
            ray.shutdown()


# ----------------------------------------------------------------------------------------------- the driver


def run_on_ray(backend: str, test: pd.DataFrame, image_dir: Path, artifact_dir: Path, out_dir: Path,
               num_shards: int, settings: dict[str, Any], *, address: str = "", num_threads: int = 1,
               download: bool = True, console_every: float = 30.0) -> list[Path]:
    """Predict every shard of ``test`` on the Ray cluster at ``address`` into ``out_dir`` (see the module
    docstring); the shard files. ``settings`` go to every actor's ``backend.predict``."""
    from utils.models.backend import uses_gpu

    cluster = connect(address, backend=backend)
    try:
        return _drive(cluster, backend, uses_gpu(backend), test, image_dir, artifact_dir, out_dir, num_shards,
                      settings, num_threads, download, console_every)
    finally:
        import ray

        ray.shutdown()


@dataclass
class _Shard:
    tag: str
    writer: Any
    entity_of: dict[int, str]
    asked: set[int]


def _drive(cluster: ClusterInfo, backend: str, gpu: bool, test: pd.DataFrame, image_dir: Path, artifact_dir: Path,
           out_dir: Path, num_shards: int, settings: dict[str, Any], num_threads: int, download: bool,
           console_every: float) -> list[Path]:
    import ray
    import ray.data

    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[int, Path] = {}
    shards: dict[int, _Shard] = {}
    owner: dict[int, int] = {}
    todo = []
    with ExitStack() as stack:
        for i in range(num_shards):
            rows = shard_rows(test, i, num_shards)
            tag = f"03 shard {i}/{num_shards}"
            # the nodes fetch what they lack and hand every row to the backend: recorded as such (``no_image``)
            record = shard_record(backend, rows, image_dir, artifact_dir, settings, guess_without_image=True)
            writer = stack.enter_context(open_writer(out_dir, i, num_shards, record, tag))
            entity_of = dict(zip(rows["index"].astype("int64").tolist(), rows["entity_name"].astype(str).tolist()))
            if writer.is_done:
                paths[i] = writer.path
                continue
            left = rows[~rows["index"].isin(writer.done_indices)]
            shards[i] = _Shard(tag, writer, entity_of, set(left["index"].astype("int64").tolist()))
            owner.update({int(k): i for k in left["index"]})
            todo.append(left)
        done_before = sum(len(s.writer.done_indices) for s in shards.values())
        left = pd.concat(todo, ignore_index=True).sort_values("index", kind="stable") if todo else test.iloc[:0]
        block = int(settings.get("batch_size") or (32 if gpu else 8))
        blocks = [left.iloc[s:s + block].reset_index(drop=True) for s in range(0, len(left), block)]
        size, each = pool_plan(cluster, gpu, num_threads, max(1, len(blocks)))
        say(f"[{TAG}] cluster {cluster.line()}")
        say(f"[{TAG}] actor pool: {size} {backend} actor(s), each "
            + ("1 GPU" if gpu else f"{num_threads} CPU(s)") + f"; {len(left)} rows to predict in {len(blocks)} "
            f"block(s) of up to {block} rows over {num_shards} shard(s) ({done_before} written by an earlier run, "
            f"{len(paths)} shard(s) already done)")
        if blocks:
            ctx = ray.data.DataContext.get_current()
            ctx.enable_progress_bars = False
            ctx.print_on_execution_start = False
            data = pack_artifact(artifact_dir)
            shipped = [ray.put(data)] if len(data) <= MAX_SHIPPED_ARTIFACT else []
            ds = ray.data.from_pandas(blocks).map_batches(
                Predictor, batch_size=block, batch_format="pandas",
                compute=ray.data.ActorPoolStrategy(size=size),
                fn_constructor_kwargs={"backend": backend, "artifact": str(artifact_dir),
                                       "fingerprint": artifact_fingerprint(artifact_dir), "shipped": shipped,
                                       "image_dir": str(image_dir), "download": download, "settings": settings},
                **each)
            _collect(ds, shards, owner, paths, len(left), console_every)
        for i, shard in sorted(shards.items()):
            if i not in paths:
                paths[i] = finish_shard(shard.writer, shard.entity_of, shard.tag)
    return [paths[i] for i in range(num_shards)]


def _collect(ds: Any, shards: dict[int, _Shard], owner: dict[int, int], paths: dict[int, Path], total: int,
             console_every: float) -> None:
    """Write the answers as they arrive; a shard whose rows are all written is marked done at once."""
    every, started, done, dropped = Every(console_every), time.monotonic(), 0, 0
    per_node: dict[str, int] = {}
    for frame in ds.iter_batches(batch_size=None, batch_format="pandas"):
        shard_of = frame["index"].map(owner)
        if shard_of.isna().any():
            raise RuntimeError(f"{TAG}: backend answered index {int(frame['index'][shard_of.isna()].iloc[0])}, "
                               "which was not asked for")
        for i, part in frame.groupby(shard_of, sort=True):
            shard = shards[int(i)]
            written = shard.writer.done_indices
            fresh = [(int(k), r) for k, r in zip(part["index"], part["raw"]) if int(k) not in written]
            dropped += len(part) - len(fresh)  # a retried block answered again: written once, by us
            if fresh:
                done += shard.writer.write_batch(clean_batch(fresh, shard.entity_of, shard.asked, written, shard.tag))
            for node, count in part["node"].value_counts().items():
                per_node[str(node)] = per_node.get(str(node), 0) + int(count)
            if shard.asked <= shard.writer.done_indices and int(i) not in paths:
                paths[int(i)] = finish_shard(shard.writer, shard.entity_of, shard.tag)
        if every(force=done >= total):
            nodes = ", ".join(f"node {k} {v}" for k, v in sorted(per_node.items()))
            say(progress_line(TAG, done, total, started, extra=f"per node: {nodes}"))
    if dropped:
        say(f"[{TAG}] {dropped} answer(s) of retried blocks were already written and were dropped")


def start_local(backend: str, env: dict[str, str], timeout: float = 120.0) -> tuple[Any, str, dict[str, str], str]:
    """A local Ray instance held by a child process (``--serve``) for the whole run, so its start overlaps stages
    01 and 02: ``(process, address, environment to join it, line)``; stopping the process (with everything below
    it) ends the instance. The environment: the loopback switch, and ``RAY_AUTH_MODE`` when Ray enabled its token
    authentication (it does where a token exists: ``~/.ray/auth_token``).
    ClusterError in one line when it cannot start, or when a GPU backend finds no GPU in it."""
    import subprocess
    import threading

    cmd = [sys.executable, "-m", "utils.pipeline.ray_executor", "--serve", "--backend", backend]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            env={**env, LOOPBACK_ENV: "0"}, start_new_session=True)
    timer = threading.Timer(timeout, proc.kill)
    timer.start()
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("ok: "):
                address, mode, described = line[4:].strip().split(" ", 2)
                join = {LOOPBACK_ENV: "0", **({AUTH_MODE_ENV: mode} if mode != "-" else {})}
                return proc, address, join, described
            if line.startswith("error: "):
                proc.kill()
                raise ClusterError(line[7:].strip())
    finally:
        timer.cancel()
    proc.kill()
    raise ClusterError(f"a local Ray instance did not start within {timeout:.0f} s")


def serve(backend: str) -> int:
    """``--serve``: start a local instance, print ``ok: ADDRESS LINE`` (or ``error: ...``), hold it until killed."""
    import signal

    from utils.models.backend import uses_gpu

    cluster = connect("", ship=False)
    import ray

    address = ray.get_runtime_context().gcs_address
    cluster.address = f"a local Ray instance at {address}"
    try:
        pool_plan(cluster, uses_gpu(backend), 1, 1 << 30)
    except ClusterError as exc:
        print(f"error: {exc}", flush=True)
        return 2
    print(f"ok: {address} {os.environ.get(AUTH_MODE_ENV) or '-'} {cluster.line()}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        time.sleep(3600)


def preflight(address: str, backend: str, env: dict[str, str], timeout: float = 120.0) -> str:
    """``check`` in a child process (Ray's connection state and signal handlers stay out of the runner): the
    cluster's line, or ClusterError with the check's one line."""
    import subprocess

    cmd = [sys.executable, "-m", "utils.pipeline.ray_executor", "--check", "--address", address, "--backend",
           backend]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise ClusterError(f"no Ray cluster answered at {address} within {timeout:.0f} s") from None
    lines = [ln for ln in result.stdout.splitlines() if ln.startswith(("ok: ", "error: "))]
    if result.returncode == 0 and lines and lines[-1].startswith("ok: "):
        return lines[-1][4:]
    if lines:
        raise ClusterError(lines[-1].removeprefix("error: "))
    tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
    raise ClusterError(f"the Ray check failed: {tail}")


def main(argv: list[str] | None = None) -> int:
    """``--check``: the runner's one-line check before stage 01 (exit 0 ``ok: ...``, exit 2 ``error: ...``);
    ``--serve``: a local instance held for the runner (``start_local``)."""
    import argparse
    import logging

    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--serve", action="store_true")
    parser.add_argument("--address", default="")
    parser.add_argument("--backend", required=True)
    args = parser.parse_args(argv)
    logging.disable(logging.WARNING)
    try:
        if args.serve:
            return serve(args.backend)
        line = check(args.address, args.backend)
    except (ClusterError, ValueError, ImportError) as exc:
        print(f"error: {exc}", flush=True)
        return 2
    print(f"ok: {line}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
