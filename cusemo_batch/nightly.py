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
(a call, its partition and what is stored for it) into results -- :class:`Written` (the call's
files are in place), :class:`Failed` (a :class:`CallError`), :class:`Skipped` -- by running
:func:`score_jobs`: hash, skip check, decode, infer, analyse, write the call's files. The
:class:`LocalEngine` runs it in this process; ``cusemo_batch.engine_ray.RayEngine`` in an actor
pool on a Ray cluster. Either way the files of a call are written before the driver records
them (the order crash safety relies on) and the stored rows are the same.
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
from functools import partial
from pathlib import Path
from typing import Callable, Iterator, Protocol, Union

import polars as pl

from . import __version__
from .calls import Call, CallError, CallMetadata, discover, read_metadata
from .files import crash_point
from .scorer import CallOutcome, Scorer, errors_frame, join_metadata
from .schema import SCHEMA_VERSION
from .store_upgrade import upgrade_store
from .store import MANIFEST_SCHEMA, Store, StoreWriteError, call_key, valid_date

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_LOCKED, EXIT_NO_CALLS, EXIT_WRITE, EXIT_ENGINE = 0, 1, 2, 3, 4, 5, 6
MANIFEST_FLUSH_S = 10.0
# A manifest flush never takes more than this share of the night: with a large manifest (every call
# ever scored) a rewrite every MANIFEST_FLUSH_S would otherwise become most of the driver's work.
MANIFEST_FLUSH_SHARE = 0.1
log = logging.getLogger(__name__)  # fields run_id / call_id / stage in `extra` (cusemo_batch.oplog)


class EngineUnavailable(Exception):
    """The engine cannot start (cluster unreachable, workers cannot load the model): exit code 2,
    decided before OUT is touched."""


class EngineFailed(Exception):
    """The engine failed mid-run (the cluster was lost, workers kept dying): exit code 6. What was
    written is whole and recorded; the next run completes the night to the same rows."""


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


def score_key(audio_sha256: str, model_sha256: str, options_hash: str) -> str:
    """The manifest key of a result: audio bytes, model and result-changing options."""
    return f"{audio_sha256[:32]}:{model_sha256[:16]}:{options_hash}"


# --------------------------------------------------------------------------------- jobs, results
@dataclass(frozen=True)
class CallJob:
    """One call as the driver hands it to an engine (picklable: it may travel to a worker).

    ``current_key`` / ``current_files``: the call's stored good rows when they are in ``date``'s
    partition ("" / () when there are none, the last attempt failed, or ``--force``).
    ``meta``: the call's row of the metadata (``calls.csv`` or the ``--manifest`` columns).
    """

    call: Call
    date: str
    current_key: str = ""
    current_files: tuple[str, ...] = ()
    meta: dict[str, str] | None = None

    def is_current(self, key: str, root: Path) -> bool:
        """True when the stored good rows come from exactly this key and are all still there.

        The existence check (a stat per file) catches rows deleted behind the store's back -- a
        partition removed by hand, a restore from an older backup: they are rescored, not trusted.
        """
        return bool(self.current_key) and key == self.current_key and all(
            (root / f).is_file() for f in self.current_files)


@dataclass(frozen=True)
class Written:
    """A call scored and its files written (paths relative to OUT; ``calls`` last)."""

    call_id: str
    key: str
    date: str
    files: tuple[str, ...]
    audio_s: float
    speakers: int
    worker: str = ""  # host:pid of the process that wrote the files


@dataclass(frozen=True)
class Failed:
    """A call that could not be scored: one error row (written by the driver)."""

    error: CallError
    audio_sha256: str = ""
    audio_s: float = 0.0


@dataclass(frozen=True)
class Skipped:
    """A call unchanged since its last good result."""

    call_id: str
    audio_s: float = 0.0


JobResult = Union[Written, Failed, Skipped]


class Engine(Protocol):
    """Runs :func:`score_jobs` somewhere and yields one result per job, in any order."""

    name: str

    def start(self, scorer: Scorer, source: Path, out: Path) -> None:
        """Checks before OUT is touched (raise :class:`EngineUnavailable`, exit 2).

        ``source``: CALLS or the call list; ``out``: OUT (which may not exist yet)."""

    def run(self, jobs: list[CallJob], writer: "CallWriter") -> Iterator[JobResult]:
        """Raise :class:`EngineFailed` when the engine itself fails; StoreWriteError when OUT cannot be written."""

    def providers(self) -> tuple[str, str]:
        """onnxruntime providers in use and a device note, for the runs table."""

    def close(self) -> None: ...


