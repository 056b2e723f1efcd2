"""Reading source tables line by line, so that one bad line is counted and the others still read.

- :func:`text_lines`: a text file (TSV, JSONL) as ``(line_number, text, problem)``; for a line that is
  not UTF-8, ``problem`` gives the offset of the first bad byte and ``text`` is a lossy decoding (bad
  bytes as U+FFFD), only good for finding which record the line belongs to.
- :func:`read_csv`: a CSV file (RFC 4180 quoting, fields may span lines) as :class:`CsvRow` records that
  carry the file line where the record starts; a record holding non-UTF-8 bytes, or with the wrong
  number of fields, carries a ``problem`` instead of being dropped silently.

Line numbers are 1-based physical lines of the file (the header is line 1 of a CSV).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from medvlp.curate.records import count_lines
from medvlp.data.ingest.skip_log import IngestError

__all__ = ["CsvRow", "count_lines", "read_csv", "text_lines"]

_BOM = "\ufeff"


def text_lines(path: Path) -> Iterator[tuple[int, str, str | None]]:
    """``(line_number, text, problem)`` for every line of ``path`` without its line ending.

    ``problem`` is None for a UTF-8 line; otherwise it says where the first bad byte is and ``text`` is
    the line decoded with replacement characters. A UTF-8 byte-order mark on the first line is dropped.
    """
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            raw = raw.rstrip(b"\r\n")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                yield number, raw.decode("utf-8", errors="replace"), f"not valid UTF-8 at byte {e.start} of the line"
                continue
            if number == 1 and text.startswith(_BOM):
                text = text[1:]
            yield number, text, None


@dataclass(frozen=True)
class CsvRow:
    """One CSV record: ``values`` by column name (``""`` for an empty cell), the file ``line`` where it
    starts, and ``problem`` (None, or why the record is unusable: non-UTF-8 bytes, wrong field count)."""

    line: int
    values: dict[str, str]
    problem: str | None = None
    reason: str | None = None


def _has_undecodable(text: str) -> bool:
    return any("\udc80" <= ch <= "\udcff" for ch in text)


def read_csv(path: Path, required: Sequence[str], what: str) -> tuple[list[str], list[CsvRow]]:
    """Read a CSV table whose first record is the header.

    Args:
        path: the file.
        required: columns that must be in the header.
        what: what the table is, for messages ("the CT-RATE reports table").

    Returns:
        ``(header, rows)``; rows in file order.

    Raises:
        IngestError: the file is missing, or its header lacks a required column (the whole table is
            unusable, whatever ``strict`` says).
    """
    if not path.is_file():
        raise IngestError(f"{what} {str(path)!r} not found; pass its path (see medvlp.data.ingest --help)")
    text = path.read_bytes().decode("utf-8", errors="surrogateescape")
    if text.startswith(_BOM):
        text = text[1:]
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = next(reader)
    except StopIteration:
        raise IngestError(f"{what} {str(path)!r} is empty; expected a header row with {list(required)}") from None
    header = [h.strip() for h in header]
    missing = [c for c in required if c not in header]
    if missing:
        raise IngestError(f"{what} {str(path)!r}: missing column(s) {missing}; its header has {header}. "
                          "Is this the right file?")
    rows, previous_end = [], reader.line_num
    for record in reader:
        start, previous_end = previous_end + 1, reader.line_num
        if not record or (len(record) == 1 and not record[0].strip()):
            continue                                      # blank line between records
        values = dict(zip(header, record))
        problem = reason = None
        if any(_has_undecodable(v) for v in record):
            problem, reason = "holds bytes that are not valid UTF-8", "invalid_utf8"
        elif len(record) != len(header):
            problem, reason = f"has {len(record)} fields, the header has {len(header)}", "invalid_row"
        rows.append(CsvRow(start, values, problem, reason))
    return header, rows
