"""The nightly job: discover -> skip what is already scored -> score -> write Parquet, crash-safely.

Guarantees (tested with real subprocesses killed by SIGKILL):

* **Incremental**: a call whose audio bytes, model and scoring options are unchanged (the manifest
  ``key``) is skipped; ``force`` rescores everything; a changed file rescores only its call.
* **Idempotent**: a call's rows live in files named after the call, replaced atomically, so a
  re-run never duplicates rows; outputs of a call that moved to another date partition, or that
  failed and then succeeded, are removed after the new files are in place.
* **Crash-safe**: files appear complete or not at all; the manifest records a call only after its
  files are written (and is itself rewritten every few seconds and at the end), so a kill at any
  point only leaves work the next run redoes. Orphaned temp
  files are removed when the next run takes the lock.
* **Locked**: one run per output folder (exit code 3 for the second); the lock dies with the process.
"""

from __future__ import annotations

import datetime as dt
import os
import socket
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
from .store import MANIFEST_SCHEMA, SCHEMA_VERSION, Store, call_key, valid_date

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED = 0, 1, 2, 3
MANIFEST_FLUSH_S = 10.0


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

    @property
    def exit_code(self) -> int:
        return EXIT_FAILED if self.failed else EXIT_OK

    @property
    def x_real_time(self) -> float:
        return self.audio_s / self.wall_s if self.wall_s > 0 else 0.0


def new_run_id(now: dt.datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


def run_nightly(calls_dir: str | Path, out_dir: str | Path, scorer: Scorer, force: bool = False,
                log: Callable[[str], None] = print, on_call: Callable[[CallOutcome], None] | None = None,
                run_date: str | None = None, on_start: Callable[[int], None] | None = None) -> RunSummary:
    """Score ``calls_dir`` into the store at ``out_dir``; see the module docstring."""
    t0 = time.perf_counter()
    now = dt.datetime.now(dt.timezone.utc)
    run_id = new_run_id(now)
    today = run_date or now.date().isoformat()
    summary = RunSummary(run_id, out=Path(out_dir))
    with Store(Path(out_dir)) as store:
        calls, discovery_errors = discover(calls_dir, scorer.options.discovery)
        meta_rows, meta_problem = read_metadata(calls_dir)
        meta = {r["call_id"]: r for r in (meta_rows or [])}
        if meta_problem:
            log(f"warning: {meta_problem}; calls are written without metadata")
        summary.calls_found = len(calls) + len({e.call_id for e in discovery_errors})
        crash_point("discovered")
        if on_start:
            on_start(len(calls))
        manifest = {r["call_id"]: r for r in store.read_manifest().iter_rows(named=True)}
        model_sha = scorer.model.sha256
        options_hash = scorer.options.result_hash()

        def key_for(sha: str) -> str:
            return f"{sha[:32]}:{model_sha[:16]}:{options_hash}"

        def date_for(call_id: str) -> str:
            return valid_date(meta.get(call_id, {}).get("date")) or today

        def skip(call: Call, sha: str) -> bool:
            prev = manifest.get(call.call_id)
            return (not force and prev is not None and prev["status"] == "ok"
                    and prev["key"] == key_for(sha) and prev["date"] == date_for(call.call_id))

        common = {"run_id": run_id, "model_id": scorer.model_id, "model_sha256": model_sha}

        def record(call_id: str, status: str, key: str, date: str, files: list[str]) -> None:
            prev = manifest.get(call_id)
            if prev:  # outputs of the previous state that were not overwritten
                store.remove([f for f in prev["files"] if f not in files])
            manifest[call_id] = {"call_id": call_id, "status": status, "key": key, "date": date,
                                 "files": files, "run_id": run_id}
            if time.monotonic() - flushed[0] >= MANIFEST_FLUSH_S:
                flush()

        # The manifest holds every call ever scored, so rewriting it after each call would cost
        # O(calls x history) per night. It is rewritten at most every MANIFEST_FLUSH_S and at the
        # end; a kill in between only means the next run rescores those calls (same rows).
        flushed = [time.monotonic()]

        def flush() -> None:
            store.write_manifest(pl.DataFrame(list(manifest.values()), schema=MANIFEST_SCHEMA))
            crash_point("after_manifest")
            flushed[0] = time.monotonic()

        def write_error(err: CallError, key: str = "") -> None:
            date = date_for(err.call_id)
            df = errors_frame([err]).with_columns(
                pl.lit(key).alias("score_key"), pl.lit(now).alias("occurred_at"),
                *[pl.lit(v).alias(k) for k, v in common.items()])
            files = [store.write("errors", date, call_key(err.call_id), df)]
            record(err.call_id, "error", key, date, files)
            summary.failed += 1
            summary.errors.append(err)
            log(f"error {err.call_id}: {err.stage}: {err.error}: {err.message}")

        for err in discovery_errors:
            write_error(err)

        n_done = 0
        found_ids = {c.call_id for c in calls}
        for out in scorer.iter_outcomes(calls, skip=skip):
            n_done += 1
            if on_call:
                on_call(out)
            if not out.ok:
                write_error(out.error, key_for(out.audio_sha256) if out.audio_sha256 else "")
                continue
            cid = out.call.call_id
            key, date, name = key_for(out.audio_sha256), date_for(cid), call_key(cid)
            lit = [pl.lit(v).alias(k) for k, v in common.items()]
            calls_df = out.summary.with_columns(
                pl.lit(out.audio_sha256).alias("audio_sha256"), pl.lit(key).alias("score_key"),
                pl.lit(now).alias("scored_at"), pl.lit(SCHEMA_VERSION).alias("schema_version"), *lit)
            if cid in meta:
                calls_df = join_metadata(calls_df, [meta[cid]])
            files = [store.write("timeseries", date, name, out.timeseries.with_columns(*lit))]
            crash_point("between_tables")
            files.append(store.write("events", date, name, out.events.with_columns(*lit)))
            files.append(store.write("calls", date, name, calls_df))  # written last: marks completeness
            crash_point("before_manifest")
            record(cid, "ok", key, date, files)
            crash_point("after_call")
            summary.scored += 1
            summary.audio_s += out.audio_s
        flush()
        summary.skipped = len(found_ids) - n_done
        summary.wall_s = time.perf_counter() - t0
        run_row = pl.DataFrame([{
            "run_id": run_id, "started_at": now,
            "finished_at": dt.datetime.now(dt.timezone.utc),
            "calls_dir": str(Path(calls_dir).resolve()), "calls_found": summary.calls_found,
            "scored": summary.scored, "skipped": summary.skipped, "failed": summary.failed,
            "audio_s": summary.audio_s, "wall_s": summary.wall_s, "x_real_time": summary.x_real_time,
            "model_id": scorer.model_id, "model_sha256": model_sha, "providers": ",".join(scorer.model.providers),
            "options_hash": options_hash, "exit_code": summary.exit_code, "cusemo_batch_version": __version__,
            "schema_version": SCHEMA_VERSION, "host": socket.gethostname(), "pid": os.getpid(),
        }])
        store.write("runs", today, f"run-{run_id}", run_row)
    return summary
