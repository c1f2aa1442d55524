"""Generate the four notebooks in ``notebooks/`` from this one script (reproducible, outputs stripped).

Each notebook: a markdown cell saying what it does; the first code cell, tagged ``parameters``, of typed literals
each with a ``#`` comment (papermill injects its parameters after it), made from its stage's dataclass in
``utils.pipeline.params`` (the same source as ``run_all.sh``'s options); a cell that makes ``utils`` importable and prints the
platform, paths and versions; then a few calls into ``utils.pipeline.stages``, the stage call passing every parameter by
name. No functions, no logic here.

Usage: ``python tools/make_notebooks.py`` (write) or ``python tools/make_notebooks.py --check`` (exit 1 when a
notebook differs from what this script generates).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, fields
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"
sys.path.insert(0, str(REPO))

from utils.pipeline.params import (  # noqa: E402
    FitParams,
    InferParams,
    PostprocessParams,
    PrepareParams,
    default_of,
    literal,
    type_name,
)

REPO_PARAM = (
    "repo_dir", "str", '".."',
    'the clone holding utils/ (Kaggle: "/kaggle/input/<dataset>", Colab: "/content/<repo>")',
)
INSTALL_PARAM = (
    "install_requirements", "bool", "False",
    "first install the pinned requirements (a fresh session; run_all.sh --prepare-only sets it)",
)

SETUP = """import sys

sys.path.insert(0, repo_dir)
from utils.env import install, paths

install.requirements(repo_dir, install_requirements)
from utils.pipeline import show, stages

print(paths.describe())"""


@dataclass(frozen=True)
class Spec:
    """One notebook: file name, intro markdown, its stage's parameter dataclass, then cells.

    A ``{call}`` in a code cell is replaced by the stage function's call with every parameter passed by name."""

    name: str
    intro: str
    params: type
    cells: list[tuple[str, str]]  # ("md" | "code", source)
    settings_stage: str | None = None  # "fit" / "infer": a cell describing every backend's ``settings`` follows


def call(function: str, params: type, indent: str = "    ") -> str:
    """``stages.prepare(\n    train_csv=train_csv,\n ...)``: every field of ``params`` passed by name."""
    names = [f.name for f in fields(params)]
    return f"{function}(\n" + "".join(f"{indent}{n}={n},\n" for n in names) + ")"


SPECS = [
    Spec(
        "01_prepare_data.ipynb",
        """# 01 · Prepare the data

Loads and validates `train.csv` and `test.csv`, finds the images in the cache (downloading missing ones when the
network allows), takes a balanced sample per entity, splits it by product group into train and validation, and
writes the tables for the next stages into `work_dir/prepared/`. Shows the counts per entity and unit.

The sample defaults to the reference's scale: `per_entity = 1700` rows per entity, about 13,600 in all, which a
Kaggle T4 session can fine-tune on; set `per_entity = 0` for every row (far more than one session can train on), or
another number. With `train_csv = "demo"` (or no data found on this machine) it renders the built-in demo data set
instead. Runs on Kaggle, Colab or a local clone; in batch: `python -m papermill 01_prepare_data.ipynb out.ipynb -p ...`.""",
        PrepareParams,
        [
            ("md", "## Load, validate, sample, split and write"),
            ("code", "prepared = {call}"),
            ("md", "## Counts per entity and unit, the split by product group, and a few training images"),
            ("code", "show.prepared(prepared)"),
        ],
    ),
    Spec(
        "02_finetune_lora.ipynb",
        """# 02 · Fine-tune (or fit the chosen backend)

Fits the chosen backend on the tables from 01: `paligemma` fine-tunes PaliGemma-3B with LoRA (a T4 or better;
the adapter is saved), `ocr` fits the CPU OCR candidate ranker. Loss curves and metrics go to wandb (online when a
`WANDB_API_KEY` secret is set, otherwise offline). The artifact lands in `work_dir/artifacts/<backend>/`;
a rerun reuses a finished fit unless `refit = True`, and continues one its time budget stopped.

PaliGemma on Kaggle/Colab: the base model is gated; add an `HF_TOKEN` secret of an account that accepted the licence
on its model page (or add the model to the notebook as a Kaggle model input). Training plans its steps to fit
`time_budget_hours` (default 9 of a 12-hour session), checkpoints every `save_steps`, and resumes after a session
dies (`resume_from` takes a checkpoint folder kept from an earlier session).""",
        FitParams,
        [
            ("md", "## Fit (the progress bar shows the steps, the loss and the ETA)"),
            ("code", "fitted = {call}"),
            ("md", "## Settings, trainable parameters, loss curve and validation F1"),
            ("code", "show.fitted(fitted)"),
        ],
        "fit",
    ),
    Spec(
        "03_infer_shard.ipynb",
        """# 03 · Predict one shard of the test set

Predicts shard `shard_index` of `num_shards` (every `num_shards`-th test row by index), cleans each answer to
`"<number> <unit>"` or `""`, and appends it to `work_dir/shards/shard_{i}_of_{n}.csv` batch by batch. Resumable:
a rerun skips the rows already written while the model, rows, images, cleaning rules and settings are unchanged
(otherwise the old answers are set aside and the shard is predicted afresh), and a finished shard gets a `.done`
marker. Run several copies at once (`run_all.sh`), or one per Kaggle session (`run_all.sh --prepare-only`).
With `executor = "ray"` it predicts every shard at once on a Ray cluster (`ray_address`; `run_all.sh --executor
ray`), into the same shard files.""",
        InferParams,
        [
            ("md", "## Predict this shard"),
            ("code", "shard = {call}"),
            ("md", "## A few predictions with their images"),
            ("code", "show.shard(shard)"),
        ],
        "infer",
    ),
    Spec(
        "04_postprocess.ipynb",
        """# 04 · Merge, check, submit, evaluate

Merges the shard files (every test index exactly once), cleans every raw answer, checks the submission with
`utils.core.sanity` (it fails loudly when anything is invalid) and writes `submission.csv` to `out_dir` in one rename.
Where labels exist (the demo, or `labels_csv`): F1 overall and per entity, a bar chart, the worst mistakes with
their images, `report.md`, and a browser of image, prediction and truth (ipywidgets when `interactive = True`; a
static gallery otherwise, e.g. in batch).""",
        PostprocessParams,
        [
            ("md", "## Merge, clean, sanity-check, write submission.csv (and the report where labels exist)"),
            ("code", "result = {call}"),
            ("md", "## F1 per entity, worst mistakes, and the browser of image, prediction and truth"),
            ("code", "show.postprocessed(result, interactive=interactive)"),
        ],
    ),
]

