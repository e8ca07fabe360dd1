"""Engines: where the per-call work runs, and the descriptors that travel between driver and workers.

The driver (:func:`cusemo_batch.nightly.run_nightly`) turns each call into a :class:`CallJob` (a
call, its partition and what is stored for it); an engine runs :func:`score_jobs` on the jobs and
yields one result per job -- :class:`Written` (the call's files are in place), :class:`Failed` (a
:class:`CallError`; the driver writes the error row) or :class:`Skipped`. :class:`LocalEngine` runs
it in this process; ``cusemo_batch.engine_ray.RayEngine`` in an actor pool on a Ray cluster. Either
way a call's files are written before its result reaches the driver (the order crash safety relies
on), and the stored rows are the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Protocol, Union

from .call_writer import CallWriter
from .calls import Call, CallError
from .scorer import Scorer

class EngineUnavailable(Exception):
    """The engine cannot start (cluster unreachable, workers cannot load the model): exit code 2,
    decided before OUT is touched."""


class EngineFailed(Exception):
    """The engine failed mid-run (the cluster was lost, workers kept dying): exit code 6. What was
    written is whole and recorded; the next run completes the night to the same rows."""




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

    def run(self, jobs: list[CallJob], writer: CallWriter) -> Iterator[JobResult]:
        """Raise :class:`EngineFailed` when the engine itself fails; StoreWriteError when OUT cannot be written."""

    def providers(self) -> tuple[str, str]:
        """onnxruntime providers in use and a device note, for the runs table."""

    def close(self) -> None: ...



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

