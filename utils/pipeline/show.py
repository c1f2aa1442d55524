"""What the notebooks show: each stage's results as tables and pictures a person looks at (no logic the stages
need). Every function displays through IPython (tables, inline figures) and returns nothing, except ``postprocessed``,
which returns the prediction browser.

- ``prepared`` (01): rows per entity in train/val/test, rows per entity and unit, the split by product group, and a
  grid of training images with their labels;
- ``fitted`` (02): the settings, the trainable parameter count, the loss curve, the validation F1;
- ``shard`` (03): a few predictions with their images;
- ``postprocessed`` (04): the F1 table, the F1 chart, the worst mistakes, and the browser.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import pandas as pd
from matplotlib.figure import Figure

from utils.pipeline import gallery, outcomes
from utils.pipeline.stages import Fitted, Postprocessed, Prepared, ShardDone


def _display(*objects: Any) -> None:
    """Display tables as tables and figures as PNG images (whatever matplotlib backend the kernel has: papermill
    runs with Agg, where a bare Figure would only print its repr)."""
    import io

    from IPython.display import Image, display

    for obj in objects:
        if isinstance(obj, Figure):
            buffer = io.BytesIO()
            obj.savefig(buffer, format="png")
            obj = Image(data=buffer.getvalue(), format="png")
        display(obj)


def _never_fails(show: Callable[..., Any]) -> Callable[..., Any]:
    """A display never fails its stage: whatever it raises (a hostile image, a plotting error) is printed as one
    line, after what the stage wrote is already safe on disk."""

    @functools.wraps(show)
    def shown(*args: Any, **kwargs: Any) -> Any:
        try:
            return show(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - a display is never worth a failed stage
            print(f"(could not show everything: {type(exc).__name__}: {exc})")
            return None

    return shown


def sample_rows(rows: pd.DataFrame, n: int, seed: int = 0) -> pd.DataFrame:
    """Up to ``n`` rows spread over the entities (about the same number of each), drawn with ``seed``."""
    if rows.empty or n <= 0:
        return rows.head(0)
    per = max(1, math.ceil(n / rows["entity_name"].nunique()))
    picked = pd.concat([g.sample(min(per, len(g)), random_state=seed) for _, g in rows.groupby("entity_name")])
    return picked.head(n).reset_index(drop=True)


def split_table(train: pd.DataFrame, val: pd.DataFrame) -> pd.DataFrame:
    """Rows and product groups on each side of the split (no group is on both)."""
    return pd.DataFrame({
        "rows": [len(train), len(val)],
        "product groups": [train["group_id"].nunique(), val["group_id"].nunique()],
        "share of rows": [len(train) / max(len(train) + len(val), 1), len(val) / max(len(train) + len(val), 1)],
    }, index=["train", "validation"]).round(3)


@_never_fails
def prepared(result: Prepared, n_images: int = 12) -> None:
    """Stage 01: counts, the split and a grid of training images with their labels."""
    print(result.summary())
    if result.images is not None:
        print(result.images.line("the sample and the test set"))
    if result.download is not None:
        print(f"downloads: {result.download}")
    _display(result.entity_counts, result.counts)
    train, val = result.work.read_table("train"), result.work.read_table("val")
    _display(split_table(train, val))
    rows = sample_rows(train, n_images)
    captions = [f"{r.entity_name}\n{r.entity_value or '(empty)'}" for r in rows.itertuples(index=False)]
    _display(gallery.image_grid(rows, result.manifest["image_dir"], captions, columns=4, max_side=240))


def loss_figure(history: list[dict[str, Any]]) -> Figure | None:
    """The training loss per step (and the validation F1 where it was measured); None without a history."""
    losses = [(h["step"], h["loss"]) for h in history if "loss" in h and "step" in h]
    if not losses:
        return None
    fig = Figure(figsize=(8, 3.2), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.plot([s for s, _ in losses], [v for _, v in losses], marker=".", label="training loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    handles = ax.get_lines()
    f1 = [(h["step"], h["eval_f1"]) for h in history if "eval_f1" in h and "step" in h]
    if f1:
        right = ax.twinx()
        handles += right.plot([s for s, _ in f1], [v for _, v in f1], "o--", color="tab:green",
                              label="validation F1 (training model)")
        right.set_ylabel("validation F1")
        right.set_ylim(0, 1)
    ax.legend(handles=handles, loc="upper right")
    ax.set_title("fine-tune")
    return fig


@_never_fails
def fitted(result: Fitted) -> None:
    """Stage 02: what was fitted with which settings, how many parameters trained, the loss curve, the F1."""
    print(result.line())
    summary = result.summary
    flat = {**{f"setting {k}": v for k, v in result.settings.items()}}
    for group, values in summary.get("settings", {}).items():
        flat.update({f"{group}.{k}": v for k, v in values.items()} if isinstance(values, dict) else {group: values})
    if flat:
        _display(pd.DataFrame({"value": [str(v) for v in flat.values()]}, index=list(flat)))
    if "trainable_params" in summary:
        print(f"trainable parameters: {summary['trainable_params']:,}")
    if "rows" in summary:
        print("rows: " + ", ".join(f"{k} {v}" for k, v in summary["rows"].items()))
    figure = loss_figure(summary.get("history", []))
    if figure is not None:
        _display(figure)
    metrics = summary.get("metrics", {})
    if "val_f1" in metrics:
        print(f"validation F1: {metrics['val_f1']:.4f}")
    shown = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and k != "val_f1"}
    if shown:
        _display(pd.DataFrame({"value": list(shown.values())}, index=list(shown)).round(4))


@_never_fails
def shard(result: ShardDone, n: int = 8) -> None:
    """Stage 03: the shard's count of answers, and a few predictions with their images."""
    print(result.line())
    rows = result.rows.head(n)
    _display(rows[[c for c in ("index", "entity_name", "prediction", "raw") if c in rows.columns]])
    captions = [f"#{r.index} {r.entity_name}\n-> {r.prediction or '(empty)'}" for r in rows.itertuples(index=False)]
    _display(gallery.image_grid(rows, result.image_dir, captions, columns=4, max_side=240,
                               empty_text="this shard has no rows"))


@_never_fails
def postprocessed(result: Postprocessed, interactive: bool = False) -> Any:
    """Stage 04: F1 table, bar chart, worst mistakes, and the browser (returned)."""
    from IPython.display import Image

    print(result.summary())
    for note in result.notes:
        print(note)
    if result.report is None:
        return None
    _display(result.report.table)
    _display(Image(filename=str(result.files.f1_png)))
    if result.files.mistakes_png is not None:
        _display(Image(filename=str(result.files.mistakes_png)))
    print(f"report: {result.files.report_md}")
    rows = outcomes.normalize_rows(result.report.rows, result.test)
    return gallery.browser(rows, result.image_dir, interactive=interactive)
