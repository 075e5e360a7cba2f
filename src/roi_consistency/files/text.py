"""The one way this tool reads a text file a user hands it (CSVs, box lists, split lists).

Every such file is decoded here as UTF-8, with or without the byte-order mark a spreadsheet writes, and
with either line end. Anything else (another encoding, binary junk, a NUL byte, a quote left open) is a
UserError naming the file and the line, never a traceback from deep inside the csv module.
"""
from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Iterator

from roi_consistency.errors import UserError

# A text field this long is not a file name or a label list: csv's own limit (128 KiB) would otherwise
# raise deep inside a loop, and a quote left open swallows the rest of the file into one field.
FIELD_LIMIT = 4096


def shown(text: str, limit: int = 80) -> str:
    """User text as it may appear in a one-line message: control characters escaped, long text cut."""
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    return text if len(text) <= limit else text[:limit] + "…"


def read_text(path: str | Path, what: str = "file") -> str:
    """The file's text; a missing file, or one that is not UTF-8, is a UserError saying what to do."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: {what} not found") from None
    except OSError as exc:
        raise UserError(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data[:exc.start].count(b"\n") + 1
        raise UserError(f"{path} line {line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save the {what} as "
                        "UTF-8 ('CSV UTF-8' in a spreadsheet)") from None


def csv_rows(path: str | Path, what: str = "CSV", limit: int = FIELD_LIMIT) -> Iterator[tuple[int, list[str]]]:
    """(line number, fields) of every row of a CSV, the header included; blank lines are skipped. A field
    longer than `limit` characters is an error (below csv's own 128 KiB)."""
    text = read_text(path, what)
    if "\0" in text:
        line = text[:text.index("\0")].count("\n") + 1
        raise UserError(f"{path} line {line}: a NUL byte; this is not a text {what}")
    reader = csv.reader(io.StringIO(text, newline=""))
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise UserError(f"{path} line {reader.line_num}: {exc}; check its quotes") from None
        too_long = next((f for f in row if len(f) > limit), None)
        if too_long is not None:
            raise UserError(f"{path} line {reader.line_num}: a field of {len(too_long):,} characters; a quote "
                            "left open? (fields here are file names and labels)")
        if any(f.strip() for f in row):
            yield reader.line_num, row


def read_table(path: str | Path, required: tuple[str, ...], what: str = "CSV", limit: int = FIELD_LIMIT
               ) -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    """The header and the rows as {column: text} of a CSV with a header naming `required` among its
    columns. A duplicated column, or a row with fewer or more fields than the header, is an error naming
    it."""
    rows = csv_rows(path, what, limit)
    _, header = next(rows, (1, []))
    header = [h.strip() for h in header]
    missing = [c for c in required if c not in header]
    if missing:
        got = shown(",".join(header)) or "no header"
        raise UserError(f"{path}: expected a header with the columns {','.join(required)}; got {got}")
    named = [h for h in header if h]
    twice = sorted({h for h in named if named.count(h) > 1})
    if twice:
        raise UserError(f"{path}: column {shown(twice[0])!r} appears twice in the header; keep one")

    need = max(i for i, h in enumerate(header) if h) + 1  # trailing unnamed columns may be left out

    def records():
        for line_no, row in rows:
            if len(row) < need or any(f.strip() for f in row[len(header):]):
                raise UserError(f"{path} line {line_no}: {len(row)} field(s) but the header has {need}; quote "
                                "fields that contain commas, and leave empty ones empty (a,,c)")
            yield line_no, {h: row[i] for i, h in enumerate(header) if h}
    return header, records()
