"""The evaluation report: F1 per entity as a bar chart, the worst mistakes with their images, a browser.

Input is a ``utils.core.metrics.F1Report`` (``.table`` one row per entity plus ``ALL``, ``.f1``, ``.rows`` the joined
per-row frame with ``correct``) and the test table (for ``image_link``). Plots use matplotlib's object API
(``matplotlib.figure.Figure``, the Agg canvas): no display is needed, so they work in batch (papermill, CI).

- ``plot_f1(table, path)`` -> PNG bar chart.
- ``worst_mistakes(rows, n)`` -> the ``n`` worst wrong rows (wrong value, then missed, then false alarm).
- ``plot_mistakes(mistakes, image_dir, path)`` -> PNG grid of their images with prediction and truth.
- ``write_gallery(rows, image_dir, path)`` -> a static HTML gallery (thumbnails inline): the browser's fallback.
- ``browser(rows, image_dir, interactive)`` -> an ipywidgets browser of image / prediction / truth, or the static
  gallery as HTML where no widget frontend runs (papermill, plain Python).
- ``unit_confusion(rows)`` -> per entity, how often each labelled unit was answered with each unit (or nothing);
  ``plot_unit_confusion(rows, path)`` draws it as one small matrix per entity.
- ``write_report(out_dir, report, test, image_dir)`` -> ``report.md`` + the PNGs, the gallery and the F1 table.
"""

from __future__ import annotations

import base64
import html
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
from matplotlib.figure import Figure
from PIL import Image

ROW_COLUMNS = ("index", "entity_name", "entity_value", "prediction", "correct")
_TRUTH_ALIASES = ("entity_value", "truth", "label", "entity_value_true")
_PRED_ALIASES = ("prediction", "pred", "predicted", "entity_value_pred")
_NUMBER = re.compile(r"^\s*([-+]?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)\s+(\S.*?)\s*$")
MISTAKE_KINDS = ("wrong value", "missed", "false alarm")


class ReportLike(Protocol):
    """What ``write_report`` needs from ``utils.core.metrics.F1Report``."""

    table: pd.DataFrame
    f1: float
    rows: pd.DataFrame


@dataclass(frozen=True)
class ReportFiles:
    """The files ``write_report`` wrote."""

    report_md: Path
    f1_png: Path
    mistakes_png: Path | None
    gallery_html: Path
    table_csv: Path
    units_png: Path | None = None  # the unit confusion per entity (None when no row has a labelled unit)


def _pick(frame: pd.DataFrame, aliases: tuple[str, ...], what: str) -> str:
    for name in aliases:
        if name in frame.columns:
            return name
    raise ValueError(f"rows need a {what} column (one of {aliases}); got columns {list(frame.columns)}")


def normalize_rows(rows: pd.DataFrame, test: pd.DataFrame | None = None) -> pd.DataFrame:
    """The per-row frame with ``index, entity_name, entity_value, prediction, correct`` (+ ``image_link``).

    ``image_link`` comes from ``rows`` or, joined on ``index``, from ``test``. Empty cells are ``""``.
    """
    frame = rows.reset_index(drop="index" in rows.columns).copy()
    if "index" not in frame.columns:
        raise ValueError(f"rows need an 'index' column; got columns {list(rows.columns)}")
    truth, pred = _pick(frame, _TRUTH_ALIASES, "truth"), _pick(frame, _PRED_ALIASES, "prediction")
    frame = frame.rename(columns={truth: "entity_value", pred: "prediction"})
    for column in ("entity_value", "prediction"):
        frame[column] = frame[column].fillna("").astype(str).str.strip()
    if "entity_name" not in frame.columns:
        if test is None or "entity_name" not in test.columns:
            raise ValueError("rows need 'entity_name' (or pass the test table that has it)")
        frame = frame.merge(test[["index", "entity_name"]], on="index", how="left")
    if "correct" not in frame.columns:
        frame["correct"] = frame["prediction"] == frame["entity_value"]
    frame["correct"] = frame["correct"].astype(bool)
    if "image_link" not in frame.columns and test is not None and "image_link" in test.columns:
        frame = frame.merge(test[["index", "image_link"]].drop_duplicates("index"), on="index", how="left")
    return frame