FUNCTION = {PrepareParams: "stages.prepare", FitParams: "stages.finetune", InferParams: "stages.infer_shard",
            PostprocessParams: "stages.postprocess"}


def parameters(params: type) -> list[tuple[str, str, str, str]]:
    """(name, type, literal, comment) for ``repo_dir``, ``install_requirements`` and every field of the stage's
    dataclass."""
    rows = [REPO_PARAM, INSTALL_PARAM]
    for f in fields(params):
        rows.append((f.name, type_name(params, f.name), literal(default_of(f)), f.metadata["help"]))
    return rows


def parameters_source(parameters: list[tuple[str, str, str, str]]) -> str:
    """The parameters cell: one typed literal with a comment per line."""
    return "\n".join(f"{name}: {kind} = {value}  # {comment}" for name, kind, value, comment in parameters)


def settings_markdown(stage: str) -> str:
    """What ``settings`` takes, per registered backend, for ``stage``: one table of names, types, defaults and help
    (from the backend's own settings dataclasses, ``utils.models.backend.settings_defined``)."""
    import json

    from utils.models.backend import BACKENDS, backend_class, settings_defined

    flag = "--fit-settings" if stage == "fit" else "--infer-settings"
    parts = [f"## What `settings` takes\n\nEach backend defines its {stage} settings once (a dataclass per stage); a "
             f"wrong name or type stops the stage before any work, naming the valid ones. The same JSON is "
             f"`run_all.sh {flag}`; `bash run_all.sh --help-backend NAME` prints the same list."]
    for name in sorted(BACKENDS):  # the built-in ones (a plug-in is described by run_all.sh --help-backend)
        defined = settings_defined(name, stage)
        doc = (backend_class(name).__doc__ or "").strip().splitlines()[0]
        if defined is None:
            parts.append(f"**{name}**: {doc} Declares no settings.")
            continue
        rows = ["| name | type | default | what it does |", "| --- | --- | --- | --- |"]
        for s in defined.values():
            default = json.dumps(list(s.default) if isinstance(s.default, tuple) else s.default, default=str)
            cells = [f"`{s.name}`", s.type, f"`{default}`", s.help]
            rows.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
        parts.append(f"<details><summary><b>{name}</b>: {doc}</summary>\n\n" + "\n".join(rows) + "\n\n</details>")
    return "\n\n".join(parts)


def build(spec: Spec) -> nbformat.NotebookNode:
    """The notebook for ``spec``, with deterministic cell ids and no outputs."""
    stem = spec.name.split("_", 1)[0]
    cells = [new_markdown_cell(spec.intro)]
    cells.append(new_code_cell(parameters_source(parameters(spec.params)), metadata={"tags": ["parameters"]}))
    if spec.settings_stage:
        cells.append(new_markdown_cell(settings_markdown(spec.settings_stage)))
    cells.append(new_markdown_cell("## Platform, paths and versions"))
    cells.append(new_code_cell(SETUP))
    for kind, source in spec.cells:
        if kind == "code":
            source = source.format(call=call(FUNCTION[spec.params], spec.params))
        cells.append(new_markdown_cell(source) if kind == "md" else new_code_cell(source))
    for number, cell in enumerate(cells):
        cell["id"] = f"nb{stem}-{number:02d}"
    notebook = new_notebook(
        cells=cells,
        metadata={
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
        },
    )
    nbformat.validate(notebook)
    return notebook


def render(spec: Spec) -> str:
    """The notebook file's text."""
    return nbformat.writes(build(spec)) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Write the notebooks, or with ``--check`` report the ones that differ."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a notebook is stale")
    parser.add_argument("--out", type=Path, default=NOTEBOOK_DIR, help="folder for the notebooks")
    args = parser.parse_args(argv)
    stale = []
    args.out.mkdir(parents=True, exist_ok=True)
    for spec in SPECS:
        path = args.out / spec.name
        text = render(spec)
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(path)
        else:
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path}")
    for path in stale:
        print(f"stale: {path} (run python tools/make_notebooks.py)", file=sys.stderr)
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
