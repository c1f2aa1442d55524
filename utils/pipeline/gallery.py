"""Pictures of rows: an image grid with captions, the worst mistakes as a PNG, a static HTML gallery and an
ipywidgets browser of image, prediction and truth (the gallery where no widget frontend runs: papermill, CI).

Rows are the per-row frame of ``utils.pipeline.outcomes.normalize_rows``. Plots use matplotlib's object API
(``matplotlib.figure.Figure``, the Agg canvas): no display is needed, so they work in batch.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

from utils.data.images import cached_image, load_image
from utils.pipeline.outcomes import mistake_kind, normalize_rows


def _image_file(image_dir: Path | None, link: Any) -> Path | None:
    """The cached image for ``link``, or None (no image folder, or a link naming no usable file)."""
    return None if image_dir is None else cached_image(image_dir, link)


def _thumbnail(image_dir: Path | None, link: Any, max_side: int) -> Image.Image | None:
    """The row's image at most ``max_side`` pixels a side, or None: a display never fails on a hostile file
    (``load_image``: missing, not a regular file, undecodable, a decompression bomb)."""
    path = _image_file(image_dir, link)
    return None if path is None else load_image(path, max_side=max_side)


def image_grid(rows: pd.DataFrame, image_dir: str | Path | None, captions: list[str], columns: int = 4,
               max_side: int = 320, empty_text: str = "nothing to show") -> Figure:
    """A figure with the image of each row (``image_link``) and its caption, ``columns`` per line."""
    count = max(len(rows), 1)
    columns = max(1, min(columns, count))
    lines = math.ceil(count / columns)
    fig = Figure(figsize=(3.4 * columns, 4.0 * lines), dpi=100, layout="constrained")
    folder = Path(image_dir) if image_dir else None
    if rows.empty:
        ax = fig.add_subplot()
        ax.text(0.5, 0.5, empty_text, ha="center", va="center", fontsize=16)
        ax.axis("off")
    for number, (link, caption) in enumerate(zip(rows.get("image_link", [None] * len(rows)), captions)):
        ax = fig.add_subplot(lines, columns, number + 1)
        image = _thumbnail(folder, link, max_side)
        if image is None:
            ax.text(0.5, 0.5, "image not available", ha="center", va="center")
        else:
            ax.imshow(image)
        ax.axis("off")
        ax.set_title(caption, fontsize=8, loc="left")
    return fig


def plot_mistakes(
    mistakes: pd.DataFrame, image_dir: str | Path | None, path: str | Path, columns: int = 4, max_side: int = 320
) -> Path:
    """A grid of the mistakes' images, each titled with entity, prediction and truth."""
    captions = [f"#{row.index} {row.entity_name}\npred: {row.prediction or '(empty)'}\n"
                f"true: {row.entity_value or '(empty)'}" for row in mistakes.itertuples(index=False)]
    fig = image_grid(mistakes, image_dir, captions, columns, max_side, empty_text="no mistakes")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


def _data_uri(image: Image.Image | None) -> str:
    if image is None:
        return ""
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def gallery_html(rows: pd.DataFrame, image_dir: str | Path | None, max_rows: int = 60, max_side: int = 240) -> str:
    """A self-contained HTML gallery (thumbnails inline) of image, entity, prediction and truth; mistakes first."""
    frame = normalize_rows(rows).sort_values(["correct", "index"], kind="stable").head(max_rows)
    folder = Path(image_dir) if image_dir else None
    cards = []
    for row in frame.itertuples(index=False):
        uri = _data_uri(_thumbnail(folder, getattr(row, "image_link", None), max_side))
        picture = f'<img src="{uri}" style="max-width:{max_side}px">' if uri else "<i>image not available</i>"
        colour = "#2ca02c" if row.correct else "#d62728"
        cards.append(
            f'<div style="display:inline-block;vertical-align:top;margin:6px;padding:6px;width:{max_side + 10}px;'
            f'border:2px solid {colour}">{picture}<br><b>#{row.index} {html.escape(str(row.entity_name))}</b><br>'
            f"pred: {html.escape(row.prediction) or '<i>(empty)</i>'}<br>"
            f"true: {html.escape(row.entity_value) or '<i>(empty)</i>'}</div>"
        )
    shown = f"{len(frame)} of {len(rows)} rows, mistakes first"
    return f"<div><p>{shown}</p>{''.join(cards)}</div>"


def write_gallery(rows: pd.DataFrame, image_dir: str | Path | None, path: str | Path, max_rows: int = 60) -> Path:
    """Write ``gallery_html`` to ``path`` as a standalone page."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    body = gallery_html(rows, image_dir, max_rows=max_rows)
    out.write_text(f"<!doctype html><meta charset='utf-8'><title>predictions</title>{body}\n", encoding="utf-8")
    return out


def browser(
    rows: pd.DataFrame, image_dir: str | Path | None, interactive: bool = True, max_side: int = 480
) -> Any:
    """An ipywidgets browser (filter, slider, image, prediction, truth) when ``interactive``; else static HTML.

    Use ``interactive=False`` where no widget frontend runs (papermill, CI): the result is an
    ``IPython.display.HTML`` gallery that renders in the saved notebook.
    """
    frame = normalize_rows(rows).sort_values("index").reset_index(drop=True)
    folder = Path(image_dir) if image_dir else None
    if not interactive:
        from IPython.display import HTML

        return HTML(gallery_html(frame, folder))
    import ipywidgets as widgets

    show = widgets.Dropdown(options=["all", "mistakes", "correct"], value="all", description="show")
    slider = widgets.IntSlider(min=0, max=max(len(frame) - 1, 0), value=0, description="row")
    picture = widgets.Image(format="jpeg", layout=widgets.Layout(max_width=f"{max_side}px"))
    caption = widgets.HTML()

    def selected() -> pd.DataFrame:
        if show.value == "mistakes":
            return frame[~frame["correct"]]
        if show.value == "correct":
            return frame[frame["correct"]]
        return frame

    def render(_: Any = None) -> None:
        subset = selected()
        slider.max = max(len(subset) - 1, 0)
        if subset.empty:
            picture.value, caption.value = b"", "<i>no rows</i>"
            return
        row = subset.iloc[min(slider.value, len(subset) - 1)]
        image = _thumbnail(folder, row.get("image_link"), max_side)
        buffer = io.BytesIO()
        if image is not None:
            image.save(buffer, format="JPEG", quality=85)
        picture.value = buffer.getvalue()
        verdict = "correct" if row["correct"] else mistake_kind(row["prediction"], row["entity_value"])
        caption.value = (
            f"<b>#{row['index']} {html.escape(str(row['entity_name']))}</b> ({verdict})<br>"
            f"prediction: {html.escape(row['prediction']) or '<i>(empty)</i>'}<br>"
            f"truth: {html.escape(row['entity_value']) or '<i>(empty)</i>'}"
        )

    def restart(_: Any = None) -> None:
        slider.value = 0
        render()

    show.observe(restart, names="value")
    slider.observe(render, names="value")
    render()
    return widgets.VBox([widgets.HBox([show, slider]), picture, caption])
