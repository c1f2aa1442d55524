"""The package layout: imports point one way (pipeline -> models -> data -> core -> env), the two backends never
import each other, there is no import cycle (function-level imports included), and a module over 400 lines says
why at its top."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
UTILS = REPO / "utils"
LAYERS = {"env": 0, "core": 1, "data": 2, "models": 3, "pipeline": 4}
BACKEND_PACKAGES = {"paligemma", "ocr", "vlm"}  # never import each other; utils.models.finetune imports none
COMMANDS = {"utils.sanity", "utils.metrics", "utils.images"}  # the thin command entry points, above everything


def _modules() -> dict[str, Path]:
    found = {}
    for path in UTILS.rglob("*.py"):
        parts = path.relative_to(REPO).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path, known: set[str]) -> set[str]:
    """Every ``utils`` module ``path`` imports, at any depth of the file (lazy imports included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name.startswith("utils"):
                out.add(name)
    return out


def _layer(module: str) -> int:
    if module in COMMANDS:
        return 5
    parts = module.split(".")
    return LAYERS.get(parts[1], -1) if len(parts) > 1 else 5


def test_imports_point_one_way_and_the_backends_stay_apart() -> None:
    modules = _modules()
    wrong = []
    for name, path in modules.items():
        if name == "utils" or name.count(".") < 1:
            continue
        for target in _imports(path, set(modules)):
            if target == "utils" or target == name:
                continue
            if _layer(target) > _layer(name):
                wrong.append(f"{name} imports {target} (a layer above)")
            for a in BACKEND_PACKAGES:
                for b in BACKEND_PACKAGES - {a}:
                    if f".models.{a}." in name + "." and f".models.{b}" in target:
                        wrong.append(f"{name} imports the other backend {target}")
            if ".models.finetune" in name and any(f".models.{b}" in target for b in BACKEND_PACKAGES):
                wrong.append(f"{name} (shared by the backends) imports the backend {target}")
    assert wrong == []
    assert all(_layer(n) >= 0 for n in modules if n != "utils"), "every module belongs to a layer"


def test_no_import_cycle() -> None:
    modules = _modules()
    graph = {n: _imports(p, set(modules)) - {n, "utils"} for n, p in modules.items()}
    graph = {n: {t for t in ts if not n.startswith(t + ".") and t != n.rpartition(".")[0]} for n, ts in graph.items()}
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            assert cycle is None, " -> ".join(cycle)


def test_a_long_module_says_why_at_its_top() -> None:
    long = []
    for name, path in _modules().items():
        lines = path.read_text().count("\n")
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        if lines > 420 and "on purpose" not in doc:
            long.append(f"{name}: {lines} lines")
    assert long == []


def test_the_documented_commands_answer_where_users_type_them() -> None:
    import subprocess
    import sys

    for command, expected in ((["utils.sanity"], "TEST"), (["utils.metrics"], "PREDICTIONS"),
                              (["utils.images", "download"], "CSV"), (["utils.pipeline.run"], "--shards")):
        out = subprocess.run([sys.executable, "-m", *command, "--help"], capture_output=True, text=True, cwd=REPO,
                             timeout=120)
        assert out.returncode == 0 and expected.lower() in out.stdout.lower(), (command, out.stderr)


def test_every_benchmark_script_starts() -> None:
    """The benchmarks are run by hand, not by the suite: each must at least import and answer ``--help`` (one
    imported a name that had moved to another module and would have failed at its first line)."""
    import subprocess
    import sys

    scripts = sorted((REPO / "bench").glob("*.py"))
    assert scripts
    for script in scripts:
        out = subprocess.run([sys.executable, str(script), "--help"], capture_output=True, text=True, cwd=REPO,
                             timeout=120)
        assert out.returncode == 0 and "usage" in out.stdout.lower(), (script.name, out.stderr[-2000:])
