"""The nightly job: discover -> skip what is already scored -> score -> write Parquet, crash-safely.

Guarantees (tested with real subprocesses killed by SIGKILL):

* **Incremental**: a call whose audio bytes, model and scoring options are unchanged (the manifest
  ``key``) is skipped; ``force`` rescores everything; a changed file rescores only its call.
* **Idempotent**: a call's rows live in files named after the call, replaced atomically, so a
  re-run never duplicates rows; outputs of a call that moved to another date partition, or that
  failed and then succeeded, are removed after the new files are in place.
* **No data loss**: a call's good rows are replaced only by a new *successful* result. When a call
  that has good rows fails (its audio became unreadable, ``--force`` met a decoding problem...),
  the rows stay, the error row is added and the call's ``calls`` rows get ``last_error_at`` /
  ``last_error``; the next run retries it.
* **Crash-safe**: files appear complete or not at all; the manifest records a call only after its
  files are written (and is itself rewritten every few seconds and at the end), so a kill at any
  point only leaves work the next run redoes. Orphaned temp files are removed when the next run
  takes the lock.
* **Locked**: one run per output folder (exit code 3 for the second); the lock dies with the process.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import polars as pl

from . import __version__
from .calls import Call, CallError, discover, read_metadata
from .files import crash_point
from .scorer import CallOutcome, Scorer, errors_frame, join_metadata
from .schema import SCHEMA_VERSION
from .store import MANIFEST_SCHEMA, Store, StoreWriteError, call_key, valid_date

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED, EXIT_NO_CALLS, EXIT_WRITE = 0, 1, 2, 3, 4, 5
MANIFEST_FLUSH_S = 10.0
log = logging.getLogger(__name__)  # fields run_id / call_id / stage in `extra` (cusemo_batch.oplog)


@dataclass
class RunSummary:
    run_id: str
    calls_found: int = 0
    scored: int = 0
    skipped: int = 0
    failed: int = 0
    audio_s: float = 0.0
    wall_s: float = 0.0
    errors: list[CallError] = field(default_factory=list)
    out: Path | None = None
    unmapped_labels: dict[str, int] = field(default_factory=dict)  # RTTM label -> calls carrying it
    write_error: str = ""  # OUT could not be written (disk full...): the night stopped early

    @property
    def exit_code(self) -> int:
        """5 when OUT could not be written; 1 when a call failed; 4 when CALLS held no call at all (an
        unmounted share looks like that)."""
        if self.write_error:
            return EXIT_WRITE
        if self.failed:
            return EXIT_FAILED
        return EXIT_NO_CALLS if self.calls_found == 0 else EXIT_OK

    @property
    def x_real_time(self) -> float:
        return self.audio_s / self.wall_s if self.wall_s > 0 else 0.0


def new_run_id(now: dt.datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


class Manifest:
    """What the store holds for every call it ever scored: one row per call (``MANIFEST_SCHEMA``).

    ``key`` and ``status`` describe the last attempt; ``ok_key`` / ``ok_files`` the good rows that
    are kept until a new success replaces them; ``files`` is everything the call owns (good rows and
    a current error row). The decode thread asks :meth:`is_current` while the main thread records,
    so every access holds the lock. The file is rewritten at most every ``flush_s`` (rewriting a
    manifest of every call ever scored after each call would cost O(calls x history) a night) and
    at the end; a kill in between only means the next run rescores those calls, to the same rows.
    """

    def __init__(self, store: Store, run_id: str, flush_s: float = MANIFEST_FLUSH_S) -> None:
        self.store, self.run_id, self.flush_s = store, run_id, flush_s
        self._rows = {r["call_id"]: r for r in store.read_manifest().iter_rows(named=True)}
        self._lock = threading.Lock()
        self._flushed = time.monotonic()

    def is_current(self, call_id: str, key: str, date: str) -> bool:
        """True when the call's stored good rows come from exactly this key and partition and are there.

        The existence check (a stat per file) catches rows deleted behind the store's back -- a
        partition removed by hand, a restore from an older backup: they are rescored, not trusted.
        """
        with self._lock:
            prev = self._rows.get(call_id)
            current = prev is not None and prev["status"] == "ok" and prev["key"] == key and prev["date"] == date
            files = list(prev["files"]) if current else []
        return current and all((self.store.root / f).is_file() for f in files)

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
        if time.monotonic() - self._flushed >= self.flush_s:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            df = pl.DataFrame(list(self._rows.values()), schema=MANIFEST_SCHEMA)
        self.store.write_manifest(df)
        crash_point("after_manifest")
        self._flushed = time.monotonic()


@dataclass
class CallWriter:
    """Writes one call's tables (or its error row) with the columns every row of a run shares."""

    store: Store
    run_id: str
    model_id: str
    model_sha256: str
    now: dt.datetime
    metadata: dict[str, dict]
    metadata_columns: tuple[str, ...] = ()

    def _run_columns(self) -> list[pl.Expr]:
        return [pl.lit(self.run_id).alias("run_id"), pl.lit(self.model_id).alias("model_id"),
                pl.lit(self.model_sha256).alias("model_sha256")]

    def write_ok(self, out: CallOutcome, key: str, date: str) -> list[str]:
        """timeseries, events, then calls (written last: its presence marks the call complete)."""
        cid, name, lit = out.call.call_id, call_key(out.call.call_id), self._run_columns()
        calls_df = out.summary.with_columns(
            pl.lit(out.audio_sha256).alias("audio_sha256"), pl.lit(key).alias("score_key"),
            pl.lit(self.now).alias("scored_at"), pl.lit(SCHEMA_VERSION).alias("schema_version"), *lit,
            pl.lit(None, pl.Datetime("us", "UTC")).alias("last_error_at"), pl.lit(None, pl.Utf8).alias("last_error"))
        if self.metadata_columns:  # every call of the night gets calls.csv's columns (null when not listed)
            row = {k: None for k in self.metadata_columns} | self.metadata.get(cid, {}) | {"call_id": cid}
            calls_df = join_metadata(calls_df, [row])
        files = [self.store.write("timeseries", date, name, out.timeseries.with_columns(*lit))]
        crash_point("between_tables")
        files.append(self.store.write("events", date, name, out.events.with_columns(*lit)))
        files.append(self.store.write("calls", date, name, calls_df))
        # an error row of this call left by a run killed before its manifest write would outlive
        # the success otherwise (the manifest never listed it)
        self.store.remove([str(self.store.table_path("errors", date, name).relative_to(self.store.root))])
        return files

    def write_error(self, err: CallError, key: str, date: str) -> str:
        df = errors_frame([err]).with_columns(
            pl.lit(key).alias("score_key"), pl.lit(self.now).alias("occurred_at"), *self._run_columns())
        return self.store.write("errors", date, call_key(err.call_id), df)

    def mark_failed(self, ok_files: list[str], err: CallError) -> None:
        """Stamp the kept good rows of a call that failed this run (an analyst can tell them apart)."""
        for rel in ok_files:
            parts = Path(rel).parts
            if parts[0] != "calls":
                continue
            path = self.store.root / rel
            try:
                df = pl.read_parquet(path)
            except Exception:  # gone or unreadable: nothing to stamp, the error row still tells
                continue
            df = df.with_columns(pl.lit(self.now).alias("last_error_at"),
                                 pl.lit(f"{err.stage}: {err.error}: {err.message}").alias("last_error"))
            self.store.write("calls", parts[1].removeprefix("date="), path.stem, df)


