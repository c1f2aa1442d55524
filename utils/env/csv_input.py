"""Reading a user's CSV file for a command-line tool: text cells, and a one-line message for every way it can fail.

``read_csv_text(path, what)`` returns a DataFrame of ``str`` cells (an empty cell is ``""``, never NaN) or raises
:class:`CsvInputError` whose message is one line naming the file and, where there is one, the line:

* the path does not exist, is a folder, or cannot be read (permissions);
* the file is empty (not even a header line);
* the bytes are not UTF-8: the 1-based line and the byte column of the first bad byte, counted in the whole file
  (a UTF-8 byte-order mark at the start is fine);
* a line holds more or fewer cells than the header; a file whose lines all end in a comma is named as such
  (``index,prediction,``: the header's last column has no name; or only the data lines end in a comma, which
  would otherwise shift every cell one column to the left);
* the CSV module itself gives up (a NUL byte, an unterminated quote at the end, a cell over the size limit).

Blank lines are skipped, as pandas does. Used by the ``utils.core.sanity`` and ``utils.core.metrics`` command lines.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

import pandas as pd

_EXCERPT = 60


class CsvInputError(ValueError):
    """A CSV file that cannot be read as a table; the message is one line and names the file."""


def read_input_bytes(path: str | os.PathLike[str], what: str = "CSV") -> bytes:
    """The bytes of a user's input file: any readable path (a pipe from ``<(cat test.csv)`` too, read once);
    :class:`CsvInputError` naming the file for a folder, a missing path or one that cannot be read."""
    p = Path(path)
    if p.is_dir():
        raise CsvInputError(f"{what} {p}: is a folder, not a CSV file")
    if not p.exists():
        raise CsvInputError(f"{what} {p}: file not found")
    try:
        return p.read_bytes()
    except OSError as exc:
        raise CsvInputError(f"{what} {p}: cannot be read: {exc.strerror or exc}") from None


def decode_utf8(what: str, path: str | os.PathLike[str], data: bytes) -> str:
    """``data`` as text (a UTF-8 byte-order mark dropped); :class:`CsvInputError` naming the file, the line and the
    byte of the first byte that is not UTF-8."""
    return _decode(what, Path(path), data)


def _decode(what: str, path: Path, data: bytes) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        start = exc.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)  # positions count after a BOM
        line = data.count(b"\n", 0, start) + 1
        line_start = data.rfind(b"\n", 0, start) + 1
        line_end = data.find(b"\n", start)
        excerpt = data[line_start : line_end if line_end >= 0 else len(data)][:_EXCERPT]
        raise CsvInputError(
            f"{what} {path}: line {line}, byte {start - line_start + 1} of that line: not UTF-8 text "
            f"(byte 0x{data[start]:02x} in {excerpt!r}); save the file as UTF-8"
        ) from None


def read_csv_text(path: str | os.PathLike[str], what: str = "CSV", data: bytes | None = None) -> pd.DataFrame:
    """Read ``path`` as a table of text cells (header line first); :class:`CsvInputError` when it cannot be.

    ``what`` names the file's role in messages ("predictions", "test"); ``data``: its bytes, already read
    (``read_input_bytes``: a pipe can be read only once).
    """
    p = Path(path)
    if data is None:
        data = read_input_bytes(p, what)
    text = _decode(what, p, data)
    if not text.strip():
        raise CsvInputError(f"{what} {p}: empty file (not even a header line)")
    reader = csv.reader(io.StringIO(text, newline=""))
    rows: list[list[str]] = []
    lines: list[int] = []
    try:
        for record in reader:
            if not record or (len(record) == 1 and not record[0].strip()):
                continue  # a blank line
            rows.append(record)
            lines.append(reader.line_num)
    except csv.Error as exc:
        raise CsvInputError(f"{what} {p}: line {max(1, reader.line_num)}: not a readable CSV line ({exc})") from None
    header, body = rows[0], rows[1:]
    width = len(header)
    repeated = sorted({c for c in header if header.count(c) > 1 and c.strip()})
    if repeated:
        raise CsvInputError(f"{what} {p}: line {lines[0]} (header): column {repeated[0]!r} appears more than once")
    if width > 1 and header[-1].strip() == "" and all(len(r) == width and r[-1] == "" for r in body):
        raise CsvInputError(
            f"{what} {p}: every line ends in a comma (the header's last column has no name); "
            "remove the trailing commas"
        )
    bad = [k for k, r in enumerate(body) if len(r) != width]
    if bad:
        k = bad[0]
        n = len(body[k])
        hint = ""
        if n == width + 1 and all(len(body[j]) == width + 1 and body[j][-1] == "" for j in bad):
            hint = (
                "; every such line ends in a comma: remove the trailing commas"
                if len(bad) == len(body)
                else "; it ends in a comma: remove it"
            )
        more = f" ({len(bad)} lines like this)" if len(bad) > 1 else ""
        raise CsvInputError(
            f"{what} {p}: line {lines[k + 1]} has {n} cell{'s' if n != 1 else ''} but the header has {width} "
            f"({','.join(header)}){more}{hint}"
        )
    frame = pd.DataFrame(body, columns=header, dtype=str) if body else pd.DataFrame(columns=header, dtype=str)
    return frame
