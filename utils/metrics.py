"""``python -m utils.metrics PREDICTIONS.csv LABELS.csv``: the competition F1 as a command.

It reads the two files (``utils.env.csv_input``) and runs ``utils.core.metrics.score``; it prints the table, and its
last line is ``F1 <value>``; unreadable input is one line and exit 2. ``--help`` lists the options.
"""

from __future__ import annotations

import argparse
import sys

import pandas as pd

from utils.core.metrics import RANGE_MATCH, RANGE_MATCHES, score


def _read_csv(path: str, what: str) -> pd.DataFrame:
    from utils.env.csv_input import read_csv_text

    return read_csv_text(path, f"{what} file")  # CsvInputError is a ValueError with a one-line message


def main(argv: list[str] | None = None) -> int:
    """CLI: print the F1 table for a predictions CSV against a labels CSV; the last line is ``F1 <value>``.

    Exit 2 with one line ``error: ...`` on stderr for anything that stops the scoring (never a traceback).
    """
    ap = argparse.ArgumentParser(prog="python -m utils.metrics", description=__doc__.split("\n\n")[0])
    ap.add_argument("predictions", help="CSV with index,prediction")
    ap.add_argument("labels", help="CSV with index,entity_name,entity_value")
    ap.add_argument("--range-match", choices=RANGE_MATCHES, default=None, help=f"default {RANGE_MATCH}")
    args = ap.parse_args(argv)
    try:
        report = score(
            _read_csv(args.predictions, "predictions"), _read_csv(args.labels, "labels"), args.range_match
        )
    except (ValueError, TypeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # noqa: BLE001 - one line, whatever went wrong
        print(f"error: unexpected {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(report.table.to_string(float_format=lambda x: f"{x:.4f}"))
    if report.missing:
        print(f"note: {report.missing} label rows have no prediction (scored as empty)")
    if report.extra:
        print(f"note: {report.extra} predictions are for indices not in the labels (ignored)")
    if report.invalid:
        first = report.rows[~report.rows["valid"]].iloc[0]
        print(
            f"note: {report.invalid} predictions are not valid submission values (python -m utils.sanity rejects "
            f"them) and are scored as wrong (FP), e.g. index {first['index']}: {first['prediction']!r} "
            f"for {first['entity_name']}"
        )
    print(f"F1 {report.f1:.6f}")
    return 0



if __name__ == "__main__":
    sys.exit(main())