def _entity_column(table: pd.DataFrame) -> pd.Series:
    for name in ("entity_name", "entity"):
        if name in table.columns:
            return table[name].astype(str)
    return pd.Series(table.index.astype(str), index=table.index)


def f1_by_entity(table: pd.DataFrame) -> pd.DataFrame:
    """``entity, n, precision, recall, f1`` per entity (``ALL`` last), from the metrics table."""
    if "f1" not in table.columns:
        raise ValueError(f"the F1 table needs an 'f1' column; got {list(table.columns)}")
    frame = pd.DataFrame({"entity": _entity_column(table).to_numpy()})
    for column in ("n", "precision", "recall", "f1"):
        frame[column] = table[column].to_numpy() if column in table.columns else math.nan
    overall = frame[frame["entity"] == "ALL"]
    per_entity = frame[frame["entity"] != "ALL"].sort_values("f1", ascending=False)
    return pd.concat([per_entity, overall], ignore_index=True)


def plot_f1(table: pd.DataFrame, path: str | Path, title: str = "F1 per entity") -> Path:
    """A horizontal bar chart of F1 (with precision and recall) per entity, overall F1 as a line."""
    frame = f1_by_entity(table)
    per_entity = frame[frame["entity"] != "ALL"].iloc[::-1]
    fig = Figure(figsize=(9, 0.6 * max(len(per_entity), 2) + 2.0), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    y = range(len(per_entity))
    height = 0.27
    ax.barh([v + height for v in y], per_entity["f1"].fillna(0.0), height, label="F1", color="#1f77b4")
    ax.barh(list(y), per_entity["precision"].fillna(0.0), height, label="precision", color="#aec7e8")
    ax.barh([v - height for v in y], per_entity["recall"].fillna(0.0), height, label="recall", color="#ffbb78")
    labels = [f"{e} (n={int(n)})" if pd.notna(n) else e for e, n in zip(per_entity["entity"], per_entity["n"])]
    ax.set_yticks(list(y), labels)
    overall = frame.loc[frame["entity"] == "ALL", "f1"]
    if len(overall) and pd.notna(overall.iloc[0]):
        ax.axvline(float(overall.iloc[0]), color="black", linestyle="--", label=f"overall F1 {overall.iloc[0]:.3f}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("score")
    ax.set_title(title)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncols=4, fontsize="small", frameon=False)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out


NO_UNIT = "(empty)"


def _unit_of(text: Any) -> str:
    """The unit of an answer or label ("" when it has none: empty, or not "<number> <unit>"); a range label
    ("[1.0, 2.0] volt") names its unit last."""
    text = "" if text is None or (isinstance(text, float) and math.isnan(text)) else str(text).strip()
    if not text:
        return ""
    parsed = _number_unit(text)
    if parsed is not None:
        return parsed[1]
    tail = text.rsplit("]", 1)
    return tail[1].strip() if len(tail) == 2 and text.startswith("[") else ""


def unit_confusion(rows: pd.DataFrame) -> pd.DataFrame:
    """Per entity, labelled unit x answered unit: counts of the rows whose label has a unit (columns
    ``entity_name, label_unit, answer_unit, n``; ``answer_unit`` is ``NO_UNIT`` for an empty answer)."""
    frame = normalize_rows(rows)
    label = frame["entity_value"].map(_unit_of)
    answer = frame["prediction"].map(_unit_of).replace("", NO_UNIT)
    out = pd.DataFrame({"entity_name": frame["entity_name"], "label_unit": label, "answer_unit": answer})
    out = out[out["label_unit"] != ""]
    return (out.groupby(["entity_name", "label_unit", "answer_unit"]).size().rename("n").reset_index()
            .sort_values(["entity_name", "label_unit", "answer_unit"], ignore_index=True))


def plot_unit_confusion(rows: pd.DataFrame, path: str | Path, title: str = "Answered unit vs labelled unit"
                        ) -> Path | None:
    """One small matrix per entity: rows are labelled units, columns the answered units (last: no answer), each
    cell the share of the labelled unit's rows, with its count. None (no file) when no row has a labelled unit."""
    conf = unit_confusion(rows)
    if conf.empty:
        return None
    entities = sorted(conf["entity_name"].unique())
    cols = min(4, len(entities))
    nrows = math.ceil(len(entities) / cols)
    fig = Figure(figsize=(3.6 * cols, 3.2 * nrows))
    for k, entity in enumerate(entities):
        ax = fig.add_subplot(nrows, cols, k + 1)
        sub = conf[conf["entity_name"] == entity]
        labels = sorted(set(sub["label_unit"]) | set(sub["answer_unit"]) - {NO_UNIT})  # square: the diagonal is
        answers = labels + ([NO_UNIT] if (sub["answer_unit"] == NO_UNIT).any() else [])  # the right unit
        table = sub.pivot_table(index="label_unit", columns="answer_unit", values="n", aggfunc="sum", fill_value=0)
        table = table.reindex(index=labels, columns=answers, fill_value=0)
        share = table.div(table.sum(axis=1).clip(lower=1), axis=0)
        ax.imshow(share.to_numpy(), cmap="Blues", vmin=0, vmax=1, aspect="auto")
        for i in range(len(labels)):
            for j in range(len(answers)):
                n = int(table.iat[i, j])
                if n:
                    ax.text(j, i, str(n), ha="center", va="center", fontsize=8,
                            color="white" if share.iat[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(answers)), [_short_unit(u) for u in answers], rotation=45, ha="right", fontsize=7)
        ax.set_yticks(range(len(labels)), [_short_unit(u) for u in labels], fontsize=7)
        ax.set_title(entity, fontsize=9)
        ax.set_xlabel("answered", fontsize=7)
        ax.set_ylabel("labelled", fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    return out


_SHORT_UNITS = {"centimetre": "cm", "millimetre": "mm", "metre": "m", "inch": "in", "foot": "ft", "yard": "yd",
                "gram": "g", "kilogram": "kg", "milligram": "mg", "microgram": "µg", "ounce": "oz", "pound": "lb",
                "ton": "t", "volt": "V", "kilovolt": "kV", "millivolt": "mV", "watt": "W", "kilowatt": "kW",
                "millilitre": "ml", "litre": "l", "fluid ounce": "fl oz", "gallon": "gal", "cup": "cup"}


def _short_unit(unit: str) -> str:
    return _SHORT_UNITS.get(unit, unit)


def _number_unit(text: str) -> tuple[float, str] | None:
    match = _NUMBER.match(text)
    return (float(match.group(1)), match.group(2)) if match else None


def mistake_kind(prediction: str, truth: str) -> str:
    """``"wrong value"`` (both given, differ), ``"missed"`` (truth only) or ``"false alarm"`` (prediction only)."""
    if prediction and truth:
        return "wrong value"
    return "missed" if truth else "false alarm"


def _severity(prediction: str, truth: str) -> float:
    """How far off a wrong value is: relative numeric error, infinite for another unit or unreadable text."""
    got, want = _number_unit(prediction), _number_unit(truth)
    if not got or not want or got[1] != want[1]:
        return math.inf
    return abs(got[0] - want[0]) / max(abs(want[0]), 1e-9)


def worst_mistakes(rows: pd.DataFrame, n: int = 12) -> pd.DataFrame:
    """The ``n`` worst wrong rows: wrong values first (farthest off first), then misses, then false alarms."""
    frame = normalize_rows(rows)
    wrong = frame[~frame["correct"]].copy()
    wrong["kind"] = [mistake_kind(p, t) for p, t in zip(wrong["prediction"], wrong["entity_value"])]
    wrong["severity"] = [_severity(p, t) for p, t in zip(wrong["prediction"], wrong["entity_value"])]
    wrong["_rank"] = wrong["kind"].map({kind: rank for rank, kind in enumerate(MISTAKE_KINDS)})
    wrong = wrong.sort_values(["_rank", "severity", "index"], ascending=[True, False, True], kind="stable")
    return wrong.drop(columns="_rank").head(max(0, n)).reset_index(drop=True)


def _image_file(image_dir: Path | None, link: Any) -> Path | None:
    """The cached image for ``link``, or None (no image folder, or a link naming no usable file)."""
    from utils.data.images import cached_image

    return None if image_dir is None else cached_image(image_dir, link)


def _thumbnail(image_dir: Path | None, link: Any, max_side: int) -> Image.Image | None:
    path = _image_file(image_dir, link)
    if path is None or not path.is_file():
        return None
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((max_side, max_side))
            return image
    except OSError:
        return None


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


def write_report(
    out_dir: str | Path,
    report: ReportLike,
    test: pd.DataFrame | None = None,
    image_dir: str | Path | None = None,
    n_worst: int = 12,
    title: str = "Evaluation report",
) -> ReportFiles:
    """Write ``report.md``, ``f1_by_entity.png``, ``worst_mistakes.png``, ``gallery.html`` and ``f1_table.csv``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = normalize_rows(report.rows, test)
    table = f1_by_entity(report.table)
    table_csv = out / "f1_table.csv"
    report.table.to_csv(table_csv, index="entity_name" not in report.table.columns)
    f1_png = plot_f1(report.table, out / "f1_by_entity.png")
    mistakes = worst_mistakes(rows, n_worst)
    mistakes_png = plot_mistakes(mistakes, image_dir, out / "worst_mistakes.png") if n_worst > 0 else None
    gallery = write_gallery(rows, image_dir, out / "gallery.html")
    units_png = plot_unit_confusion(rows, out / "unit_confusion.png")
    lines = [
        f"# {title}",
        "",
        f"Overall F1: **{float(report.f1):.4f}** on {len(rows)} rows ({int(rows['correct'].sum())} correct).",
        "",
        "| entity | n | precision | recall | F1 |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for row in table.itertuples(index=False):
        n = "" if pd.isna(row.n) else str(int(row.n))
        lines.append(f"| {row.entity} | {n} | {row.precision:.3f} | {row.recall:.3f} | {row.f1:.3f} |")
    lines += ["", f"![F1 per entity]({f1_png.name})", ""]
    if mistakes_png is not None:
        lines += [f"## Worst mistakes ({len(mistakes)})", "", "| index | entity | kind | prediction | truth |",
                  "| ---: | --- | --- | --- | --- |"]
        for row in mistakes.itertuples(index=False):
            lines.append(
                f"| {row.index} | {row.entity_name} | {row.kind} | {row.prediction or '(empty)'} | "
                f"{row.entity_value or '(empty)'} |"
            )
        lines += ["", f"![worst mistakes]({mistakes_png.name})", ""]
    if units_png is not None:
        lines += ["## Answered unit against labelled unit", "",
                  "Per entity, each labelled unit's rows by the unit answered (last column: no answer); a wrong "
                  "unit is often a printed conversion (\"100 g (3.53 oz)\") answered in the other unit.", "",
                  f"![unit confusion]({units_png.name})", ""]
    lines += [f"Browse every prediction with its image: [{gallery.name}]({gallery.name})", ""]
    report_md = out / "report.md"
    report_md.write_text("\n".join(lines), encoding="utf-8")
    return ReportFiles(report_md, f1_png, mistakes_png, gallery, table_csv, units_png)
