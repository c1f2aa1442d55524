"""Stage 03 on a Ray cluster (``run_all.sh --executor ray``): the same submission as the local executor, nothing lost
when an actor or the driver dies, and a one-line error before stage 01 when the cluster cannot run the stage.

One two-node cluster for the module (``ray.cluster_utils.Cluster``: a head and a worker node of one CPU each, on
127.0.0.1, 100 MB object stores, no dashboard). The runner, papermill and the stages run for real; the backends are
the product's own ocr backend and the fast fakes of ``tests.fake_backends`` (through ``PRODUCT_VALUES_BACKENDS``).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pandas as pd
import pytest

from utils.pipeline.ray_actors import NODE_CACHE_ENV, Predictor, node_artifact, pack_artifact
from utils.pipeline.ray_executor import LOOPBACK_ENV
from utils.pipeline.shards import read_shard

from .fake_backends import PLUGIN
from .image_server import ImageServer

os.environ.setdefault(LOOPBACK_ENV, "0")  # before ray is imported: the test cluster stays on 127.0.0.1
REPO = Path(__file__).resolve().parents[1]
STORE = 100 * 2**20


def _env(**extra: str | None) -> dict[str, str]:
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "PRODUCT_VALUES_BACKENDS": PLUGIN,
           LOOPBACK_ENV: "0"}
    env.update(extra)
    return {k: v for k, v in env.items() if v is not None}  # None: unset


def _args(root: Path, *more: str, backend: str = "counting", sleep: float = 0.0, demo_test: int = 24,
          work: Path | None = None) -> list[str]:
    work = work or root / "work"
    settings = {"answers_csv": str(work / "demo" / "test_labels.csv"), "sleep": sleep,
                "record_dir": str(work / "records")}
    return ["--demo-train", "16", "--demo-test", str(demo_test), "--shards", "3", "--backend", backend,
            "--work", str(work), "--out", str(root / "out"), "--runs", str(root / "runs"),
            "--infer-settings", json.dumps(settings), "--batch-size", "4", *more]


def _run_all(args: list[str], timeout: int = 400, **env: str | None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(REPO / "run_all.sh"), *args], capture_output=True, text=True,
                          env=_env(**env), timeout=timeout, cwd=REPO)


def _asked(records: Path) -> list[tuple[int, int]]:
    """(pid, index) of every row the counting backend was asked, in all its processes."""
    out = []
    for path in sorted(records.glob("asked-*.txt")):
        out += [tuple(map(int, line.split())) for line in path.read_text().splitlines() if line.strip()]
    return out


def _written(shards: Path) -> list[int]:
    return [i for p in sorted(shards.glob("shard_*_of_03.csv")) for i in read_shard(p)["index"].tolist()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture(scope="module")
def cluster():
    """A head and one worker node, one CPU each, on the loopback address."""
    from ray.cluster_utils import Cluster

    node = {"num_cpus": 1, "object_store_memory": STORE, "node_ip_address": "127.0.0.1"}
    c = Cluster(initialize_head=True, head_node_args={**node, "include_dashboard": False})
    c.add_node(**node)
    yield c
    c.shutdown()


@pytest.fixture(scope="module")
def local_submission(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The counting backend's submission through today's local executor (what every Ray run must equal)."""
    root = tmp_path_factory.mktemp("local")
    result = _run_all(_args(root))
    assert result.returncode == 0, result.stdout + result.stderr
    return (root / "out" / "submission.csv").read_bytes()


# ------------------------------------------------------------------------------------- one line before stage 01


@pytest.mark.parametrize("address, message", [
    ("127.0.0.1:1", "no Ray cluster answers at 127.0.0.1:1"),
    ("ray://127.0.0.1:1", "no Ray cluster answers at ray://127.0.0.1:1"),
    ("not-an-address", "is not auto, HOST:PORT or ray://HOST:PORT"),
])
def test_a_bad_address_fails_in_one_line_before_stage_01(tmp_path: Path, address: str, message: str) -> None:
    started = time.monotonic()
    result = _run_all(_args(tmp_path, "--executor", "ray", "--ray-address", address))
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip() == f"run_all.sh: --executor ray: {result.stderr.split(': ', 2)[2].strip()}"
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "runs").exists() and "[01]" not in result.stdout
    assert time.monotonic() - started < 60


@pytest.mark.slow
def test_no_gpu_and_another_version_fail_in_one_line_before_stage_01(cluster, tmp_path: Path) -> None:
    result = _run_all(_args(tmp_path, "--executor", "ray", "--ray-address", cluster.address, backend="gpu_answers"))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "the backend needs a GPU" in result.stderr and "0 GPU(s)" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()

    # the cluster says it runs another Ray version (its own metadata record, which Ray checks on joining)
    from ray._common.usage import usage_constants
    from ray._private import ray_constants
    from ray._raylet import GcsClient

    gcs = GcsClient(address=cluster.address)
    key, ns = usage_constants.CLUSTER_METADATA_KEY, ray_constants.KV_NAMESPACE_CLUSTER
    real = gcs.internal_kv_get(key, namespace=ns)
    gcs.internal_kv_put(key, json.dumps({**json.loads(real), "ray_version": "2.0.0"}).encode(), overwrite=True,
                        namespace=ns)
    try:
        result = _run_all(_args(tmp_path, "--executor", "ray", "--ray-address", cluster.address))
    finally:
        gcs.internal_kv_put(key, real, overwrite=True, namespace=ns)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "runs another Ray or Python version" in result.stderr and "2.0.0" in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


