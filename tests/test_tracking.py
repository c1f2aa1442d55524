"""utils.env.tracking: the wandb mode is always explicit, so a run never hangs on a missing network."""

from __future__ import annotations

import os
import time

import pytest

from utils.env import tracking
from utils.env.network import PROXY_VARIABLES
from utils.env.tracking import init_run


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for var in ("WANDB_MODE", "WANDB_API_KEY", "KAGGLE_KERNEL_RUN_TYPE"):
        monkeypatch.delenv(var, raising=False)
    return monkeypatch


def test_offline_without_a_key(clean_env: pytest.MonkeyPatch) -> None:
    assert tracking.wandb_mode() == "offline"


def test_online_with_a_key(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("WANDB_API_KEY", "x" * 40)
    assert tracking.wandb_mode() == "online"


def test_env_mode_wins_and_is_validated(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("WANDB_API_KEY", "x" * 40)
    clean_env.setenv("WANDB_MODE", "disabled")
    assert tracking.wandb_mode() == "disabled"
    clean_env.setenv("WANDB_MODE", "dryrun")
    assert tracking.wandb_mode() == "offline"
    clean_env.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ValueError, match="one of"):
        tracking.wandb_mode()


def test_online_request_without_key_is_a_clear_error(clean_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="WANDB_API_KEY"):
        tracking.wandb_mode("online")


def test_offline_run_logs_to_disk_quickly(clean_env: pytest.MonkeyPatch, tmp_path) -> None:
    start = time.monotonic()
    run = tracking.init_run("unit-test", {"lr": 1e-3}, job_type="test", dir=tmp_path)
    run.log({"loss": 1.5})
    run.log({"loss": 0.5})
    assert run.summary["loss"] == 0.5
    assert run.config["lr"] == 1e-3
    run.finish()
    assert time.monotonic() - start < 60  # offline never waits on a server
    logs = list(tmp_path.glob("wandb/offline-run-*/run-*.wandb"))
    assert logs and logs[0].stat().st_size > 0, "offline run left no log to sync"


def test_disabled_run_needs_no_wandb_installed(clean_env: pytest.MonkeyPatch, tmp_path) -> None:
    import sys

    clean_env.setitem(sys.modules, "wandb", None)  # "import wandb" now raises ImportError
    with pytest.raises(ImportError):
        init_run("p", {"lr": 1e-3}, job_type="train", mode="offline", dir=tmp_path)
    run = init_run("p", {"lr": 1e-3}, job_type="train", mode="disabled", dir=tmp_path)
    run.log({"loss": 1.5})
    run.summary["f1"] = 0.5
    run.finish()
    assert run.history == [{"loss": 1.5}] and run.summary == {"f1": 0.5} and run.config == {"lr": 1e-3}
    assert os.environ["WANDB_MODE"] == "disabled"


def test_a_key_without_internet_logs_offline_with_a_line_instead_of_failing_the_fit(
        clean_env: pytest.MonkeyPatch, tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    # Kaggle with Internet off and a wandb key in its secrets: wandb's own init waits 90 s, then raises
    clean_env.setenv("WANDB_API_KEY", "x" * 40)
    clean_env.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens on the discard port
    for proxy in PROXY_VARIABLES:  # behind a proxy the server is reached through it and not probed
        clean_env.delenv(proxy, raising=False)
    run = tracking.init_run("unit-test", {"lr": 1e-3}, job_type="test", dir=tmp_path)
    run.log({"loss": 1.0})
    run.finish()
    assert os.environ["WANDB_MODE"] == "offline"  # what the Trainer's wandb callback reads too
    assert "cannot be reached" in capsys.readouterr().out
    assert list(tmp_path.glob("wandb/offline-run-*/run-*.wandb")), "the offline run left nothing to sync"
