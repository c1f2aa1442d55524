"""The notebooks (static checks) and run_all.sh (flags, prepare-only, the demo end to end through papermill)."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
EXPECTED = ["01_prepare_data.ipynb", "02_finetune_lora.ipynb", "03_infer_shard.ipynb", "04_postprocess.ipynb"]
TYPES = {"str": str, "int": int, "float": float, "bool": bool, "dict": dict, "list": list}
LOGIC = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda, ast.For, ast.While, ast.If, ast.Try,
         ast.With, ast.ListComp, ast.DictComp, ast.SetComp, ast.GeneratorExp)
sys.path.insert(0, str(REPO / "tools"))

import make_notebooks  # noqa: E402


def _code_cells(path: Path) -> list[nbformat.NotebookNode]:
    return [cell for cell in nbformat.read(path, as_version=4).cells if cell.cell_type == "code"]


def test_the_four_notebooks_exist_and_match_the_generator() -> None:
    assert [p.name for p in NOTEBOOKS] == EXPECTED
    assert make_notebooks.main(["--check"]) == 0, "run python tools/make_notebooks.py"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_structure(path: Path) -> None:
    notebook = nbformat.read(path, as_version=4)
    nbformat.validate(notebook)
    assert notebook.metadata.kernelspec.name == "python3"
    first = notebook.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith("# ") and len(first.source) > 150
    code = _code_cells(path)
    assert "parameters" in code[0].metadata.get("tags", []), "the first code cell must be tagged parameters"
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1
    assert "print(paths.describe())" in code[1].source, "the second code cell prints platform, paths and versions"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_parameters_are_typed_literals_with_comments(path: Path) -> None:
    source = _code_cells(path)[0].source
    tree = ast.parse(source)
    lines = source.splitlines()
    assert len(tree.body) == len(lines) >= 2
    for statement, line in zip(tree.body, lines):
        assert isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name), line
        kind = ast.unparse(statement.annotation)
        assert kind in TYPES, f"{line}: annotate with one of {sorted(TYPES)}"
        value = ast.literal_eval(statement.value)
        assert type(value) is TYPES[kind], f"{line}: the literal is not a {kind}"
        comment = line.split("#", 1)[1].strip() if "  # " in line else ""
        assert len(comment) >= 10, f"{line}: every parameter needs a comment"
    names = [s.target.id for s in tree.body]
    assert names[0] == "repo_dir" and len(set(names)) == len(names)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_no_logic_and_no_outputs(path: Path) -> None:
    for cell in _code_cells(path):
        assert cell.outputs == [] and cell.execution_count is None, "outputs must be stripped"
        for node in ast.walk(ast.parse(cell.source)):
            assert not isinstance(node, LOGIC), f"{path.name}: {type(node).__name__} belongs in utils:\n{cell.source}"
            if isinstance(node, ast.ImportFrom):
                assert node.module.split(".")[0] == "utils", f"{path.name}: import only from utils"
            if isinstance(node, ast.Import):
                assert [a.name for a in node.names] == ["sys"]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_sees_every_parameter_with_its_type(path: Path) -> None:
    papermill = pytest.importorskip("papermill")
    tree = ast.parse(_code_cells(path)[0].source)
    declared = {s.target.id: ast.unparse(s.annotation) for s in tree.body}
    seen = papermill.inspect_notebook(str(path))
    assert {name: p["inferred_type_name"] for name, p in seen.items()} == declared
    assert all(p["help"] for p in seen.values())


def test_shard_notebook_parameters() -> None:
    names = {s.target.id for s in ast.parse(_code_cells(REPO / "notebooks" / "03_infer_shard.ipynb")[0].source).body}
    assert {"shard_index", "num_shards", "num_threads", "backend", "artifact_dir", "batch_size", "image_dir"} <= names


def _run_all(*args: str, timeout: int = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WANDB_MODE": "disabled", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(["bash", str(REPO / "run_all.sh"), *args], capture_output=True, text=True, env=env,
                          timeout=timeout, cwd=REPO)


def test_run_all_flags() -> None:
    assert subprocess.run(["bash", "-n", str(REPO / "run_all.sh")]).returncode == 0
    helped = _run_all("--help")
    assert helped.returncode == 0 and "--prepare-only" in helped.stdout and "--shards" in helped.stdout
    for bad in (["--nope"], ["--shards", "x"], ["--shards", "0"], ["--out"], ["--train-csv", "a.csv"],
                ["--fit-settings", "[1]"], ["--infer-settings", "{bad json"], ["--batch-size", "-1"]):
        result = _run_all(*bad)
        assert result.returncode == 2, (bad, result.stderr)
        assert "run_all.sh:" in result.stderr


def test_prepare_only_writes_parameterised_shard_notebooks(tmp_path: Path) -> None:
    result = _run_all("--prepare-only", "--shards", "3", "--out", str(tmp_path / "out"), "--work", "/kaggle/working/w",
                      "--infer-settings", '{"max_side": 960}', "--batch-size", "8",
                      "--repo-dir", "/kaggle/input/repo", "--test-csv", "/kaggle/input/data/test.csv",
                      "--artifact-dir", "/kaggle/input/first/work/artifacts/ocr")
    assert result.returncode == 0, result.stderr
    written = sorted((tmp_path / "out" / "shard_notebooks").glob("*.ipynb"))
    assert [p.name for p in written] == [f"03_infer_shard_{i:02d}_of_03.ipynb" for i in range(3)]
    for number, path in enumerate(written):
        injected = [c for c in _code_cells(path) if "injected-parameters" in c.metadata.get("tags", [])]
        assert len(injected) == 1
        assert f"shard_index = {number}" in injected[0].source and "num_shards = 3" in injected[0].source
        assert "/kaggle/working/w" in injected[0].source and "batch_size = 8" in injected[0].source
        assert 'settings = {"max_side": 960}' in injected[0].source
        assert 'repo_dir = "/kaggle/input/repo"' in injected[0].source
        assert "install_requirements = True" in injected[0].source  # a session of its own sets itself up
        assert 'test_csv = "/kaggle/input/data/test.csv"' in injected[0].source
        assert 'artifact_dir = "/kaggle/input/first/work/artifacts/ocr"' in injected[0].source
        assert all(c.outputs == [] for c in _code_cells(path)), "prepare-only must not execute"
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_the_demo_end_to_end_and_a_failing_shard(tmp_path: Path) -> None:
    """bash run_all.sh on a small demo, 4 shards; then a corrupt shard file must fail the whole run."""
    from utils.core.sanity import check_submission
    from utils.pipeline.shards import done_marker_path, shard_path

    out, work, runs = tmp_path / "out", tmp_path / "work", tmp_path / "runs"
    common = ("--demo-train", "24", "--demo-test", "16", "--shards", "4", "--out", str(out), "--work", str(work),
              "--runs", str(runs))
    result = _run_all(*common, timeout=400)
    assert result.returncode == 0, result.stdout + result.stderr
    submission = pd.read_csv(out / "submission.csv", keep_default_na=False)
    test = pd.read_csv(work / "demo" / "test.csv")
    assert len(submission) == 16 and check_submission(test, submission) == []
    for name in ("report.md", "f1_by_entity.png", "worst_mistakes.png", "gallery.html"):
        assert (out / name).stat().st_size > 100, name
    assert "Overall F1" in (out / "report.md").read_text()
    (run_dir,) = runs.iterdir()
    executed = sorted(p.name for p in run_dir.glob("*.ipynb"))
    assert executed == ["01_prepare_data.ipynb", "02_finetune_lora.ipynb"] + [
        f"03_infer_shard_{i:02d}_of_04.ipynb" for i in range(4)] + ["04_postprocess.ipynb"]
    for name in executed:
        cells = _code_cells(run_dir / name)
        assert any(c.outputs for c in cells), f"{name} was not executed"
        assert not any(o.get("output_type") == "error" for c in cells for o in c.outputs), name

    # One corrupt shard: the other three are done (skipped on rerun), shard 2 fails, so the run must fail.
    shards = work / "shards"
    done_marker_path(shards, 2, 4).unlink()
    shard_path(shards, 2, 4).write_text("not,a,shard,header\n")
    failed = _run_all(*common, timeout=300)
    assert failed.returncode != 0
    assert "[03 shard 2/4] failed: ValueError" in failed.stderr and "expected header" in failed.stderr
    second = max(runs.iterdir())
    assert (second / "03_infer_shard_02_of_04.ipynb").is_file()
    refit_log = "".join(o.get("text", "") for c in _code_cells(second / "02_finetune_lora.ipynb") for o in c.outputs)
    assert "reusing the fitted artifact" in refit_log  # same data and settings: the fit is not repeated
    assert not (second / "04_postprocess.ipynb").exists(), "04 must not run after a failed shard"


@pytest.mark.slow
def test_the_paligemma_backend_on_the_same_path(tmp_path: Path) -> None:
    """--backend paligemma through all four notebooks, with the tiny local PaliGemma (offline, CPU)."""
    from utils.core.sanity import check_submission
    from utils.models.paligemma.tiny import TinyConfig, build_tiny_paligemma

    tiny = build_tiny_paligemma(tmp_path / "tiny", TinyConfig())
    model = {"model_id": str(tiny), "quantization": "none"}
    fit = {**model, "max_steps": 2, "train_batch_size": 2, "grad_accum": 1}
    out, work = tmp_path / "out", tmp_path / "work"
    result = _run_all("--backend", "paligemma", "--demo-train", "12", "--demo-test", "6", "--shards", "2",
                      "--out", str(out), "--work", str(work), "--runs", str(tmp_path / "runs"),
                      "--fit-settings", json.dumps(fit), "--infer-settings", json.dumps(model), timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (work / "artifacts" / "paligemma.fitted").is_file()
    submission = pd.read_csv(out / "submission.csv", keep_default_na=False)
    assert check_submission(pd.read_csv(work / "demo" / "test.csv"), submission) == []
    assert (out / "report.md").is_file()