# ------------------------------------------------------------------------------ manifest, writer
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


@dataclass
class CallWriter:
    """Writes one call's tables (or its error row) with the columns every row of a run shares.

    Picklable without its lock (:meth:`for_worker`): the Ray engine's workers write through it.
    """

    store: Store
    run_id: str
    model_id: str
    model_sha256: str
    now: dt.datetime
    options_hash: str

    def key(self, audio_sha256: str) -> str:
        return score_key(audio_sha256, self.model_sha256, self.options_hash)

    def for_worker(self) -> "CallWriter":
        """A copy for another process: OUT as an absolute path, no lock (the driver holds it)."""
        return CallWriter(Store(self.store.root.absolute()), self.run_id, self.model_id, self.model_sha256,
                          self.now, self.options_hash)

    def _run_columns(self) -> list[pl.Expr]:
        return [pl.lit(self.run_id).alias("run_id"), pl.lit(self.model_id).alias("model_id"),
                pl.lit(self.model_sha256).alias("model_sha256")]

    def write_ok(self, out: CallOutcome, key: str, date: str, meta: dict[str, str] | None = None) -> list[str]:
        """timeseries, events, then calls (written last: its presence marks the call complete)."""
        cid, name, lit = out.call.call_id, call_key(out.call.call_id), self._run_columns()
        calls_df = out.summary.with_columns(
            pl.lit(out.audio_sha256).alias("audio_sha256"), pl.lit(key).alias("score_key"),
            pl.lit(self.now).alias("scored_at"), pl.lit(SCHEMA_VERSION).alias("schema_version"), *lit,
            pl.lit(None, pl.Datetime("us", "UTC")).alias("last_error_at"), pl.lit(None, pl.Utf8).alias("last_error"))
        calls_df = join_metadata(calls_df, [(meta or {}) | {"call_id": cid}])
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


# ------------------------------------------------------------------------ the per-call work
class SkipCheck:
    """``skip(call, audio_sha256)`` for :meth:`Scorer.iter_outcomes`: read-only, so the decode
    thread may call it while the caller writes."""

    def __init__(self, jobs: list[CallJob], writer: CallWriter) -> None:
        self._jobs = {j.call.call_id: j for j in jobs}
        self._writer = writer

    def __call__(self, call: Call, audio_sha256: str) -> bool:
        job = self._jobs[call.call_id]
        return job.is_current(self._writer.key(audio_sha256), self._writer.store.root)


def score_jobs(scorer: Scorer, jobs: list[CallJob], writer: CallWriter, worker: str = "") -> Iterator[JobResult]:
    """Hash, skip check, decode, infer, analyse and write each job's call; one result per job.

    The work both engines run (local: in the driver process; Ray: in each worker, on its share of
    the calls). A good call's files are written before its :class:`Written` is yielded; errors are
    returned, not written (the driver writes error rows: it also stamps the kept good rows).
    Skipped jobs are reported after the others. StoreWriteError propagates (OUT cannot be written).
    """
    by_id = {j.call.call_id: j for j in jobs}
    done: set[str] = set()
    for out in scorer.iter_outcomes([j.call for j in jobs], skip=SkipCheck(jobs, writer)):
        cid = out.call.call_id
        done.add(cid)
        if not out.ok:
            yield Failed(out.error, out.audio_sha256)
            continue
        job = by_id[cid]
        key = writer.key(out.audio_sha256)
        files = writer.write_ok(out, key, job.date, job.meta)
        yield Written(cid, key, job.date, tuple(files), out.audio_s, out.summary.height, worker)
    for j in jobs:
        if j.call.call_id not in done:
            yield Skipped(j.call.call_id)


class LocalEngine:
    """This process: one scorer, decoding in a thread while onnxruntime runs (the default)."""

    name = "local"

    def __init__(self) -> None:
        self._scorer: Scorer | None = None

    def start(self, scorer: Scorer, source: Path, out: Path) -> None:
        self._scorer = scorer

    def run(self, jobs: list[CallJob], writer: CallWriter) -> Iterator[JobResult]:
        assert self._scorer is not None, "start() first"
        yield from score_jobs(self._scorer, jobs, writer)

    def providers(self) -> tuple[str, str]:
        assert self._scorer is not None, "start() first"
        return ",".join(self._scorer.model.providers), self._scorer.model.device_note

    def close(self) -> None:
        pass


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
