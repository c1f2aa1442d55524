"""``python -m utils.sanity TEST.csv PREDICTIONS.csv``: the submission check as a command.

It reads the two files (``utils.env.csv_input``, ``utils.data.tables.load_test``) and runs
``utils.core.sanity.check_submission``; exit 0 and one line when valid, 1 and the first problems otherwise, 2 for
input that cannot be read (one line, never a traceback). ``--help`` lists the options.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from utils.core.sanity import _SHOW, check_submission, summarize
from utils.core.submission_format import cell_text
from utils.data.tables import DataValidationError, load_test
from utils.env.csv_input import CsvInputError, read_csv_text, read_input_bytes


def main(argv: list[str] | None = None) -> int:
    """CLI entry point: exit 0 and one line when valid, 1 and the first problems otherwise, 2 on unreadable input.

    Unreadable input (a missing file, a folder, bytes that are not UTF-8, lines with the wrong number of cells, an
    invalid test file) gives one line ``INVALID: <file>: <what is wrong>`` on stderr, never a traceback.
    """
    parser = argparse.ArgumentParser(
        prog="python -m utils.sanity", description="Check a submission CSV against the test CSV."
    )
    parser.add_argument("test_csv", help="the test CSV (index,image_link,group_id,entity_name)")
    parser.add_argument("predictions_csv", help="the submission to check (index,prediction)")
    parser.add_argument("--show", type=int, default=_SHOW, help="how many problems to list (default %(default)s)")
    args = parser.parse_args(argv)
    try:
        return _run(args.test_csv, args.predictions_csv, max(0, args.show))
    except Exception as exc:  # noqa: BLE001 - a checker must answer in one line, whatever went wrong
        print(f"INVALID: checking {args.predictions_csv} against {args.test_csv}: unexpected error "
              f"({type(exc).__name__}: {str(exc)[:300]})", file=sys.stderr)
        return 2


def _run(test_csv: str, predictions_csv: str, show: int) -> int:
    try:
        data = read_input_bytes(test_csv, "test file")  # once: <(cat test.csv) is a pipe
        read_csv_text(test_csv, "test file", data=data)  # the file-level problems, with a line number
        test = load_test(test_csv, data=data)
    except (CsvInputError, DataValidationError) as exc:
        print(f"INVALID: {exc}", file=sys.stderr)
        return 2
    path = Path(predictions_csv)
    try:
        preds = read_csv_text(path, "predictions file")
    except CsvInputError as exc:
        print(f"INVALID: {exc}", file=sys.stderr)
        return 2
    problems = check_submission(test, preds)
    if not problems:
        filled = int((cell_text(preds["prediction"]) != "").sum())
        share = 100.0 * filled / max(len(preds), 1)
        print(f"OK {path}: {len(preds)} rows, every test index once, {filled} non-empty predictions ({share:.1f}%)")
        return 0
    print(f"INVALID {path}: {len(problems)} problems ({summarize(problems)}); first {min(show, len(problems))}:")
    for p in problems[:show]:
        print(f"  {p}")
    return 1



if __name__ == "__main__":
    sys.exit(main())
