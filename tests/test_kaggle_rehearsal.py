"""A Kaggle 2 x T4 session rehearsed without a GPU or a network, through ``run_all.sh --backend paligemma``.

Faked only at the libraries' own seams: two T4s (compute capability 7.5, 15 GiB) at ``torch.cuda``'s queries
(``tests/fake_gpu_site`` on ``PYTHONPATH``, in every process the runner starts), Kaggle's environment variables and
input folder in a temporary root, the Hugging Face hub at ``HF_ENDPOINT`` (``tests/fake_hub``, serving the tiny
PaliGemma as ``google/paligemma-3b-ft-docvqa-448``, gated behind a token), the token in ``HF_TOKEN``.

A fake GPU cannot compute, so the fine-tune and the shards compute on the CPU (``device: "cpu"``); everything that
is decided from the GPUs (the shard plan, one GPU per shard) is decided from the fake T4s, and the dtype decisions
of a T4 are checked in-process on the same functions the notebooks call (``test_on_a_t4_every_dtype_is_float16``).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from .fake_hub import FakeHub

REPO = Path(__file__).resolve().parents[1]
MODEL = "google/paligemma-3b-ft-docvqa-448"
TOKEN = "hf_RehearsalToken7f3a9c"
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def kaggle(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path):
    root = tmp_path_factory.mktemp("kaggle")
    (root / "input").mkdir()
    (root / "working").mkdir()
    with FakeHub({(MODEL, "main"): tiny_dir, (MODEL, "float16"): tiny_dir}, token=TOKEN) as hub:
        env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
        env.update(
            KAGGLE_KERNEL_RUN_TYPE="Batch", KAGGLE_URL_BASE="https://www.kaggle.com",
            KAGGLE_INPUT_DIR=str(root / "input"), HF_ENDPOINT=hub.url, HF_HOME=str(root / "hf_home"),
            HF_TOKEN=TOKEN, FAKE_GPUS="T4,T4", WANDB_MODE="offline", WANDB_SILENT="true",
            PYTHONPATH=os.pathsep.join([str(REPO / "tests" / "fake_gpu_site"), os.environ.get("PYTHONPATH", "")]),
        )
        yield root, hub, env


def _args(work: Path, root: Path, demo_train: int = 12, **fit: object) -> list[str]:
    fit_settings = {"quantization": "none", "device": "cpu", "gradient_checkpointing": False, "train_batch_size": 2,
                    "grad_accum": 1, "logging_steps": 1, "max_steps": 40, "save_steps": 2, "eval_max_rows": 2,
                    "time_budget_hours": 0, **fit}
    return ["--backend", "paligemma", "--demo-train", str(demo_train), "--demo-test", "4", "--shards", "4",
            "--work", str(work), "--out", str(work.parent / f"{work.name}_out"), "--runs", str(root / "runs"),
            "--fit-settings", json.dumps(fit_settings), "--infer-settings", json.dumps({"device": "cpu"})]


def _run(args: list[str], env: dict[str, str], timeout: int = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(REPO / "run_all.sh"), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)


def _latest_run(root: Path) -> Path:
    return max((root / "runs").iterdir(), key=lambda p: p.stat().st_mtime)


def _files_holding(folder: Path, secret: str) -> list[Path]:
    hits = []
    for path in folder.rglob("*"):
        if path.is_file() and secret.encode() in path.read_bytes():
            hits.append(path)
    return hits


def test_a_kaggle_session_that_dies_resumes_in_the_next_one(kaggle) -> None:
    root, hub, env = kaggle
    work1 = root / "working" / "session1"

    # Session 1: the fine-tune is killed (the session died) after its first checkpoints.
    first = subprocess.Popen(["bash", str(REPO / "run_all.sh"), *_args(work1, root)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env, cwd=REPO)
    checkpoints = work1 / "artifacts" / "paligemma" / "checkpoints"
    deadline = time.monotonic() + 400
    # the first finished checkpoint (save_total_limit rotates them, so no particular one is waited for: a fast
    # machine saves and deletes checkpoint-4 between two looks)
    while time.monotonic() < deadline and not list(checkpoints.glob("checkpoint-*/trainer_state.json")):
        assert first.poll() is None, first.communicate()
        time.sleep(0.05)
    first.send_signal(signal.SIGTERM)
    _, err = first.communicate(timeout=120)
    assert first.returncode == 128 + signal.SIGTERM and "stopped by SIGTERM" in err
    fit_log = (_latest_run(root) / "02_finetune_lora.log").read_text()
    assert f"base model {MODEL}: hub download" in fit_log  # not cached yet: downloaded ...
    downloads = hub.downloads()
    assert downloads and all(r.authorization == f"Bearer {TOKEN}" for r in downloads)  # ... with the token

    # The user kept session 1's checkpoints as a dataset: mounted read-only in session 2.
    kept = root / "input" / "session1-output" / "checkpoints"
    shutil.copytree(checkpoints, kept)
    for dirpath, dirnames, filenames in os.walk(kept, topdown=False):
        for name in filenames:
            os.chmod(os.path.join(dirpath, name), stat.S_IRUSR)
        os.chmod(dirpath, stat.S_IRUSR | stat.S_IXUSR)
    step = max(int(p.name.rsplit("-", 1)[1]) for p in kept.glob("checkpoint-*")
               if (p / "trainer_state.json").is_file())  # a checkpoint cut by the kill is never resumed

    # Session 2: a fresh working folder, two T4s, a 25-second time budget, resuming from the kept checkpoint.
    hub.requests.clear()
    work2 = root / "working" / "session2"
    result = _run(_args(work2, root, resume_from=str(kept.parent), time_budget_hours=25 / 3600,
                        save_margin_minutes=0), env)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    run_dir = _latest_run(root)
    fit_log = (run_dir / "02_finetune_lora.log").read_text()
    assert f"to resume from step {step}" in fit_log and "resuming from" in fit_log
    assert f"base model {MODEL}: hub cache" in fit_log  # cached: offline, no token, not a single model request
    assert [r for r in hub.requests if "/resolve/" in r.path or r.path.startswith("/api/models")] == []
    plan = json.loads((work2 / "artifacts" / "paligemma" / "checkpoints" / "plan.json").read_text())
    assert plan["configured_steps"] == 40 and plan["max_steps"] <= 40  # planned within the budget
    assert (work2 / "artifacts" / "paligemma" / "adapter" / "adapter_model.safetensors").is_file()

    # The plan for two T4s: one shard per GPU, the others queued; each shard saw only its GPU.
    assert "4 shards, 2 at a time on 2 GPU(s), 1 per GPU (cuda:0 Tesla T4 (compute capability 7.5" in out
    assert "shard 0 -> GPU 0, shard 1 -> GPU 1; queued: 2, 3" in out
    for i in range(4):
        log = (run_dir / f"03_infer_shard_{i:02d}_of_04.log").read_text()
        assert "Tesla T4" in log and f"[CUDA_VISIBLE_DEVICES={i % 2}]" in log or \
            f"[CUDA_VISIBLE_DEVICES={(i + 1) % 2}]" in log
    submission = pd.read_csv(work2.parent / "session2_out" / "submission.csv", keep_default_na=False)
    assert len(submission) == 4

    # The token never reaches a notebook, a log, the wandb run or any other file the runs wrote.
    for folder in (root / "runs", work1, work2, work2.parent / "session2_out"):
        assert _files_holding(folder, TOKEN) == [], folder
    assert list(work2.rglob("wandb/offline-run-*"))  # the wandb run was written (offline), without the token

    # A refit with other data starts fresh: the old checkpoints are moved aside, not resumed.
    again = _run(_args(work2, root, demo_train=14), env)
    assert again.returncode == 0, again.stdout + again.stderr
    fit_log = (_latest_run(root) / "02_finetune_lora.log").read_text()
    assert "were not written by this data and these settings" in fit_log and "training starts fresh" in fit_log
    assert list((work2 / "artifacts" / "paligemma").glob("checkpoints.stale-*"))


def test_prepare_only_writes_the_shard_notebooks_for_separate_sessions(kaggle) -> None:
    root, _, env = kaggle
    out = root / "working" / "prepare_only"
    result = _run(["--prepare-only", "--backend", "paligemma", "--shards", "2", "--out", str(out),
                   "--work", "/kaggle/working/work", "--repo-dir", "/kaggle/input/repo",
                   "--test-csv", "/kaggle/input/data/test.csv",
                   "--artifact-dir", "/kaggle/input/session1/work/artifacts/paligemma"], env, timeout=300)
    assert result.returncode == 0, result.stderr
    written = sorted((out / "shard_notebooks").glob("*.ipynb"))
    assert [p.name for p in written] == ["03_infer_shard_00_of_02.ipynb", "03_infer_shard_01_of_02.ipynb"]
    assert _files_holding(out, TOKEN) == []


def test_on_a_t4_every_dtype_is_float16(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The decisions a 2 x T4 session makes, on the functions the notebooks call: fp16 compute, fp16 4-bit compute,
    fp16 mixed precision in the Trainer on one GPU with the configured batch, the float16 weights branch, fp16
    inference; never bf16."""
    import torch

    from utils.models.paligemma.infer import InferConfig
    from utils.models.paligemma.load import ModelConfig, bnb_config
    from utils.models.paligemma.train import TrainConfig
    from utils.models.paligemma.trainer import training_arguments

    from . import fake_gpu

    fake_gpu.install(monkeypatch.setattr, [fake_gpu.T4, fake_gpu.T4])
    assert torch.cuda.is_bf16_supported()  # what torch answers on a T4 (emulation counts): not to be trusted
    cfg = ModelConfig()  # the notebook defaults: device and dtype "auto"
    assert cfg.torch_device == torch.device("cuda", 0) and cfg.torch_dtype == torch.float16
    assert bnb_config(cfg).bnb_4bit_compute_dtype == torch.float16
    train_cfg = TrainConfig()
    args = training_arguments(cfg, train_cfg, tmp_path, -1, False, "none")
    assert args.fp16 and not args.bf16
    # both T4s visible ("GPU T4 x2"): the fit still runs on one, with the batch it was configured with (transformers
    # counted both and doubled the batch, so the steps, the checkpoints and wandb disagreed with the settings)
    assert torch.cuda.device_count() == 2
    assert args.n_gpu == 1 and args.train_batch_size == train_cfg.train_batch_size == 4
    assert cfg.hub_revision == "float16"
    saved = {**cfg.to_dict(), "device": "auto", "dtype": "auto"}  # what stage 03 rebuilds from the adapter
    assert ModelConfig(**saved).torch_dtype == torch.float16 and InferConfig().merge_adapter
    with pytest.raises(ValueError, match="bfloat16.*not supported on Tesla T4"):
        ModelConfig(dtype="bfloat16")


