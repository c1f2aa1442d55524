"""Generate the four notebooks in ``notebooks/`` from this one script (reproducible, outputs stripped).

Each notebook: a markdown cell saying what it does; the first code cell, tagged ``parameters``, of typed literals
each with a ``#`` comment (papermill injects its parameters after it); a cell that makes ``utils`` importable and
prints the platform, paths and versions; then a few calls into ``utils.stages``. No functions, no logic here.

Usage: ``python tools/make_notebooks.py`` (write) or ``python tools/make_notebooks.py --check`` (exit 1 when a
notebook differs from what this script generates).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / "notebooks"

REPO_PARAM = (
    "repo_dir", "str", '".."',
    'the clone holding utils/ (Kaggle: "/kaggle/input/<dataset>", Colab: "/content/<repo>")',
)
WORK_PARAM = (
    "work_dir", "str", '""', "where the stages hand over; empty: /kaggle/working/work, /content/work or <repo>/work"
)

SETUP = """import sys

sys.path.insert(0, repo_dir)
from utils import paths, stages

print(paths.describe())"""


@dataclass(frozen=True)
class Spec:
    """One notebook: file name, intro markdown, parameters (name, type, literal, comment), then cells."""

    name: str
    intro: str
    parameters: list[tuple[str, str, str, str]]
    cells: list[tuple[str, str]]  # ("md" | "code", source)


SPECS = [
    Spec(
        "01_prepare_data.ipynb",
        """# 01 · Prepare the data

Loads and validates `train.csv` and `test.csv`, finds the images in the cache (downloading missing ones when the
network allows), takes a balanced sample per entity, splits it by product group into train and validation, and
writes the tables for the next stages into `work_dir/prepared/`. Shows the counts per entity and unit.

With `train_csv = "demo"` (or no data found on this machine) it renders the built-in demo data set instead.
Runs on Kaggle, Colab or a local clone; in batch: `python -m papermill 01_prepare_data.ipynb out.ipynb -p ...`.""",
        [
            REPO_PARAM,
            ("train_csv", "str", '""', 'train CSV; empty: found for this machine, "demo": the built-in demo data'),
            ("test_csv", "str", '""', 'test CSV; empty: beside train.csv (or the demo\'s)'),
            (
                "labels_csv", "str", '""',
                'answers for the test rows, scored in 04; empty: none (the demo brings its own)',
            ),
            ("image_dir", "str", '""', 'image cache; empty: <data>/images when present, else <work_dir>/images'),
            WORK_PARAM,
            ("per_entity", "int", "0", "training rows sampled per entity; 0: all rows"),
            ("balance_units", "bool", "False", "also balance the units within each entity"),
            ("val_fraction", "float", "0.1", "share of product groups held out for validation"),
            ("seed", "int", "0", "random seed for the demo, the sample and the split"),
            ("download", "bool", "True", "download missing images (when the network allows)"),
            ("demo_train", "int", "0", "demo training rows; 0: the demo's default"),
            ("demo_test", "int", "0", "demo test rows; 0: the demo's default"),
        ],
        [
            ("md", "## Load, validate, sample, split and write"),
            (
                "code",
                """prepared = stages.prepare(
    train_csv=train_csv,
    test_csv=test_csv,
    labels_csv=labels_csv,
    image_dir=image_dir,
    work_dir=work_dir,
    per_entity=per_entity,
    balance_units=balance_units,
    val_fraction=val_fraction,
    seed=seed,
    download=download,
    demo_train=demo_train,
    demo_test=demo_test,
)""",
            ),
            ("md", "## Counts per entity, and per entity and unit"),
            ("code", "stages.show_prepared(prepared)"),
        ],
    ),
    Spec(
        "02_finetune_lora.ipynb",
        """# 02 · Fine-tune (or fit the chosen backend)

Fits the chosen backend on the tables from 01: `paligemma` fine-tunes PaliGemma-3B with LoRA (a T4 or better;
the adapter is saved), `ocr` fits the CPU OCR candidate ranker. Loss curves and metrics go to wandb (online when a
`WANDB_API_KEY` secret is set, otherwise offline). The artifact lands in `work_dir/artifacts/<backend>/`;
a rerun reuses a finished fit unless `refit = True`.""",
        [
            REPO_PARAM,
            ("backend", "str", '"ocr"', '"paligemma" (GPU, LoRA fine-tune) or "ocr" (CPU OCR + learned ranker)'),
            WORK_PARAM,
            ("artifact_dir", "str", '""', 'where the adapter/ranker is saved; empty: <work_dir>/artifacts/<backend>'),
            ("image_dir", "str", '""', 'image cache; empty: the one stage 01 used'),
            ("refit", "bool", "False", "fit again even when a finished artifact exists"),
            (
                "settings", "dict", "{}",
                'backend settings by field name, e.g. {"num_train_epochs": 1} (TrainConfig / RankerConfig)',
            ),
        ],
        [
            ("md", "## Fit"),
            (
                "code",
                """artifact = stages.finetune(
    backend=backend,
    work_dir=work_dir,
    artifact_dir=artifact_dir,
    image_dir=image_dir,
    refit=refit,
    **settings,
)
print(f"artifact: {artifact}")""",
            ),
        ],
    ),
    Spec(
        "03_infer_shard.ipynb",
        """# 03 · Predict one shard of the test set

