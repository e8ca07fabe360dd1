"""Small text helpers every layer shares: one-line error messages and numeric cells.

One home each, so that a message is cut the same way in the errors table, the CLI and the logs, and
"is this CSV cell a number" means the same in corpus checks, curation and experiment reports.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

MESSAGE_CHARS = 300  # an errors-table message or a CLI error: one line, at most this long


def first_line(e: BaseException, limit: int = MESSAGE_CHARS) -> str:
    """The first line of an exception's message (its class name when empty), at most ``limit`` chars.

    Library errors (libsndfile, onnxruntime, polars) carry multi-line dumps; a table cell and a log
    line get the sentence that says what went wrong.
    """
    s = str(e).strip()
    return (s.splitlines()[0] if s else type(e).__name__)[:limit]


def is_number(s: str) -> bool:
    """True for a finite number written as text (``"1e3"``, ``" -0.5"``); False for NaN, inf and words."""
    try:
        return math.isfinite(float(s))
    except (TypeError, ValueError):
        return False


def read_csv_rows(path: Path, error: type[ValueError]) -> list[list[str]]:
    """The rows of a CSV file written as UTF-8 (BOM or not) or UTF-16 with a BOM (what spreadsheet
    programs save as "Unicode text"); unreadable, undecodable or unparseable -> ``error`` naming the file."""
    try:
        raw = Path(path).read_bytes()
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e})") from None
    encoding = "utf-16" if raw.startswith((b"\xff\xfe", b"\xfe\xff")) else "utf-8-sig"
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as e:
        raise error(f"{path}: not UTF-8 or UTF-16 text (byte {e.start}: {e.reason})") from None
    try:
        return list(csv.reader(text.splitlines()))
    except csv.Error as e:
        raise error(f"{path}: not CSV ({e})") from None