_REPO_FILES = ("utils", "notebooks", "setup.sh", "run_all.sh", "requirements.txt", "constraints.txt", "pyproject.toml")


def _fresh_session(session: Path, artifacts: Path, backend: str, test_csv: Path) -> dict[str, float]:
    """A new session's folders at the same paths as every other one (as Kaggle's /kaggle/input and /kaggle/working
    are): only the repository, the first session's fitted artifact and the test CSV as inputs, an empty working
    folder. Returns the inputs' files with their modification times (nothing may write there)."""
    if session.exists():
        shutil.rmtree(session)
    inputs = session / "input"
    for name in _REPO_FILES:
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, inputs / "repo" / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            (inputs / "repo").mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, inputs / "repo" / name)
    shutil.copytree(artifacts / backend, inputs / "session1" / "artifacts" / backend)
    shutil.copy2(artifacts / f"{backend}.fitted", inputs / "session1" / "artifacts" / f"{backend}.fitted")
    (inputs / "data").mkdir()
    shutil.copy2(test_csv, inputs / "data" / "test.csv")
    (session / "working").mkdir()
    return {str(p): p.stat().st_mtime_ns for p in inputs.rglob("*")}


def test_prepared_shard_notebooks_run_in_sessions_of_their_own(tmp_path: Path) -> None:
    """``--prepare-only`` shard notebooks, each run with papermill in a fresh session holding only the repository,
    the fitted artifact (an input, left untouched) and the test CSV: each installs its requirements, downloads its
    own images, writes its shard; stage 04 on the collected shards gives the one-machine run's submission."""
    from .image_server import ImageServer

    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    env.pop("PRODUCT_VALUES_BACKENDS", None)
    one = tmp_path / "one_machine"
    common = ["--demo-train", "60", "--demo-test", "8", "--shards", "2"]
    whole = _run([*common, "--work", str(one / "work"), "--out", str(one / "out"), "--runs", str(one / "runs")],
                 env)
    assert whole.returncode == 0, whole.stdout + whole.stderr
    expected = pd.read_csv(one / "out" / "submission.csv", keep_default_na=False)

    session = tmp_path / "session"  # every shard session sees the same paths, as on Kaggle
    refused = _run(["--prepare-only", "--shards", "2", "--out", str(tmp_path / "prepared"), "--repo-dir",
                    str(session / "input" / "repo"), "--test-csv", str(session / "input" / "data" / "test.csv")], env)
    assert refused.returncode == 2 and "--prepare-only needs --artifact-dir" in refused.stderr
    prepared = _run(["--prepare-only", "--shards", "2", "--out", str(tmp_path / "prepared"),
                     "--repo-dir", str(session / "input" / "repo"),
                     "--test-csv", str(session / "input" / "data" / "test.csv"),
                     "--artifact-dir", str(session / "input" / "session1" / "artifacts" / "ocr"),
                     "--work", str(session / "working" / "work")], env)
    assert prepared.returncode == 0, prepared.stdout + prepared.stderr
    notebooks = sorted((tmp_path / "prepared" / "shard_notebooks").glob("*.ipynb"))
    assert len(notebooks) == 2

    collected = tmp_path / "collected"
    collected.mkdir()
    test = pd.read_csv(one / "work" / "demo" / "test.csv")
    with ImageServer() as server:  # the images behind URLs, as the challenge's are
        test["image_link"] = [server.add(f"/images/{link.rsplit('/', 1)[-1]}",
                                         (one / "work" / "demo" / "images" / link.rsplit("/", 1)[-1]).read_bytes())
                              for link in test["image_link"]]
        test.to_csv(tmp_path / "test.csv", index=False)
        kernel_env = {k: v for k, v in {**env, **os.environ}.items() if k not in ("PYTHONPATH", "OCR_CACHE_DIR")}
        for number, notebook in enumerate(notebooks):
            inputs = _fresh_session(session, one / "work" / "artifacts", "ocr", tmp_path / "test.csv")
            done = subprocess.run([sys.executable, "-m", "papermill", str(notebook),
                                   str(session / "working" / notebook.name), "--cwd", str(session / "working"),
                                   "-k", "python3", "--log-output"], capture_output=True, text=True,
                                  env=kernel_env, timeout=600, cwd=session / "working")
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
            assert "setup: requirements ready" in done.stdout + done.stderr  # its own set-up ran
            assert {str(p): p.stat().st_mtime_ns for p in (session / "input").rglob("*")} == inputs  # untouched
            images = list((session / "working" / "work" / "images").glob("*.png")) + \
                list((session / "working" / "work" / "images").glob("*.jpg"))
            assert images, "the shard downloaded its images into its own working folder"
            for path in (session / "working" / "work" / "shards").glob(f"shard_{number:02d}_of_02.csv*"):
                shutil.copy2(path, collected / path.name)
    assert sorted(p.name for p in collected.glob("*.done")) == ["shard_00_of_02.csv.done", "shard_01_of_02.csv.done"]

    merged = tmp_path / "merge"
    result = _run(["--stages", "04", "--shards", "2", "--test-csv", str(tmp_path / "test.csv"), "--shards-dir",
                   str(collected), "--work", str(merged / "work"), "--out", str(merged / "out"), "--runs",
                   str(merged / "runs")], env)
    assert result.returncode == 0, result.stdout + result.stderr
    submission = pd.read_csv(merged / "out" / "submission.csv", keep_default_na=False)
    pd.testing.assert_frame_equal(submission, expected)