Predicts shard `shard_index` of `num_shards` (every `num_shards`-th test row by index), cleans each answer to
`"<number> <unit>"` or `""`, and appends it to `work_dir/shards/shard_{i}_of_{n}.csv` batch by batch. Resumable:
a rerun skips the rows already written, and a finished shard gets a `.done` marker. Run several copies at once
(`run_all.sh`), or one per Kaggle session (`run_all.sh --prepare-only` writes them).""",
        [
            REPO_PARAM,
            ("shard_index", "int", "0", "which shard this run predicts, 0 .. num_shards - 1"),
            ("num_shards", "int", "4", "how many shards the test set is cut into"),
            ("backend", "str", '"ocr"', '"paligemma" or "ocr"; the one stage 02 fitted'),
            WORK_PARAM,
            ("artifact_dir", "str", '""', 'the adapter/ranker folder; empty: the one stage 02 wrote'),
            ("image_dir", "str", '""', 'image cache; empty: the one stage 01 used'),
            ("shards_dir", "str", '""', 'where shard files go; empty: <work_dir>/shards'),
            ("test_csv", "str", '""', 'test CSV (for a separate session); empty: the test table stage 01 wrote'),
            ("num_threads", "int", "1", "CPU threads for this shard (math libraries, OCR processes)"),
            ("batch_size", "int", "0", "rows per batch; 0: the backend's default"),
            ("download", "bool", "True", "first download this shard's missing images (when the network allows)"),
            ("settings", "dict", "{}", "more backend predict settings by field name (InferConfig / RankerConfig)"),
        ],
        [
            ("md", "## Predict this shard"),
            (
                "code",
                """shard_file = stages.infer_shard(
    shard_index=shard_index,
    num_shards=num_shards,
    backend=backend,
    work_dir=work_dir,
    artifact_dir=artifact_dir,
    image_dir=image_dir,
    shards_dir=shards_dir,
    test_csv=test_csv,
    num_threads=num_threads,
    batch_size=batch_size,
    download=download,
    **settings,
)
print(f"shard file: {shard_file}")""",
            ),
        ],
    ),
    Spec(
        "04_postprocess.ipynb",
        """# 04 · Merge, check, submit, evaluate

Merges the shard files, cleans every answer, checks the submission with `utils.sanity` (it fails loudly when
anything is invalid) and writes `submission.csv` to `out_dir`. Where labels exist (the demo, or `labels_csv`):
F1 overall and per entity, a bar chart, the worst mistakes with their images, `report.md`, and a browser of
image, prediction and truth (ipywidgets when `interactive = True`; a static gallery otherwise, e.g. in batch).""",
        [
            REPO_PARAM,
            ("num_shards", "int", "4", "how many shards stage 03 wrote"),
            WORK_PARAM,
            (
                "out_dir", "str", '""',
                'gets submission.csv and the report; empty: /kaggle/working, /content/out or <repo>/out',
            ),
            ("shards_dir", "str", '""', 'the shard files; empty: <work_dir>/shards'),
            ("test_csv", "str", '""', 'test CSV; empty: the test table stage 01 wrote'),
            (
                "labels_csv", "str", '""',
                'answers to score against; empty: those stage 01 recorded (the demo\'s), if any',
            ),
            ("image_dir", "str", '""', 'image cache for the report; empty: the one stage 01 used'),
            ("n_worst", "int", "12", "how many worst mistakes to show"),
            (
                "interactive", "bool", "True",
                "ipywidgets browser; False: static gallery (papermill, no widget frontend)",
            ),
        ],
        [
            ("md", "## Merge, clean, sanity-check, write submission.csv (and the report where labels exist)"),
            (
                "code",
                """result = stages.postprocess(
    num_shards=num_shards,
    work_dir=work_dir,
    out_dir=out_dir,
    shards_dir=shards_dir,
    test_csv=test_csv,
    labels_csv=labels_csv,
    image_dir=image_dir,
    n_worst=n_worst,
)""",
            ),
            ("md", "## F1 per entity, worst mistakes, and the browser of image, prediction and truth"),
            ("code", "stages.show_postprocessed(result, interactive=interactive)"),
        ],
    ),
]


def parameters_source(parameters: list[tuple[str, str, str, str]]) -> str:
    """The parameters cell: one typed literal with a comment per line."""
    return "\n".join(f"{name}: {kind} = {value}  # {comment}" for name, kind, value, comment in parameters)


def build(spec: Spec) -> nbformat.NotebookNode:
    """The notebook for ``spec``, with deterministic cell ids and no outputs."""
    stem = spec.name.split("_", 1)[0]
    cells = [new_markdown_cell(spec.intro)]
    cells.append(new_code_cell(parameters_source(spec.parameters), metadata={"tags": ["parameters"]}))
    cells.append(new_markdown_cell("## Platform, paths and versions"))
    cells.append(new_code_cell(SETUP))
    for kind, source in spec.cells:
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
