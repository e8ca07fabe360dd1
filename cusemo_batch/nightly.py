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

Who does what. The *driver* (:func:`run_nightly`, one process) owns everything that is one per
night: the metadata and the call list, the lock, discovery, the manifest (what is stored, which
calls can be skipped), the error rows and the runs row. An *engine* turns :class:`CallJob` s
(a call, its partition and what is stored for it) into results by running
:func:`~cusemo_batch.engine.score_jobs` (hash, skip check, decode, infer, analyse, write the
call's files through a :class:`~cusemo_batch.call_writer.CallWriter`); see
:mod:`cusemo_batch.engine`. The :class:`~cusemo_batch.manifest.Manifest` decides what is skipped
and records each result after its files are in place.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import time
import uuid
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable

import polars as pl

from . import __version__
from .call_writer import CallWriter
from .calls import Call, CallError, discover
from .engine import CallJob, Engine, EngineFailed, EngineUnavailable, JobResult, LocalEngine, Skipped, Written
from .files import crash_point
from .manifest import Manifest
from .metadata import CallMetadata, read_metadata
from .schema import SCHEMA_VERSION
from .scorer import Scorer
from .store import Store, StoreWriteError, valid_date
from .store_upgrade import upgrade_store

# Names callers reach through the driver module (the pieces live in engine / manifest / call_writer).
__all__ = ["run_nightly", "RunSummary", "CallSource", "NightRecorder", "Dates", "new_run_id", "EngineUnavailable",
           "EngineFailed", "LocalEngine", "EXIT_OK", "EXIT_FAILED", "EXIT_USAGE", "EXIT_LOCKED", "EXIT_NO_CALLS",
           "EXIT_WRITE", "EXIT_ENGINE"]

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED, EXIT_NO_CALLS, EXIT_WRITE, EXIT_ENGINE = 0, 1, 2, 3, 4, 5, 6
log = logging.getLogger(__name__)  # fields run_id / call_id / stage in `extra` (cusemo_batch.oplog)


@dataclass
class RunSummary:
    """What one nightly run did (returned by :func:`cusemo_batch.score_nightly`; also the ``runs`` row).

    ``exit_code`` is what ``cusemo-batch score`` exits with (0 ok, 1 some calls failed, 4 no calls;
    docs/operations.md); ``errors`` the error rows written this run.

    Examples
    --------
    >>> import tempfile, cusemo_batch as cb
    >>> s = cb.score_nightly("examples/calls", tempfile.mkdtemp(), device="cpu")
    >>> s.scored >= 4, s.failed, s.exit_code
    (True, 0, 0)
    """

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
    engine_error: str = ""  # the engine failed mid-run (a Ray cluster lost): the night stopped early
    engine: str = "local"

    @property
    def exit_code(self) -> int:
        """5 when OUT could not be written; 6 when the engine failed; 1 when a call failed; 4 when
        CALLS held no call at all (an unmounted share looks like that)."""
        if self.write_error:
            return EXIT_WRITE
        if self.engine_error:
            return EXIT_ENGINE
        if self.failed:
            return EXIT_FAILED
        return EXIT_NO_CALLS if self.calls_found == 0 else EXIT_OK

    @property
    def x_real_time(self) -> float:
        return self.audio_s / self.wall_s if self.wall_s > 0 else 0.0


def new_run_id(now: dt.datetime) -> str:
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + uuid.uuid4().hex[:6]


# ---------------------------------------------------------------------------------- the driver
class CallSource:
    """Where the night's calls come from: a folder (walked) or a call list (``--manifest``)."""

    def __init__(self, calls_dir: str | Path | None, call_list: str | Path | None) -> None:
        """Reads the metadata or the call list: MetadataError (exit 2) before OUT is touched."""
        if (calls_dir is None) == (call_list is None):
            raise ValueError("give either a calls folder or a call list")
        if call_list is not None:
            from .call_list import read_call_list

            listing = read_call_list(call_list)
            self.location = Path(call_list)
            self.metadata: CallMetadata | None = listing.metadata
            self._discover: Callable = listing.discover
        else:
            self.location = Path(calls_dir)  # type: ignore[arg-type]
            self.metadata = read_metadata(calls_dir)  # type: ignore[arg-type]
            self._discover = partial(discover, calls_dir)

    def discover(self, opts) -> tuple[list[Call], list[CallError]]:
        return self._discover(opts)


@dataclass
class Dates:
    """The partition of a call: its metadata date, else where its rows already are, else the run date
    (metadata that went missing must not move a call's rows)."""

    meta: dict[str, dict]
    manifest: Manifest
    today: str

    def __call__(self, call_id: str) -> str:
        return valid_date(self.meta.get(call_id, {}).get("date")) or self.manifest.date_of(call_id) or self.today


class NightRecorder:
    """The driver's side of a night: results -> manifest rows, error rows, counts and log lines."""

    def __init__(self, manifest: Manifest, writer: CallWriter, dates: Dates, summary: RunSummary,
                 on_call: Callable[[JobResult], None] | None) -> None:
        self.manifest, self.writer, self.dates, self.summary, self.on_call = manifest, writer, dates, summary, on_call
        self._extra = {"run_id": summary.run_id}

    def record(self, result: JobResult) -> None:
        if isinstance(result, Skipped):
            self.summary.skipped += 1
            log.debug("%s: unchanged since its last good result, skipped", result.call_id,
                      extra={**self._extra, "call_id": result.call_id, "stage": "skip"})
            return
        if self.on_call:
            self.on_call(result)
        if isinstance(result, Written):
            self._written(result)
        else:
            self.failed(result.error, self.writer.key(result.audio_sha256) if result.audio_sha256 else "")

    def _written(self, r: Written) -> None:
        """One successful call, its files in place: its manifest row (the order crash safety relies on)."""
        crash_point("before_manifest")
        self.manifest.record_ok(r.call_id, r.key, r.date, list(r.files))
        crash_point("after_call")
        self.summary.scored += 1
        self.summary.audio_s += r.audio_s
        log.debug("%s: scored %d speaker(s), %.1f s of audio -> %s", r.call_id, r.speakers, r.audio_s, r.date,
                  extra={**self._extra, "call_id": r.call_id, "stage": "write"})

    def failed(self, err: CallError, key: str = "") -> None:
        date = self.dates(err.call_id)
        error_file = self.writer.write_error(err, key, date)
        kept = self.manifest.ok_files(err.call_id)
        self.writer.mark_failed(kept, err)
        self.manifest.record_error(err.call_id, key, date, error_file)
        self.summary.failed += 1
        self.summary.errors.append(err)
        log.error("%s: %s: %s: %s%s", err.call_id, err.stage, err.error, err.message,
                  " (its previous rows are kept)" if kept else "",
                  extra={**self._extra, "call_id": err.call_id, "stage": err.stage})


def run_nightly(calls_dir: str | Path | None, out_dir: str | Path, scorer: Scorer, force: bool = False,
                on_call: Callable[[JobResult], None] | None = None,
                run_date: str | None = None, on_start: Callable[[int], None] | None = None, *,
                call_list: str | Path | None = None, engine: Engine | None = None) -> RunSummary:
    """Score ``calls_dir`` (or the calls of ``call_list``) into the store at ``out_dir``.

    See the module docstring. ``engine``: :class:`LocalEngine` (default) or a
    ``cusemo_batch.engine_ray.RayEngine``. Raises MetadataError / EngineUnavailable before OUT is
    touched, LockedError, StoreWriteError (exit 5) and EngineFailed (exit 6) after recording what
    was done. Progress and problems go to the ``cusemo_batch.nightly`` logger (per-call lines at
    DEBUG) with ``run_id`` / ``call_id`` / ``stage`` fields; the CLI formats them
    (:mod:`cusemo_batch.oplog`).
    """
    t0 = time.perf_counter()
    now = dt.datetime.now(dt.timezone.utc)
    run_id = new_run_id(now)
    today = run_date or now.date().isoformat()
    engine = engine or LocalEngine()
    summary = RunSummary(run_id, out=Path(out_dir), engine=engine.name)
    source = CallSource(calls_dir, call_list)  # MetadataError before OUT is touched
    try:
        engine.start(scorer, source.location, Path(out_dir))  # EngineUnavailable before OUT is touched
        with Store(Path(out_dir)) as store:
            _run_in_store(store, source, scorer, engine, summary, force, on_call, on_start, now, today)
            summary.wall_s = time.perf_counter() - t0
            _finish(store, summary, scorer, engine, source.location, now, today)
    finally:
        engine.close()
    return summary


def _run_in_store(store: Store, source: CallSource, scorer: Scorer, engine: Engine, summary: RunSummary,
                  force: bool, on_call, on_start, now: dt.datetime, today: str) -> None:
    """Discover, build the jobs, run the engine and record its results (under the lock)."""
    run = {"run_id": summary.run_id}
    metadata = source.metadata
    meta = metadata.rows if metadata else {}
    calls, discovery_errors = source.discover(scorer.options.discovery)
    bad_meta = [c for c in calls if metadata and metadata.date_problem(c.call_id)]
    if bad_meta:  # one bad value: that call's error row, the night goes on
        discovery_errors += [CallError(c.call_id, str(metadata.source), "metadata", "BadMetadata",
                                       metadata.date_problem(c.call_id) or "") for c in bad_meta]
        calls = [c for c in calls if c not in bad_meta]
    summary.calls_found = len(calls) + len({e.call_id for e in discovery_errors})
    if summary.calls_found == 0:
        log.warning("no calls found under %s (an empty or unmounted folder?); exit code %d", source.location,
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
    manifest = Manifest(store, summary.run_id)
    writer = CallWriter(store, summary.run_id, scorer.model_id, scorer.model.sha256, now,
                        scorer.options.result_hash())
    dates = Dates(meta, manifest, today)
    recorder = NightRecorder(manifest, writer, dates, summary, on_call)
    jobs = [_job(c, dates(c.call_id), manifest, force, meta.get(c.call_id)) for c in calls]
    try:
        upgraded = upgrade_store(store)
        if upgraded:
            log.info("upgraded %d file(s) of %s to schema version %d (one schema per table; calls.csv columns "
                     "in calls.metadata)",
                     upgraded, store.root, SCHEMA_VERSION, extra={**run, "stage": "write"})
        for err in discovery_errors:
            recorder.failed(err)
        for result in engine.run(jobs, writer):
            recorder.record(result)
        manifest.flush()
    except StoreWriteError as e:  # disk full, I/O error: stop the night, record what can be recorded
        summary.write_error = str(e)
        log.error("%s; the night stops here (what was written is whole; rerun when OUT has room)", e,
                  extra={**run, "stage": "write"})
        _flush_quietly(manifest)
    except EngineFailed as e:  # the cluster failed: what was recorded stays; a rerun completes the night
        summary.engine_error = str(e)
        log.error("%s; the night stops here (what was written is whole; rerun to complete it)", e,
                  extra={**run, "stage": "engine"})
        _flush_quietly(manifest)


def _job(call: Call, date: str, manifest: Manifest, force: bool, meta: dict | None) -> CallJob:
    key, files = ("", ()) if force else manifest.current(call.call_id, date)
    return CallJob(call, date, key, files, meta)


def _flush_quietly(manifest: Manifest) -> None:
    try:
        manifest.flush()
    except StoreWriteError:
        pass


def _finish(store: Store, summary: RunSummary, scorer: Scorer, engine: Engine, source: Path,
            now: dt.datetime, today: str) -> None:
    """The runs row and the placeholders; re-raise a mid-run failure after recording it."""
    try:
        store.write("runs", today, f"run-{summary.run_id}",
                    _run_row(summary, scorer, engine, source, now, scorer.options.result_hash()))
        store.ensure_queryable(today, scorer.model.outputs[2:])
    except StoreWriteError:
        if not summary.write_error:
            raise
    if summary.write_error:
        raise StoreWriteError(summary.write_error)
    if summary.engine_error:
        raise EngineFailed(summary.engine_error)


def _run_row(summary: RunSummary, scorer: Scorer, engine: Engine, calls_dir: Path, now: dt.datetime,
             options_hash: str) -> pl.DataFrame:
    providers, device_note = engine.providers()
    return pl.DataFrame([{
        "run_id": summary.run_id, "started_at": now,
        "finished_at": dt.datetime.now(dt.timezone.utc),
        "calls_dir": str(Path(calls_dir).resolve()), "calls_found": summary.calls_found,
        "scored": summary.scored, "skipped": summary.skipped, "failed": summary.failed,
        "audio_s": summary.audio_s, "wall_s": summary.wall_s, "x_real_time": summary.x_real_time,
        "model_id": scorer.model_id, "model_sha256": scorer.model.sha256, "providers": providers,
        "device_note": device_note,
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
