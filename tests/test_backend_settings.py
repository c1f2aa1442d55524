"""Every backend defines its settings once (a dataclass per stage) and the pipeline never names a backend: a wrong
setting fails before stage 01 in one line naming the valid names (and the close match); ``run_all.sh
--help-backend NAME`` prints them; ``utils/pipeline`` holds no backend's name or settings."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from utils.models.backend import check_settings, describe_settings, settings_defined
from utils.models.settings import SettingsError, fits
from utils.pipeline.params import FitParams, InferParams, ParamError

REPO = Path(__file__).resolve().parents[1]
BACKEND_WORDS = re.compile(r"(?i)(?:^|[^a-z])(ocr|paligemma|vlm|qwen|ranker)(?:$|[^a-z])")


def _code_text(path: Path) -> list[tuple[int, str]]:
    """Every identifier and string constant of a module outside its docstrings, with its line."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            found.append((node.lineno, node.id))
        elif isinstance(node, ast.Attribute):
            found.append((node.lineno, node.attr))
        elif isinstance(node, ast.alias):
            found.append((node.lineno, node.name))
        elif isinstance(node, (ast.FunctionDef, ast.ClassDef, ast.arg)):
            found.append((getattr(node, "lineno", 0), getattr(node, "name", None) or getattr(node, "arg", "")))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            found.append((node.lineno, node.value))
    return found


def test_the_pipeline_names_no_backend() -> None:
    named = [f"{path.name}:{line}: {text!r}" for path in sorted((REPO / "utils" / "pipeline").glob("*.py"))
             for line, text in _code_text(path) if BACKEND_WORDS.search(text.replace("_", " "))]
    assert named == []


def test_a_wrong_setting_names_the_valid_ones_and_the_close_match() -> None:
    with pytest.raises(ParamError) as err:
        FitParams(backend="ocr", settings={"empty_shar": 0.2})
    message = str(err.value)
    assert "settings (--fit-settings)" in message and "'empty_shar'" in message
    assert "did you mean 'empty_share'?" in message and "prior_answer" in message  # the valid names
    assert "--help-backend ocr" in message
    with pytest.raises(ParamError, match=r"'empty_share' must be float \| None, got 'high' \(str\)"):
        FitParams(backend="ocr", settings={"empty_share": "high"})  # issue 19, point 4
    with pytest.raises(ParamError, match="'lora_r' must be int, got 8.5"):
        FitParams(backend="paligemma", settings={"lora_r": 8.5})
    with pytest.raises(ParamError, match=r"infer setting of backend 'paligemma' 'learning_rate'"):
        InferParams(backend="paligemma", settings={"learning_rate": 1e-4})  # a fit setting, not a predict one
    with pytest.raises(ParamError, match="unknown infer setting .*'zzz'.*Valid names") as err:
        InferParams(backend="ocr", settings={"zzz": 1})
    assert "did you mean" not in str(err.value)
    # what is right passes: ints for floats, lists for tuples, None where allowed
    FitParams(backend="paligemma", settings={"num_train_epochs": 1, "lora_targets": ["q_proj"], "wandb_mode": None})
    InferParams(backend="ocr", settings={"empty_share": 0, "workers": 3})


def test_types_are_checked_the_json_way() -> None:
    assert fits(float, 1) and not fits(int, True) and not fits(float, False) and fits(bool, False)
    assert fits(tuple[str, ...], ["a"]) and not fits(tuple[str, ...], "a") and not fits(tuple[str, ...], [1])
    assert fits(int | None, None) and not fits(int, None) and not fits(str, 3)


def test_every_real_backend_declares_its_settings_and_they_describe_themselves() -> None:
    for name in ("ocr", "paligemma"):
        for stage in ("fit", "infer"):
            defined = settings_defined(name, stage)
            assert defined and all(s.help for s in defined.values()), (name, stage)
    assert "learning_rate" in settings_defined("paligemma", "fit")
    assert "learning_rate" not in settings_defined("paligemma", "infer")
    text = describe_settings("ocr")
    assert "  empty_share: float | None = null" in text and "fit settings (--fit-settings" in text
    with pytest.raises(SettingsError):
        check_settings("ocr", "fit", {"nope": 1})


def _run_all(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(REPO / "run_all.sh"), *args], capture_output=True, text=True, timeout=120,
                          cwd=REPO)


def test_run_all_checks_the_settings_before_stage_01_and_prints_them(tmp_path: Path) -> None:
    start = time.monotonic()
    bad = _run_all("--work", str(tmp_path / "w"), "--runs", str(tmp_path / "r"), "--fit-settings",
                   '{"empty_share": "high"}')
    assert bad.returncode == 2 and time.monotonic() - start < 30, bad.stderr
    assert bad.stderr.startswith("run_all.sh: settings (--fit-settings)") and "'empty_share'" in bad.stderr
    assert "Traceback" not in bad.stderr and not (tmp_path / "r").exists() and not (tmp_path / "w").exists()
    shown = _run_all("--help-backend", "paligemma")
    assert shown.returncode == 0, shown.stderr
    assert "learning_rate: float = 0.0002" in shown.stdout and "infer settings (--infer-settings" in shown.stdout
    unknown = _run_all("--help-backend", "gpt")
    assert unknown.returncode == 2 and "choose one of" in unknown.stderr


def test_the_warm_helper_takes_the_stage_parameters() -> None:
    out = subprocess.run([sys.executable, "-m", "utils.pipeline.warm", "--params", '{"backend": "nope"}'],
                         capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 2 and "backend (--backend) must be one of" in out.stderr


def test_what_a_backend_declares_reaches_the_shard_without_the_pipeline_naming_it(tmp_path: Path) -> None:
    from utils.models.backend import run_environment, speed_settings

    assert InferParams(backend="ocr", num_threads=3).backend_settings()["workers"] == 3
    assert InferParams(backend="ocr", num_threads=3, settings={"workers": 1}).backend_settings()["workers"] == 1
    assert "workers" not in InferParams(backend="paligemma", num_threads=3).backend_settings()
    assert run_environment("ocr", tmp_path) == {"OCR_CACHE_DIR": str(tmp_path / "ocr_cache")}
    assert run_environment("paligemma", tmp_path) == {}
    assert "workers" in speed_settings("ocr") and "progress" in speed_settings("paligemma")
