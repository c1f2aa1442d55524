"""run_all.sh (utils.pipeline.run) as a careless user meets it: bad options, parallel starts, kills, kernel races, caps.

The stages run for real through papermill; a fast fake backend (``tests.fake_backends``, plugged in through the
product's ``PRODUCT_VALUES_BACKENDS`` seam) answers from the demo's labels so that each run takes seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from .fake_backends import PLUGIN

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1", "PRODUCT_VALUES_BACKENDS": PLUGIN}
    env.update(extra)
    return env


def _args(root: Path, *more: str, backend: str = "answers", sleep: float = 0.0, shards: int = 2,
          demo_test: int = 8) -> list[str]:
    work = root / "work"
    settings = {"answers_csv": str(work / "demo" / "test_labels.csv"), "sleep": sleep,
                "record_dir": str(root / "records")}
    return ["--demo-train", "16", "--demo-test", str(demo_test), "--shards", str(shards), "--backend", backend,
            "--work", str(work), "--out", str(root / "out"), "--runs", str(root / "runs"),
            "--infer-settings", json.dumps(settings), *more]


def _run_all(args: list[str], timeout: int = 300, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(REPO / "run_all.sh"), *args], capture_output=True, text=True, env=_env(**env),
                          timeout=timeout, cwd=REPO)


def _records(root: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted((root / "records").glob("predict-*.json"))]


def _max_overlap(records: list[dict]) -> int:
    events = sorted([(r["start"], 1) for r in records] + [(r["end"], -1) for r in records])
    now = peak = 0
    for _, step in events:
        now += step
        peak = max(peak, now)
    return peak


def test_every_option_is_checked_before_stage_01(tmp_path: Path) -> None:
    (tmp_path / "a_file").write_text("x")
    cases = [
        (["--labels-csv", str(tmp_path / "typo.csv")], "--labels-csv .*typo.csv does not exist"),
        (["--train-csv", str(tmp_path), "--test-csv", str(tmp_path / "a_file")], "--train-csv .* is a folder"),
        (["--images", str(tmp_path / "imgs")], "--images .*imgs does not exist"),
        (["--out", str(tmp_path / "a_file")], "--out .*a_file is a file, not a folder"),
        (["--work", str(tmp_path / "a_file")], "--work .*a_file is a file, not a folder"),
        (["--shards-dir", str(tmp_path / "a_file")], "--shards-dir .*a_file is a file, not a folder"),
        (["--artifact-dir", str(tmp_path / "a_file")], "--artifact-dir .*a_file is a file, not a folder"),
        (["--out", str(tmp_path / "a_file" / "out")], "--out .*out cannot be created: .*a_file is a file"),
        (["--work", str(tmp_path / "a_file" / "w" / "x")], "--work .*x cannot be created: .*a_file is a file"),
        (["--backend", "nonsense"], r"backend \(--backend\) must be one of .*ocr.*paligemma"),
        (["--backend", "nonsense", "--prepare-only"], r"backend \(--backend\) must be one of"),
        (["--per-entity", "-3"], r"per_entity \(--per-entity\) must be a whole number >= 0"),
        (["--max-missing-images", "2"], r"--max-missing-images\) must be a share between 0 and 1"),
        (["--shards", "0"], r"--shards\) must be a whole number >= 1"),
        (["--fit-settings", "[1]"], "--fit-settings: must be a JSON object"),
    ]
    for args, message in cases:
        started = time.monotonic()
        result = subprocess.run(["bash", str(REPO / "run_all.sh"), "--runs", str(tmp_path / "runs"), *args],
                                capture_output=True, text=True, env=_env(), timeout=120, cwd=REPO)
        assert result.returncode == 2, (args, result.stdout, result.stderr)
        assert result.stderr.startswith("run_all.sh") or "run_all.sh: error" in result.stderr, result.stderr
        assert __import__("re").search(message, result.stderr), (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert time.monotonic() - started < 60
    assert not (tmp_path / "runs").exists()  # nothing ran


def test_the_help_of_a_flag_that_turns_something_off_says_so() -> None:
    from utils.pipeline.options import build_parser

    text = " ".join(build_parser().format_help().split())
    assert "--no-download turn off (on by default): download missing images" in text


def test_shards_are_capped_and_queued_and_empty_shards_run_no_kernel(tmp_path: Path) -> None:
    result = _run_all(_args(tmp_path, "--parallel", "2", sleep=0.4, shards=6, demo_test=4))
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "[03] 2 of 6 shards have no rows (4 test rows): finished without a kernel" in out
    assert "[03] 4 shards, 2 at a time" in out and "queued: 2, 3" in out
    assert "[03 shard 0/6] 1 of 1 rows to predict" in out  # the notebooks' progress lines reach the console
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert len(list(run_dir.glob("03_infer_shard_*.ipynb"))) == 4  # no kernel for the empty shards
    records = _records(tmp_path)
    assert len(records) == 4 and _max_overlap(records) <= 2
    submission = pd.read_csv(tmp_path / "out" / "submission.csv", keep_default_na=False)
    assert len(submission) == 4


def test_shards_get_one_gpu_each_and_wait_for_a_free_one(tmp_path: Path) -> None:
    site = str(REPO / "tests" / "fake_gpu_site")
    result = _run_all(_args(tmp_path, backend="gpu_answers", sleep=0.4, shards=4), FAKE_GPUS="T4,T4",
                      PYTHONPATH=site + os.pathsep + os.environ.get("PYTHONPATH", ""))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 at a time on 2 GPU(s), 1 per GPU (cuda:0 Tesla T4 (compute capability 7.5, 15.0 GiB)" in result.stdout
    assert "shard 0 -> GPU 0, shard 1 -> GPU 1; queued: 2, 3" in result.stdout
    records = _records(tmp_path)
    assert sorted(r["gpus"] for r in records) == ["0", "0", "1", "1"]
    for gpu in ("0", "1"):  # never two shards on one GPU at once
        assert _max_overlap([r for r in records if r["gpus"] == gpu]) == 1
    (run_dir,) = (tmp_path / "runs").iterdir()
    log = (run_dir / "03_infer_shard_01_of_04.log").read_text()
    assert "Tesla T4" in log and "[CUDA_VISIBLE_DEVICES=" in log  # the shard saw its one GPU


def test_a_kernel_that_fails_to_start_is_retried(tmp_path: Path) -> None:
    kernels = tmp_path / "jupyter" / "kernels" / "flaky"
    kernels.mkdir(parents=True)
    counter = tmp_path / "failures_left"
    counter.write_text("2")
    script = tmp_path / "flaky_kernel.sh"
    script.write_text(f"""#!/bin/sh
