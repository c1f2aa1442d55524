"""utils.models.finetune.hub through huggingface_hub's real code: a loopback stand-in for the hub (``HF_ENDPOINT``), a Kaggle input
folder in a temporary root, tokens in the environment. Each case runs in a fresh interpreter, as a notebook does."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .fake_hub import FakeHub

REPO = Path(__file__).resolve().parents[1]
MODEL = "google/paligemma-3b-ft-docvqa-448"
TOKEN = "hf_TestTokenValue0123456789"
LOAD = (
    "from utils.models.paligemma.load import ModelConfig, load_base_model, load_processor, model_source\n"
    "cfg = ModelConfig(model_id={model!r}, quantization='none', revision={revision!r})\n"
    "print(model_source(cfg))\n"
    "load_processor(cfg.model_id, cfg.hub_revision)\n"
    "load_base_model(cfg)\n"
    "print('LOADED')\n"
)


def _run(tmp_path: Path, hub_url: str, token: str | None = None, revision: str = "auto", **env_extra: str
         ) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    env.update(HF_ENDPOINT=hub_url, HF_HOME=str(tmp_path / "hf_home"), KAGGLE_INPUT_DIR=str(tmp_path / "kaggle"),
               PYTHONPATH=str(REPO), **env_extra)
    if token is not None:
        env["HF_TOKEN"] = token
    code = LOAD.format(model=MODEL, revision=revision)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, cwd=REPO,
                          timeout=300)


def _last_line(result: subprocess.CompletedProcess[str]) -> str:
    return result.stderr.strip().splitlines()[-1]


@pytest.fixture()
def hub(tiny_dir: Path):
    with FakeHub({(MODEL, "main"): tiny_dir, (MODEL, "float16"): tiny_dir}, token=TOKEN) as server:
        yield server


def test_downloads_once_with_the_token_then_loads_offline_from_the_cache(hub: FakeHub, tmp_path: Path) -> None:
    first = _run(tmp_path, hub.url, TOKEN)
    assert first.returncode == 0, first.stderr
    assert "hub download" in first.stdout and "LOADED" in first.stdout
    files = hub.downloads()
    assert files and all(r.authorization == f"Bearer {TOKEN}" for r in files)  # the token was sent
    assert TOKEN not in first.stdout + first.stderr  # and never shown

    hub.requests.clear()
    second = _run(tmp_path, hub.url, token=None)  # no token needed any more
    assert second.returncode == 0, second.stderr
    assert "hub cache" in second.stdout
    assert hub.downloads() == [] and not [r for r in hub.requests if r.path.startswith("/api/models")]


def test_a_missing_wrong_or_unlicensed_token_ends_with_one_sentence_saying_what_to_do(hub: FakeHub,
                                                                                      tmp_path: Path) -> None:
    missing = _run(tmp_path, hub.url, token=None)
    assert missing.returncode != 0
    assert _last_line(missing).startswith("utils.models.finetune.hub.ModelAccessError: ")
    assert "none was found" in _last_line(missing) and "HF_TOKEN" in _last_line(missing)

    wrong = _run(tmp_path, hub.url, token="hf_wrong")
    assert "was refused" in _last_line(wrong) and "hf_wrong" not in wrong.stdout + wrong.stderr

    hub.licence_accepted = False
    gated = _run(tmp_path, hub.url, TOKEN)
    assert "accept the licence at https://huggingface.co/" + MODEL in _last_line(gated)
    assert TOKEN not in gated.stdout + gated.stderr


def test_an_anonymous_request_to_a_gated_model_asks_for_a_token(tiny_dir: Path, tmp_path: Path) -> None:
    """The real hub answers a request without a token to a gated repository 401 GatedRepo (GatedRepoError): with no
    token anywhere, the sentence says to add one, not to accept the licence "with the account the HF_TOKEN belongs
    to"."""
    with FakeHub({(MODEL, "main"): tiny_dir, (MODEL, "float16"): tiny_dir}, token=TOKEN, gated=True) as gated:
        anonymous = _run(tmp_path, gated.url, token=None)
        assert gated.downloads() and all(r.authorization is None for r in gated.downloads())
    assert anonymous.returncode != 0
    line = _last_line(anonymous)
    assert line.startswith("utils.models.finetune.hub.ModelAccessError: ")
    assert "none was found" in line and "add it as HF_TOKEN" in line and "the HF_TOKEN belongs to" not in line