# ------------------------------------------------------------------------------------- the same submission


@pytest.mark.slow
def test_the_ocr_demo_on_two_nodes_equals_the_local_executor_byte_for_byte(cluster, tmp_path: Path) -> None:
    work = tmp_path / "work"
    common = ["--demo-train", "40", "--demo-test", "40", "--shards", "2", "--work", str(work),
              "--runs", str(tmp_path / "runs")]
    local = _run_all([*common, "--out", str(tmp_path / "local")])
    assert local.returncode == 0, local.stdout + local.stderr
    # the same work folder (stage 02 is not fitted again) but another shard folder and an empty OCR cache: the
    # actors read every test image themselves
    ray_run = _run_all([*common, "--out", str(tmp_path / "ray"), "--shards-dir", str(tmp_path / "ray_shards"),
                        "--executor", "ray", "--ray-address", cluster.address],
                       OCR_CACHE_DIR=str(tmp_path / "ray_ocr_cache"))
    assert ray_run.returncode == 0, ray_run.stdout + ray_run.stderr
    out = ray_run.stdout
    assert "[03] Ray: " in out and "2 node(s), 2 CPU(s), 0 GPU(s)" in out, out
    assert out.index("[03] Ray: ") < out.index("[01] prepare data")  # checked before stage 01
    assert "actor pool: 2 ocr actor(s), each 1 CPU(s); 40 rows to predict" in out, out
    final = [ln for ln in out.splitlines() if ln.startswith("[03 ray] 40/40 rows (100%)")]
    assert final and "per node: node " in final[-1], out
    assert len(list((tmp_path / "ray_ocr_cache").rglob("*.json"))) >= 40  # OCR ran in the actors
    assert (tmp_path / "ray" / "submission.csv").read_bytes() == (tmp_path / "local" / "submission.csv").read_bytes()
    for i in range(2):  # the same files as a local run: run record, done marker
        shard = tmp_path / "ray_shards" / f"shard_{i:02d}_of_02.csv"
        assert shard.with_name(shard.name + ".run").is_file() and shard.with_name(shard.name + ".done").is_file()
        local_shard = work / "shards" / shard.name
        ours, theirs = read_shard(shard), read_shard(local_shard)
        assert sorted(ours.itertuples(index=False)) == sorted(theirs.itertuples(index=False))


@pytest.mark.slow
def test_without_an_address_the_run_holds_a_local_instance_and_ends_it(local_submission: bytes,
                                                                        tmp_path: Path) -> None:
    import psutil

    def serving() -> list[int]:
        return [p.pid for p in psutil.process_iter(["cmdline"])
                if "--serve" in (p.info["cmdline"] or []) and "utils.pipeline.ray_executor" in p.info["cmdline"]]

    assert serving() == []
    result = _run_all(_args(tmp_path, "--executor", "ray"), **{LOOPBACK_ENV: None})  # the runner's own doing
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "[03] Ray: a local Ray instance at 127.0.0.1:" in out, out  # started before stage 01, on loopback
    assert out.index("[03] Ray: ") < out.index("[01] prepare data")
    assert "[03] 3 shards on Ray at 127.0.0.1:" in out and "actor pool: 2 counting actor(s)" in out, out
    assert (tmp_path / "out" / "submission.csv").read_bytes() == local_submission
    assert serving() == []  # the instance ended with the run


# ------------------------------------------------------------------------------------- faults


