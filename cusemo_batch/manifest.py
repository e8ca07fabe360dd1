"""The manifest: what the store holds for every call it ever scored, and the key that decides skips.

One row per call (``store.MANIFEST_SCHEMA``), kept by the driver in memory and rewritten to
``OUT/_state/manifest.parquet`` now and then and at the end of the night (see :class:`Manifest`).
A call is skipped when :func:`score_key` of its audio, model and options equals the key of its
stored good rows and those files still exist.
"""

from __future__ import annotations

import threading
import time

import polars as pl

from .files import crash_point
from .store import MANIFEST_SCHEMA, Store

MANIFEST_FLUSH_S = 10.0
# A manifest flush never takes more than this share of the night: with a large manifest (every call
# ever scored) a rewrite every MANIFEST_FLUSH_S would otherwise become most of the driver's work.
MANIFEST_FLUSH_SHARE = 0.1


def score_key(audio_sha256: str, model_sha256: str, options_hash: str) -> str:
    """The manifest key of a result: audio bytes, model and result-changing options."""
    return f"{audio_sha256[:32]}:{model_sha256[:16]}:{options_hash}"


class Manifest:
    """What the store holds for every call it ever scored: one row per call (``MANIFEST_SCHEMA``).

    ``key`` and ``status`` describe the last attempt; ``ok_key`` / ``ok_files`` the good rows that
    are kept until a new success replaces them; ``files`` is everything the call owns (good rows and
    a current error row). Lives in the driver; every access holds the lock. The file is rewritten
    at most every ``flush_s`` (rewriting a manifest of every call ever scored after each call would
    cost O(calls x history) a night), and never more than ``MANIFEST_FLUSH_SHARE`` of the time, and
    at the end; a kill in between only means the next run rescores those calls, to the same rows.
    """

    def __init__(self, store: Store, run_id: str, flush_s: float = MANIFEST_FLUSH_S) -> None:
        self.store, self.run_id, self.flush_s = store, run_id, flush_s
        self._rows = {r["call_id"]: r for r in store.read_manifest().iter_rows(named=True)}
        self._lock = threading.Lock()
        self._flushed = time.monotonic()
        self._flush_cost = 0.0

    def current(self, call_id: str, date: str) -> tuple[str, tuple[str, ...]]:
        """Key and files of the call's good rows when its last attempt succeeded in ``date``'s partition."""
        with self._lock:
            prev = self._rows.get(call_id)
            if prev is None or prev["status"] != "ok" or prev["date"] != date:
                return "", ()
            return prev["key"], tuple(prev["files"])

    def date_of(self, call_id: str) -> str | None:
        """The partition the call's rows are in (None for a call never stored)."""
        with self._lock:
            prev = self._rows.get(call_id)
            return prev["date"] if prev and prev["date"] else None

    def ok_files(self, call_id: str) -> list[str]:
        with self._lock:
            prev = self._rows.get(call_id)
            return list(prev["ok_files"] or []) if prev else []

    def record_ok(self, call_id: str, key: str, date: str, files: list[str]) -> None:
        """A new good result: it replaces everything the call owned before (old partition, error row)."""
        self._record(call_id, {"status": "ok", "key": key, "date": date, "files": files,
                               "ok_key": key, "ok_files": files})

    def record_error(self, call_id: str, key: str, date: str, error_file: str) -> None:
        """A failure: the call's good rows (if any) stay; the error row is added."""
        with self._lock:
            prev = self._rows.get(call_id) or {}
        ok_files = [f for f in (prev.get("ok_files") or []) if f != error_file]
        self._record(call_id, {"status": "error", "key": key, "date": date, "files": [*ok_files, error_file],
                               "ok_key": prev.get("ok_key") or "", "ok_files": ok_files})

    def _record(self, call_id: str, row: dict) -> None:
        with self._lock:
            prev = self._rows.get(call_id)
            self._rows[call_id] = {"call_id": call_id, **row, "run_id": self.run_id}
        if prev:  # outputs of the previous state that the new state does not own
            self.store.remove([f for f in prev["files"] if f not in row["files"]])
        since = time.monotonic() - self._flushed
        if since >= self.flush_s and since * MANIFEST_FLUSH_SHARE >= self._flush_cost:
            self.flush()

    def flush(self) -> None:
        t0 = time.monotonic()
        with self._lock:
            df = pl.DataFrame(list(self._rows.values()), schema=MANIFEST_SCHEMA)
        self.store.write_manifest(df)
        crash_point("after_manifest")
        self._flushed = time.monotonic()
        self._flush_cost = self._flushed - t0