def run_nightly(calls_dir: str | Path, out_dir: str | Path, scorer: Scorer, force: bool = False,
                on_call: Callable[[CallOutcome], None] | None = None,
                run_date: str | None = None, on_start: Callable[[int], None] | None = None) -> RunSummary:
    """Score ``calls_dir`` into the store at ``out_dir``; see the module docstring.

    Progress and problems go to the ``cusemo_batch.nightly`` logger (per-call lines at DEBUG) with
    ``run_id`` / ``call_id`` / ``stage`` fields; the CLI formats them (:mod:`cusemo_batch.oplog`).
    """
    t0 = time.perf_counter()
    now = dt.datetime.now(dt.timezone.utc)
    run_id = new_run_id(now)
    today = run_date or now.date().isoformat()
    summary = RunSummary(run_id, out=Path(out_dir))
    metadata = read_metadata(calls_dir)  # MetadataError before OUT is touched
    meta = metadata.rows if metadata else {}
    with Store(Path(out_dir)) as store:
        calls, discovery_errors = discover(calls_dir, scorer.options.discovery)
        run = {"run_id": run_id}
        bad_meta = [c for c in calls if metadata and metadata.date_problem(c.call_id)]
        if bad_meta:  # one bad value: that call's error row, the night goes on
            discovery_errors += [CallError(c.call_id, str(metadata.source), "metadata", "BadMetadata",
                                           metadata.date_problem(c.call_id) or "") for c in bad_meta]
            calls = [c for c in calls if c not in bad_meta]
        summary.calls_found = len(calls) + len({e.call_id for e in discovery_errors})
        if summary.calls_found == 0:
            log.warning("no calls found under %s (an empty or unmounted folder?); exit code %d", calls_dir,
                        EXIT_NO_CALLS, extra={**run, "stage": "discover"})
        summary.unmapped_labels = _unmapped(calls)
        if summary.unmapped_labels:
            n = sum(1 for c in calls if c.unmapped_labels)
            labels = ", ".join(f"{k} ({v} call{'s' if v > 1 else ''})" for k, v in summary.unmapped_labels.items())
            log.warning("%d call(s) have RTTM labels that no --roles entry maps: %s; their speakers are stored "
                        "under the label (map them with --roles LABEL=ROLE; --strict-roles makes this an error)",
                        n, labels, extra={**run, "stage": "discover"})
        crash_point("discovered")
        if on_start:
            on_start(len(calls))
        manifest = Manifest(store, run_id)
        writer = CallWriter(store, run_id, scorer.model_id, scorer.model.sha256, now, meta,
                            metadata.columns if metadata else ())
        options_hash = scorer.options.result_hash()

        def key_for(sha: str) -> str:
            return f"{sha[:32]}:{scorer.model.sha256[:16]}:{options_hash}"

        def date_for(call_id: str) -> str:
            # calls.csv's date, else the partition the call already lives in (metadata that went
            # missing must not move a call's rows), else the run date
            return valid_date(meta.get(call_id, {}).get("date")) or manifest.date_of(call_id) or today

        def skip(call: Call, sha: str) -> bool:
            current = not force and manifest.is_current(call.call_id, key_for(sha), date_for(call.call_id))
            if current:
                log.debug("%s: unchanged since its last good result, skipped", call.call_id,
                          extra={**run, "call_id": call.call_id, "stage": "skip"})
            return current

        def failed(err: CallError, key: str = "") -> None:
            error_file = writer.write_error(err, key, date_for(err.call_id))
            kept = manifest.ok_files(err.call_id)
            writer.mark_failed(kept, err)
            manifest.record_error(err.call_id, key, date_for(err.call_id), error_file)
            summary.failed += 1
            summary.errors.append(err)
            log.error("%s: %s: %s: %s%s", err.call_id, err.stage, err.error, err.message,
                      " (its previous rows are kept)" if kept else "",
                      extra={**run, "call_id": err.call_id, "stage": err.stage})

        n_done = 0
        try:
            for err in discovery_errors:
                failed(err)
            for out in scorer.iter_outcomes(calls, skip=skip):
                n_done += 1
                if on_call:
                    on_call(out)
                if out.ok:
                    _write_scored(out, writer, manifest, summary, key_for, date_for, run)
                else:
                    failed(out.error, key_for(out.audio_sha256) if out.audio_sha256 else "")
            manifest.flush()
        except StoreWriteError as e:  # disk full, I/O error: stop the night, record what can be recorded
            summary.write_error = str(e)
            log.error("%s; the night stops here (what was written is whole; rerun when OUT has room)", e,
                      extra={**run, "stage": "write"})
            try:
                manifest.flush()
            except StoreWriteError:
                pass
        summary.skipped = len(calls) - n_done if not summary.write_error else 0
        summary.wall_s = time.perf_counter() - t0
        try:
            store.write("runs", today, f"run-{run_id}", _run_row(summary, scorer, calls_dir, now, options_hash))
            store.ensure_queryable(today, scorer.model.outputs[2:])
        except StoreWriteError:
            if not summary.write_error:
                raise
        if summary.write_error:
            raise StoreWriteError(summary.write_error)
    return summary