@pytest.mark.slow
def test_a_killed_actor_is_restarted_and_every_row_is_written_once(cluster, local_submission: bytes,
                                                                   tmp_path: Path) -> None:
    proc = subprocess.Popen(["bash", str(REPO / "run_all.sh"), *_args(tmp_path, "--executor", "ray",
                                                                      "--ray-address", cluster.address, sleep=0.4)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env(), cwd=REPO)
    records, victim, deadline = tmp_path / "work" / "records", None, time.monotonic() + 300
    while victim is None and proc.poll() is None and time.monotonic() < deadline:
        asked = _asked(records)
        if asked:  # an actor is answering its first block: kill it mid-block
            victim = asked[0][0]
            os.kill(victim, signal.SIGKILL)
        time.sleep(0.1)
    out, _ = proc.communicate(timeout=300)
    assert victim is not None and proc.returncode == 0, out
    pids = {pid for pid, _ in _asked(records)}
    assert victim in pids and len(pids) >= 2  # someone else (the restarted actor or the other one) went on
    written = _written(tmp_path / "work" / "shards")
    assert sorted(written) == sorted(set(written)) and len(written) == 24  # every index once
    assert (tmp_path / "out" / "submission.csv").read_bytes() == local_submission


@pytest.mark.slow
def test_a_killed_driver_resumes_without_predicting_written_rows_again(cluster, local_submission: bytes,
                                                                       tmp_path: Path) -> None:
    args = _args(tmp_path, "--executor", "ray", "--ray-address", cluster.address, sleep=0.4)
    proc = subprocess.Popen(["bash", str(REPO / "run_all.sh"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=_env(), cwd=REPO)
    shards, deadline, driver = tmp_path / "work" / "shards", time.monotonic() + 300, None
    while proc.poll() is None and time.monotonic() < deadline:
        if len(_written(shards)) >= 6:  # mid-run: some rows written, most not
            lock = next(shards.glob("shard_*.lock")).read_text()  # "pid N on HOST since ...": the driver
            driver = int(lock.split()[1])
            os.kill(driver, signal.SIGKILL)
            break
        time.sleep(0.05)
    out, _ = proc.communicate(timeout=300)
    assert driver is not None and proc.returncode != 0, out
    before = set(_written(shards))
    assert 6 <= len(before) < 24, before
    records = tmp_path / "work" / "records"
    first_run = _asked(records)
    for pid in {pid for pid, _ in first_run}:  # the dead driver's actors are ended by Ray
        end = time.monotonic() + 60
        while _alive(pid) and time.monotonic() < end:
            time.sleep(0.2)
        assert not _alive(pid), f"actor {pid} of the killed driver still runs"
    for path in records.glob("asked-*.txt"):
        path.rename(path.with_name("first-" + path.name))

    again = _run_all(args)
    assert again.returncode == 0, again.stdout + again.stderr
    asked_again = {i for _, i in _asked(records)}
    assert not asked_again & before, sorted(asked_again & before)  # rows written before the kill: not again
    assert asked_again | before == set(_written(shards)) and len(_written(shards)) == 24
    assert f"({len(before)} written by an earlier run, 0 shard(s) already done)" in again.stdout \
        or "written by an earlier run" in again.stdout
    assert (tmp_path / "out" / "submission.csv").read_bytes() == local_submission


# ------------------------------------------------------------------------------------- nodes without a shared disk


def test_an_actor_on_a_node_without_the_files_unpacks_the_artifact_and_downloads_its_images(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Called outside Ray: a node that has neither the artifact's path nor the image folder."""
    from PIL import Image

    monkeypatch.setenv(NODE_CACHE_ENV, str(tmp_path / "node"))
    monkeypatch.setenv("PRODUCT_VALUES_BACKENDS", PLUGIN)
    artifact = tmp_path / "driver" / "artifact"
    artifact.mkdir(parents=True)
    (artifact / "fit.json").write_text('{"train": 3}')
    (artifact / "checkpoints").mkdir()
    (artifact / "checkpoints" / "big.bin").write_bytes(b"x" * 1000)
    from utils.pipeline.predict import artifact_fingerprint

    shipped, fp = [pack_artifact(artifact)], artifact_fingerprint(artifact)
    here = node_artifact(str(artifact), fp, shipped)
    assert here == artifact  # the same artifact at the same path: used in place
    there = node_artifact(str(tmp_path / "elsewhere"), fp, shipped)
    assert there == tmp_path / "node" / f"artifact-{fp}" and artifact_fingerprint(there) == fp
    assert not (there / "checkpoints").exists()  # a fit's checkpoints do not travel

    import io

    buf = io.BytesIO()
    Image.new("RGB", (40, 30), "white").save(buf, "JPEG")
    with ImageServer() as server:
        links = [server.add(f"/img/{k}.jpg", buf.getvalue()) for k in range(3)]
        labels = tmp_path / "labels.csv"
        pd.DataFrame({"index": [7, 8, 9], "entity_value": ["1.0 gram", "", "2.0 volt"]}).to_csv(labels, index=False)
        actor = Predictor("counting", str(tmp_path / "elsewhere"), fp, shipped, str(tmp_path / "no_such_folder"),
                          True, {"answers_csv": str(labels), "record_dir": str(tmp_path / "rec")})
        block = pd.DataFrame({"index": [7, 8, 9], "image_link": links, "entity_name": ["item_weight"] * 3})
        answers = actor(block)
    assert answers[["index", "raw"]].values.tolist() == [[7, "1.0 gram"], [8, ""], [9, "2.0 volt"]]
    assert sorted(p.name for p in (tmp_path / "node" / "images").glob("*.jpg")) == ["0.jpg", "1.jpg", "2.jpg"]
    assert actor.artifact == there
    import ray

    assert not ray.is_initialized()  # an actor built outside Ray started no Ray of its own


def test_the_executor_options_are_checked_with_the_others() -> None:
    from utils.pipeline.options import RunnerError, parse

    plan = parse(["--executor", "ray", "--ray-address", "auto"])
    assert (plan.infer.executor, plan.infer.ray_address) == ("ray", "auto")
    assert parse([]).infer.executor == "local"  # today's runner stays the default
    for argv, message in ((["--executor", "spark"], r"executor \(--executor\) must be one of local, ray"),
                          (["--executor", "ray", "--prepare-only"], "--prepare-only writes one notebook per")):
        with pytest.raises(RunnerError, match=message) as caught:
            parse(argv)
        assert caught.value.code == 2
