"""Operator logs of the nightly job: timestamped text lines or one JSON object per line.

The library logs through :mod:`logging` (logger ``cusemo_batch`` and its children) with the
structured fields ``run_id``, ``call_id`` and ``stage`` passed as ``extra``; only the CLI installs a
handler (:func:`configure`), as a library should. Text lines carry a UTC timestamp and the level
unless they go to a terminal; control characters from file names (a newline or an ANSI escape in a
call id) are shown escaped, so a file name can never forge or recolour a log line. JSON lines
(``--log-format json``) have the keys ``time, level, run_id, call_id, stage, message``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import re
import sys
from typing import IO

LOGGER_NAME = "cusemo_batch"
FIELDS = ("run_id", "call_id", "stage")
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def escape_control(text: str) -> str:
    r"""``a\nb`` -> ``a\x0ab``: every C0/C1 control character (newline, ESC, ...) as a visible escape."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _utc(record: logging.LogRecord) -> str:
    t = dt.datetime.fromtimestamp(record.created, dt.timezone.utc)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


class TextFormatter(logging.Formatter):
    """``2026-12-02T01:30:05.123Z WARNING message`` (just ``message`` on a terminal)."""

    def __init__(self, timestamps: bool = True) -> None:
        super().__init__()
        self.timestamps = timestamps

    def format(self, record: logging.LogRecord) -> str:
        msg = escape_control(record.getMessage())
        if self.timestamps:
            return f"{_utc(record)} {record.levelname:<7} {msg}"
        return f"{record.levelname.lower()}: {msg}" if record.levelno >= logging.WARNING else msg


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time, level, run_id, call_id, stage, message``."""

    def format(self, record: logging.LogRecord) -> str:
        obj = {"time": _utc(record), "level": record.levelname.lower(),
               **{k: getattr(record, k, None) for k in FIELDS}, "message": record.getMessage()}
        return json.dumps(obj, ensure_ascii=False)


def configure(fmt: str = "text", verbose: bool = False, stream: IO[str] | None = None,
              timestamps: bool | None = None) -> logging.Handler:
    """Send the ``cusemo_batch`` loggers to ``stream`` (stderr) in ``fmt``; returns the handler.

    ``verbose`` adds the per-call lines (DEBUG). ``timestamps`` defaults to "not a terminal".
    Replaces a handler installed by an earlier call (one CLI invocation, one handler).
    """
    if fmt not in ("text", "json"):
        raise ValueError(f"unknown log format {fmt!r}; expected text or json")
    stream = stream or sys.stderr
    if timestamps is None:
        timestamps = not (hasattr(stream, "isatty") and stream.isatty())
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter(timestamps))
    handler._cusemo = True  # type: ignore[attr-defined]
    logger = logging.getLogger(LOGGER_NAME)
    for h in [h for h in logger.handlers if getattr(h, "_cusemo", False)]:
        logger.removeHandler(h)
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False
    return handler