def _write_scored(out: CallOutcome, writer: CallWriter, manifest: Manifest, summary: RunSummary,
                  key_for: Callable[[str], str], date_for: Callable[[str], str], run: dict) -> None:
    """One successful call: its tables, then its manifest row (the order crash safety relies on)."""
    cid = out.call.call_id
    key, date = key_for(out.audio_sha256), date_for(cid)
    files = writer.write_ok(out, key, date)
    crash_point("before_manifest")
    manifest.record_ok(cid, key, date, files)
    crash_point("after_call")
    summary.scored += 1
    summary.audio_s += out.audio_s
    log.debug("%s: scored %d speaker(s), %.1f s of audio -> %s", cid, out.summary.height, out.audio_s, date,
              extra={**run, "call_id": cid, "stage": "write"})


def _run_row(summary: RunSummary, scorer: Scorer, calls_dir: str | Path, now: dt.datetime,
             options_hash: str) -> pl.DataFrame:
    return pl.DataFrame([{
        "run_id": summary.run_id, "started_at": now,
        "finished_at": dt.datetime.now(dt.timezone.utc),
        "calls_dir": str(Path(calls_dir).resolve()), "calls_found": summary.calls_found,
        "scored": summary.scored, "skipped": summary.skipped, "failed": summary.failed,
        "audio_s": summary.audio_s, "wall_s": summary.wall_s, "x_real_time": summary.x_real_time,
        "model_id": scorer.model_id, "model_sha256": scorer.model.sha256, "providers": ",".join(scorer.model.providers),
        "device_note": scorer.model.device_note,
        "options_hash": options_hash, "exit_code": summary.exit_code,
        "unmapped_rttm_labels": ",".join(f"{k}:{v}" for k, v in summary.unmapped_labels.items()),
        "cusemo_batch_version": __version__,
        "schema_version": SCHEMA_VERSION, "host": socket.gethostname(), "pid": os.getpid(),
    }])


def _unmapped(calls: list[Call]) -> dict[str, int]:
    """RTTM label -> number of calls in which no role mapping names it (sorted by label)."""
    counts: dict[str, int] = {}
    for c in calls:
        for label in c.unmapped_labels:
            counts[label] = counts.get(label, 0) + 1
    return dict(sorted(counts.items()))
