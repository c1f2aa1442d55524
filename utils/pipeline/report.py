"""The evaluation report: F1 per entity as a bar chart, the unit confusion, the worst mistakes, ``report.md``.

Input is a ``utils.core.metrics.F1Report`` (``.table`` one row per entity plus ``ALL``, ``.f1``, ``.rows`` the joined
per-row frame with ``correct``) and the test table (for ``image_link``). Plots use matplotlib's object API
(``matplotlib.figure.Figure``, the Agg canvas): no display is needed, so they work in batch (papermill, CI).

- ``plot_f1(table, path)`` -> PNG bar chart.
- ``utils.pipeline.outcomes``: the per-row frame (``normalize_rows``), ``worst_mistakes(rows, n)`` (wrong value,
  then missed, then false alarm).
- ``utils.pipeline.gallery``: ``plot_mistakes`` (PNG grid of their images with prediction and truth),
  ``write_gallery`` (static HTML, thumbnails inline) and ``browser`` (ipywidgets).
- ``unit_confusion(rows)`` -> per entity, how often each labelled unit was answered with each unit (or nothing);
  ``plot_unit_confusion(rows, path)`` draws it as one small matrix per entity.
- ``write_report(out_dir, report, test, image_dir)`` -> ``report.md`` + the PNGs, the gallery and the F1 table.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import pandas as pd
from matplotlib.figure import Figure

from utils.data.census import rows_without_image
from utils.pipeline.gallery import plot_mistakes, write_gallery
from utils.pipeline.outcomes import normalize_rows, number_unit, worst_mistakes


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
    parsed = number_unit(text)
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


def no_image_lines(rows: pd.DataFrame, image_dir: str | Path | None) -> list[str]:
    """A report paragraph counting the rows without a usable image and how they were answered (none: [])."""
    if image_dir is None or "image_link" not in rows.columns:
        return []
    without = rows_without_image(rows, image_dir)
    if not without.any():
        return []
    answered = int((rows.loc[without, "prediction"].astype(str).str.strip() != "").sum())
    return [f"Rows without an image in {image_dir}: {int(without.sum())} of {len(rows)}, {answered} of them answered "
            "anyway (a guess: --guess-without-image), the others ''.", ""]


def write_report(
    out_dir: str | Path,
    report: ReportLike,
    test: pd.DataFrame | None = None,
    image_dir: str | Path | None = None,
    n_worst: int = 12,
    title: str = "Evaluation report",
    notes: list[str] | tuple[str, ...] = (),
) -> ReportFiles:
    """Write ``report.md``, ``f1_by_entity.png``, ``worst_mistakes.png``, ``gallery.html`` and ``f1_table.csv``
    (``notes``: lines said under the overall F1, e.g. how many test rows have labels)."""
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
        *[line for note in notes for line in (note, "")],
        *no_image_lines(rows, image_dir),
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