# dies before replying to kernel_info, as a kernel that lost jupyter's port race does, while failures are left
n=$(cat {counter})
if [ "$n" -gt 0 ]; then echo $((n - 1)) > {counter}; exit 1; fi
exec {sys.executable} -m ipykernel_launcher -f "$1"
""")
    (kernels / "kernel.json").write_text(json.dumps(
        {"argv": ["/bin/sh", str(script), "{connection_file}"], "display_name": "flaky", "language": "python"}))
    result = _run_all(_args(tmp_path, "--kernel", "flaky"), JUPYTER_PATH=str(tmp_path / "jupyter"))
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("the kernel failed to start (jupyter port race); retry") == 2
    assert counter.read_text().strip() == "0"

    counter.write_text("99")  # a kernel that never starts: the run fails after the retries, saying so
    failed = _run_all(_args(tmp_path, "--kernel", "flaky", "--start-retries", "1"),
                      JUPYTER_PATH=str(tmp_path / "jupyter"))
    assert failed.returncode == 1 and "Kernel died before replying to kernel_info" in failed.stderr


def _descendants(pid: int) -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process(pid).children(recursive=True)]


def test_one_run_per_work_folder_and_a_kill_stops_everything_it_started(tmp_path: Path) -> None:
    import psutil

    args = _args(tmp_path, sleep=3.0)
    first = subprocess.Popen(["bash", str(REPO / "run_all.sh"), *args], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and len(_records(tmp_path)) < 2:  # both shards are predicting
            assert first.poll() is None, first.communicate()
            time.sleep(0.5)
        assert len(_records(tmp_path)) == 2

        second = _run_all(args, timeout=120)  # a second start on the same work folder
        assert second.returncode == 3
        assert f"is in use by pid {first.pid}" in second.stderr and "--wait" in second.stderr

        tree = _descendants(first.pid)
        assert len(tree) >= 4  # papermill and its kernel, for each shard
        first.send_signal(signal.SIGTERM)  # kill <pid>, as a user would
        out, err = first.communicate(timeout=60)
        assert first.returncode == 128 + signal.SIGTERM, err
        assert "stopped by SIGTERM" in err
        assert "finished in" not in out  # a shard stopped by the kill is never reported as finished
        gone_by = time.monotonic() + 30
        while time.monotonic() < gone_by and any(psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"
                                                 for p in tree):
            time.sleep(0.5)
        alive = [p for p in tree if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
        assert alive == [], f"orphans left running: {alive}"
    finally:
        if first.poll() is None:
            first.kill()

    again = _run_all(_args(tmp_path))  # an immediate rerun resumes instead of failing on a half-written shard
    assert again.returncode == 0, again.stdout + again.stderr
    assert len(pd.read_csv(tmp_path / "out" / "submission.csv")) == 8


def test_prepare_only_shows_papermill_errors(tmp_path: Path) -> None:
    blocked = tmp_path / "out" / "shard_notebooks" / "03_infer_shard_00_of_02.ipynb"
    blocked.mkdir(parents=True)  # a folder where the notebook must be written: papermill fails
    result = subprocess.run(["bash", str(REPO / "run_all.sh"), "--prepare-only", "--shards", "2", "--out",
                             str(tmp_path / "out"), "--test-csv", "/s/test.csv", "--artifact-dir", "/s/ocr"],
                            capture_output=True, text=True, env=_env(), timeout=120, cwd=REPO)
    assert result.returncode == 1
    assert "writing 03_infer_shard_00_of_02.ipynb failed" in result.stderr
    assert "IsADirectoryError" in result.stderr  # papermill's own reason, not swallowed


def test_an_idle_slot_helps_the_last_running_shard(tmp_path: Path) -> None:
    result = _run_all(_args(tmp_path, "--parallel", "2", backend="warm_answers", sleep=1.5, shards=3,
                            demo_test=12))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "an idle slot (CPU) helps shard" in result.stdout
    warms = [json.loads(p.read_text()) for p in (tmp_path / "records").glob("warm-*.json")]
    assert warms, "no helper ran"
    test = pd.read_csv(tmp_path / "work" / "demo" / "test.csv")
    from utils.pipeline.shards import shard_rows

    owners = {i: [int(x) for x in shard_rows(test, i, 3)["index"]] for i in range(3)}
    for warm in warms:
        shard = next(i for i, rows in owners.items() if warm["warmed"][0] in rows)
        assert set(warm["warmed"]) <= set(owners[shard])
        assert warm["warmed"] == sorted(warm["warmed"], reverse=True)  # the last rows first
    submission = pd.read_csv(tmp_path / "out" / "submission.csv", keep_default_na=False)
    assert len(submission) == 12  # each shard still wrote only its own rows, every index once


def test_a_kill_during_a_single_notebook_stage_stops_papermill_and_its_kernel(tmp_path: Path) -> None:
    """Stages 01, 02 and 04 run one notebook in the runner's main thread: a kill there must stop it too (it used to
    leave the stop list before ``stop_all`` ran: papermill and its kernel lived on, and wrote ``.fitted`` later)."""
    import psutil

    args = _args(tmp_path, "--fit-settings", json.dumps({"sleep": 12}))
    run = subprocess.Popen(["bash", str(REPO / "run_all.sh"), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, env=_env(), cwd=REPO)
    try:
        assert run.stdout is not None
        for line in run.stdout:  # wait for the fit to be under way in its kernel
            if "[02] fitting backend" in line:
                break
        tree = _descendants(run.pid)
        assert len(tree) >= 2  # the runner's python below bash, papermill and its kernel
        run.send_signal(signal.SIGTERM)
        _, err = run.communicate(timeout=60)
        assert run.returncode == 128 + signal.SIGTERM, err
        stopped = int(__import__("re").search(r"; (\d+) process\(es\) it had started were stopped", err).group(1))
        assert stopped >= 2, err  # papermill and its kernel, not 0
        alive = [p for p in tree if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
        assert alive == [], f"orphans left running: {alive}"
        time.sleep(13)  # past the fit's sleep: an orphaned kernel would now write the marker
        assert not list((tmp_path / "work" / "artifacts").glob("*.fitted"))
    finally:
        if run.poll() is None:
            run.kill()


def test_on_colab_the_kernels_get_the_secrets_the_runner_read(tmp_path: Path) -> None:
    """Colab's secrets (``google.colab.userdata``) answer only where a frontend does: the runner's process, not a
    kernel papermill starts. The runner reads HF_TOKEN and WANDB_API_KEY itself and hands them to every kernel
    through its environment, and no notebook, parameter or log holds them."""
    import hashlib

    token, key = "hf_ColabSecretToken4242", "wandbColabKey0000111122223333"
    store = tmp_path / "colab_store" / "secrets.json"
    store.parent.mkdir()
    store.write_text(json.dumps({"HF_TOKEN": token, "WANDB_API_KEY": key}))
    root = tmp_path / "session"
    env = {k: v for k, v in _env().items() if k not in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "WANDB_API_KEY")}
    env.update(FAKE_COLAB_SECRETS=str(store), PYTHONPATH=str(REPO))
    fake_colab = str(REPO / "tests" / "fake_colab_site")
    runner = ("import sys; sys.path.insert(0, sys.argv.pop(1)); from utils.pipeline.run import main; "
              "sys.exit(main(sys.argv[1:]))")  # the fake module on the runner's own path only
    result = subprocess.run([sys.executable, "-c", runner, fake_colab, *_args(root)], capture_output=True,
                            text=True, env=env, timeout=300, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr
    records = _records(root)
    assert len(records) == 2
    for record in records:
        assert record["secrets"] == {"HF_TOKEN": hashlib.sha256(token.encode()).hexdigest(),
                                     "WANDB_API_KEY": hashlib.sha256(key.encode()).hexdigest()}
    for path in root.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert token.encode() not in data and key.encode() not in data, path
    assert token not in result.stdout + result.stderr and key not in result.stdout + result.stderr


def test_stage_03_says_from_its_first_batches_whether_the_rest_fits_the_session(tmp_path: Path) -> None:
    """A slow backend (2 rows per 0.6 s batch and shard) and a session clock that has almost run out: after the
    first batches the runner prints the measured rate, the hours the rest needs and the hours the session has
    left, and a warning saying what to do; with the whole session ahead it only prints the estimate."""
    import re

    late = str(time.time() - 12 * 3600 + 60)  # a 12-hour session that started 11 h 59 min ago
    result = _run_all(_args(tmp_path / "late", "--parallel", "2", sleep=0.6, shards=2, demo_test=16),
                      PRODUCT_VALUES_SESSION_START=late, PRODUCT_VALUES_SESSION_HOURS="12")
    assert result.returncode == 0, result.stdout + result.stderr
    line = re.search(r"\[03\] measured ([\d.]+) rows/s over (\d) shards: about ([\d.]+) h for the rest \((\d+) rows\);"
                     r" this session has about ([\d.]+) h left \(Local 12 h from its start, .*: "
                     r"PRODUCT_VALUES_SESSION_START\)", result.stdout)
    assert line, result.stdout
    rate, shards, rest_h, rows, left_h = float(line[1]), int(line[2]), float(line[3]), int(line[4]), float(line[5])
    assert shards == 2 and 2.0 <= rate <= 8.0  # two shards of 2 rows per 0.6 s: about 6.7 rows/s, minus overheads
    assert 0 < rows < 16 and rest_h < 0.1 and left_h < 0.1
    assert "warning: [03] the rest will NOT fit this session" in result.stdout and "--stages 03,04" in result.stdout
    assert result.stdout.index("[03] measured") < result.stdout.index("[03] shard 0/2 finished")  # said in time

    fresh = _run_all(_args(tmp_path / "fresh", "--parallel", "2", sleep=0.6, shards=2, demo_test=16),
                     PRODUCT_VALUES_SESSION_START=str(time.time()), PRODUCT_VALUES_SESSION_HOURS="12")
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    assert re.search(r"this session has about 1[12]\.\d h left", fresh.stdout), fresh.stdout
    assert "will NOT fit" not in fresh.stdout