def test_no_network_and_offline_mode_say_what_to_do(tmp_path: Path) -> None:
    unreachable = _run(tmp_path, "http://127.0.0.1:9", TOKEN)  # nothing listens on the discard port
    assert unreachable.returncode != 0
    assert "could not be downloaded (no network" in _last_line(unreachable)
    offline = _run(tmp_path, "http://127.0.0.1:9", TOKEN, HF_HUB_OFFLINE="1")
    assert "is not in the Hugging Face cache and HF_HUB_OFFLINE is set" in _last_line(offline)


def test_a_model_added_to_the_kaggle_notebook_is_loaded_from_its_input_folder(hub: FakeHub, tiny_dir: Path,
                                                                              tmp_path: Path) -> None:
    import shutil

    mounted = tmp_path / "kaggle" / "paligemma" / "transformers" / "paligemma-3b-ft-docvqa-448" / "1"
    shutil.copytree(tiny_dir, mounted)
    (tmp_path / "kaggle" / "paligemma" / "transformers" / "paligemma-3b-ft-docvqa-448" / "0").mkdir()  # older
    result = _run(tmp_path, hub.url, token=None)
    assert result.returncode == 0, result.stderr
    assert f"Kaggle input {mounted}" in result.stdout
    assert hub.downloads() == []


def test_the_dtype_branch_is_fetched_and_a_missing_one_asked_for_is_a_clear_error(hub: FakeHub, tmp_path: Path) -> None:
    fp16 = _run(tmp_path, hub.url, TOKEN, revision="float16")
    assert fp16.returncode == 0, fp16.stderr
    assert {r.path.split("/resolve/")[1].split("/")[0] for r in hub.downloads()} == {"float16"}
    hub.requests.clear()
    missing = _run(tmp_path / "other", hub.url, TOKEN, revision="bfloat16")  # this fake repo has no such branch
    assert missing.returncode != 0 and "has no revision 'bfloat16'" in _last_line(missing)


def test_revision_auto_follows_the_compute_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    from utils.models.paligemma.load import ModelConfig

    from . import fake_gpu

    assert ModelConfig().hub_revision is None  # CPU: float32, the main branch
    assert ModelConfig(model_id="someone/other-model", revision="auto").hub_revision is None
    assert ModelConfig(revision="main").hub_revision is None and ModelConfig(revision="abc").hub_revision == "abc"
    fake_gpu.install(monkeypatch.setattr, [fake_gpu.T4])
    assert ModelConfig().hub_revision == "float16"
    fake_gpu.install(monkeypatch.setattr, [fake_gpu.A100])
    assert ModelConfig().hub_revision == "bfloat16"


FALLBACK = (
    "from transformers import PaliGemmaForConditionalGeneration\n"
    "from utils.models.finetune.hub import from_source\nfrom utils.models.paligemma.load import load_processor\n"
    "load_processor({model!r}, 'float16')\n"
    "from_source(PaliGemmaForConditionalGeneration, {model!r}, 'float16', fallback_to_main=True)\n"
    "print('LOADED')\n"
)


def test_a_repository_without_the_dtype_branch_falls_back_to_main_with_a_line_saying_so(tiny_dir: Path,
                                                                                       tmp_path: Path) -> None:
    # revision "auto" asks for the float16 branch on a T4; a mirror or a fork may serve main only
    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")}
    with FakeHub({(MODEL, "main"): tiny_dir}, token=TOKEN) as main_only:
        env.update(HF_ENDPOINT=main_only.url, HF_HOME=str(tmp_path / "hf_home"), HF_TOKEN=TOKEN,
                   KAGGLE_INPUT_DIR=str(tmp_path / "kaggle"), PYTHONPATH=str(REPO))
        result = subprocess.run([sys.executable, "-c", FALLBACK.format(model=MODEL)], env=env, capture_output=True,
                                text=True, cwd=REPO, timeout=300)
        branches = {r.path.split("/resolve/")[1].split("/")[0] for r in main_only.downloads()}
    assert result.returncode == 0, result.stderr[-2000:]
    assert "LOADED" in result.stdout
    assert result.stdout.count("has no 'float16' branch; loading main") == 2  # processor and model, one line each
    assert branches == {"float16", "main"}  # asked for float16 first, then loaded main
