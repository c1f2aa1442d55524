"""What the notebooks show: each stage's results as tables, pictures and a browser (no logic the stages need)."""

from __future__ import annotations

from typing import Any

from utils.pipeline.stages import Postprocessed, Prepared


def prepared(result: Prepared) -> None:
    """Display stage 01's counts (tables in a notebook, text elsewhere)."""
    from IPython.display import display

    print(result.summary())
    if result.download is not None:
        print(f"images: {result.download}")
    display(result.entity_counts)
    display(result.counts)


def postprocessed(result: Postprocessed, interactive: bool = False) -> Any:
    """Display stage 04's results: F1 table, bar chart, worst mistakes, and the browser (returned)."""
    from IPython.display import Image, display

    print(result.summary())
    for note in result.notes:
        print(note)
    if result.report is None:
        return None
    from utils.pipeline import report as report_module

    display(result.report.table)
    display(Image(filename=str(result.files.f1_png)))
    if result.files.mistakes_png is not None:
        display(Image(filename=str(result.files.mistakes_png)))
    print(f"report: {result.files.report_md}")
    rows = report_module.normalize_rows(result.report.rows, result.test)
    return report_module.browser(rows, result.image_dir, interactive=interactive)
