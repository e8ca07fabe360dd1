"""``cusemo-batch score --engine ray``: the per-call work of a night on a Ray cluster (Ray Data).

The driver (:func:`cusemo_batch.nightly.run_nightly`, on the machine that runs the command) keeps
discovery, the lock, the manifest, the error rows and the runs row. The calls travel as small
descriptors (:class:`~cusemo_batch.engine.CallJob`: paths, partition, the key of the stored rows
-- never audio bytes) into a Ray Data ``map_batches`` over an actor pool: each actor
(:class:`CallScorer`) holds one :class:`~cusemo_batch.scorer.Scorer` with onnxruntime threads
matched to its CPU share and runs :func:`~cusemo_batch.engine.score_jobs` on its batches -- hash,
skip check, decode, infer, analyse, and write the call's files through the same atomic store code
as the local engine -- and returns one small result per call (written files, error, skipped).
Ray's own ``write_parquet`` is not used: its file names change per run, and a rerun would then
duplicate rows instead of replacing a call's files.

Requirements (checked before OUT is touched, exit code 2): ``ray`` importable (``pip install
'cusemo-batch[ray]'``); the cluster reachable; a worker can start with the requested CPUs/GPUs,
import this same cusemo-batch version, load the same model (same sha256) on the requested device
and see CALLS (or the call list) at the same path. OUT must be the same shared folder on every node
(checked on the first result of every node; a node writing elsewhere stops the night, exit 6).

Worker loss: Ray restarts a dead actor and retries its batch (Ray Data's default for actor pools:
no limit); files are written atomically and the rows of a call depend only on its audio, model and
options, so a batch written twice is the same rows. A batch that kills its worker every time (one
call running out of memory), a lost node whose actors cannot be placed elsewhere, or any other
stall ends the night once Ray Data has seen no progress for ``execution_no_progress_timeout_s``
(30 min by default; ``RAY_DATA_EXECUTION_NO_PROGRESS_TIMEOUT_S``): exit 6, and the next run
completes the night to the same rows. A driver loss ends the night too (the job's actors die with
it); the next run completes it.
"""

from __future__ import annotations

import logging
import math
import os
import pickle
import shutil
import socket
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .call_writer import CallWriter
from .engine import CallJob, EngineFailed, EngineUnavailable, Failed, JobResult, Written, score_jobs
from .scorer import DEFAULT_MODEL, ScoreOptions, Scorer
from .store import StoreWriteError

log = logging.getLogger(__name__)
CALLS_PER_TASK = 8  # calls per map_batches batch: polars and wave overhead amortised, little lost on a death
VISIBLE_RETRY_S = 5.0
UNIX_SOCKET_ROOM = 29  # longest temporary folder under which Ray's session sockets fit (see _short_temp_dir)


@dataclass(frozen=True)
class RaySettings:
    """How to run on Ray (the CLI's --address, --workers, --cpus-per-worker, --gpus-per-worker)."""

    address: str | None = None  # None: a Ray instance on this machine for this run; "auto" or HOST:PORT: a cluster
    workers: int | None = None  # actors; None: as many as the cluster's CPUs (and GPUs) hold
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0  # fractions share a GPU (0.25: four workers per GPU)
    device: str = "auto"  # onnxruntime device on the workers
    threads: int | None = None  # onnxruntime threads per worker; None: its CPU share (at least 1)
    calls_per_task: int = CALLS_PER_TASK
    start_timeout_s: float = 300.0  # the first worker must start within this

    def validate(self) -> None:
        if self.workers is not None and self.workers < 1:
            raise ValueError("--workers must be >= 1")
        if self.cpus_per_worker <= 0 or self.gpus_per_worker < 0:
            raise ValueError("--cpus-per-worker must be > 0 and --gpus-per-worker >= 0")
        if self.gpus_per_worker > 1 and self.gpus_per_worker != int(self.gpus_per_worker):
            raise ValueError("--gpus-per-worker above 1 must be a whole number")
        if self.calls_per_task < 1:
            raise ValueError("calls_per_task must be >= 1")
        if self.device == "cuda" and not self.gpus_per_worker:
            raise ValueError("--device cuda with --engine ray needs --gpus-per-worker (Ray gives GPUs to workers "
                             "that ask for them)")

    @property
    def worker_device(self) -> str:
        """A worker without a GPU share runs on CPU: ``auto`` must not take a GPU Ray gave to another worker."""
        return self.device if self.gpus_per_worker else "cpu"

    @property
    def ort_threads(self) -> int:
        return self.threads or max(1, int(self.cpus_per_worker))


@dataclass(frozen=True)
class WorkerSpec:
    """What every worker needs to build the driver's scorer (picklable)."""

    model_path: str | None  # None: the embedded default model of the worker's install
    model_sha256: str
    device: str
    threads: int
    options: ScoreOptions
    cwd: str  # the driver's working directory: relative paths mean the same on the workers

    def scorer(self) -> Scorer:
        """The worker's scorer; ModelError when its model is not the driver's."""
        from .model import ModelError

        scorer = Scorer(self.model_path, device=self.device, threads=self.threads, options=self.options)
        if scorer.model.sha256 != self.model_sha256:
            raise ModelError(f"the model on {socket.gethostname()} ({scorer.model.path}, sha256 "
                             f"{scorer.model.sha256[:12]}) is not the driver's ({self.model_sha256[:12]}): "
                             "install the same cusemo-batch version, or pass --model on shared storage")
        return scorer


@dataclass(frozen=True)
class WriteFailed:
    """A worker could not write OUT (disk full, I/O error): the driver stops the night (exit 5)."""

    message: str


class CallScorer:
    """The ``map_batches`` class: one per actor, one scorer, batches of pickled CallJobs."""

    def __init__(self, spec: WorkerSpec, writer: CallWriter) -> None:
        if os.path.isdir(spec.cwd):
            os.chdir(spec.cwd)  # this actor's own process
        self.scorer = spec.scorer()
        self.writer = writer
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self.providers = ",".join(self.scorer.model.providers)

    def __call__(self, batch: dict) -> dict:
        jobs = [pickle.loads(b) for b in batch["job"]]
        results: list[JobResult | WriteFailed] = []
        try:
            results.extend(score_jobs(self.scorer, jobs, self.writer, self.worker))
        except StoreWriteError as e:
            results.append(WriteFailed(str(e)))
        return {"result": [pickle.dumps(r) for r in results], "providers": [self.providers] * len(results)}


def probe(spec: WorkerSpec, paths: list[str]) -> dict:
    """What the driver checks on one worker before OUT is touched (runs as a Ray task)."""
    from . import __version__

    out = {"host": socket.gethostname(), "version": __version__, "error": ""}
    try:
        if os.path.isdir(spec.cwd):
            os.chdir(spec.cwd)
        scorer = spec.scorer()
        out["providers"] = ",".join(scorer.model.providers)
        out["device_note"] = scorer.model.device_note
    except Exception as e:  # ModelError, OSError: reported by the driver as exit 2
        out["error"] = f"{type(e).__name__}: {e}"
        return out
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        out["error"] = (f"{missing[0]} does not exist on worker node {out['host']}: CALLS and OUT must be on "
                        "storage every node mounts at the same path")
    return out


class RayEngine:
    """Runs :func:`~cusemo_batch.engine.score_jobs` in a Ray Data actor pool; see the module docstring."""

    name = "ray"

    def __init__(self, settings: RaySettings | None = None) -> None:
        self.settings = settings or RaySettings()
        self.settings.validate()
        self._spec: WorkerSpec | None = None
        self._started_ray = False
        self._providers: set[str] = set()
        self._device_note = ""
        self._visible_nodes: set[str] = set()
        self._local = True
        self._session_dir: str | None = None  # the local instance's session files, removed by close()
        self.workers = 0

    # ------------------------------------------------------------------------------- start
    def start(self, scorer: Scorer, source: Path, out: Path) -> None:
        """Connect, size the pool and probe one worker: EngineUnavailable (exit 2) before OUT is touched."""
        s = self.settings
        self._local = s.address is None and "RAY_ADDRESS" not in os.environ
        if self._local:
            _private_instance_auth()  # before Ray is imported: its token loader reads the environment once
        try:
            import ray
        except ImportError:
            raise EngineUnavailable("--engine ray needs Ray: pip install 'cusemo-batch[ray]'") from None
        self._connect(ray)
        self.workers = self._pool_size(ray.cluster_resources())
        path = scorer.model.path
        model_path = None if path.resolve() == DEFAULT_MODEL.resolve() else str(path.absolute())
        self._spec = WorkerSpec(model_path, scorer.model.sha256, s.worker_device, s.ort_threads, scorer.options,
                                os.getcwd())
        res = self._probe(ray, [str(source.absolute()), str(_existing(out.absolute()))])
        if res["error"]:
            raise EngineUnavailable(f"worker check failed on {res['host']}: {res['error']}")
        from . import __version__

        if res["version"] != __version__:
            raise EngineUnavailable(f"worker node {res['host']} runs cusemo-batch {res['version']}, the driver "
                                    f"{__version__}: install the same version on every node")
        self._providers.add(res["providers"])
        self._device_note = res["device_note"]
        log.info("%s", self.describe(), extra={"stage": "engine"})

    def _connect(self, ray) -> None:
        s = self.settings
        kwargs = dict(include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False,
                      configure_logging=True)
        if s.address not in (None, "auto"):
            _check_reachable(s.address)
        try:
            if ray.is_initialized():  # a library caller's own connection: used, and left open
                pass
            elif self._local:  # a Ray instance for this run only, reachable from this machine alone
                self._session_dir = _short_temp_dir()
                ray.init(_node_ip_address="127.0.0.1", _temp_dir=self._session_dir, **kwargs)
                self._started_ray = True
            else:  # --address, or RAY_ADDRESS
                ray.init(address=s.address, **kwargs)
                self._started_ray = True
        except Exception as e:  # ConnectionError, RuntimeError, ValueError from a bad address
            raise EngineUnavailable(f"cannot connect to Ray at {self._where()}: {_first_line(e)}") from None
        from ray.data import DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False
        ctx.print_on_execution_start = False
        ctx.enable_auto_log_stats = False
        ctx.execution_options.preserve_order = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)  # "progress bars disabled" and other chatter

    def _pool_size(self, resources: dict) -> int:
        """--workers, or what the cluster holds; EngineUnavailable when not even one worker fits."""
        s = self.settings
        cpus, gpus = float(resources.get("CPU", 0)), float(resources.get("GPU", 0))
        fits = math.floor(cpus / s.cpus_per_worker + 1e-9)
        if s.gpus_per_worker > 0:
            fits = min(fits, math.floor(gpus / s.gpus_per_worker + 1e-9))
        need = f"{s.cpus_per_worker:g} CPU" + (f" and {s.gpus_per_worker:g} GPU" if s.gpus_per_worker else "")
        if fits < 1:
            raise EngineUnavailable(f"the Ray cluster ({cpus:g} CPU, {gpus:g} GPU) cannot hold one worker of {need}")
        if s.workers is not None and s.workers > fits:
            raise EngineUnavailable(f"--workers {s.workers} x {need} does not fit the Ray cluster ({cpus:g} CPU, "
                                    f"{gpus:g} GPU): at most {fits}")
        return s.workers or fits

    def _probe(self, ray, paths: list[str]) -> dict:
        s = self.settings
        task = ray.remote(num_cpus=s.cpus_per_worker, num_gpus=s.gpus_per_worker or None, max_retries=0)(probe)
        ref = task.remote(self._spec, paths)
        try:
            return ray.get(ref, timeout=s.start_timeout_s)
        except ray.exceptions.GetTimeoutError:
            ray.cancel(ref, force=True)
            raise EngineUnavailable(f"no Ray worker with {s.cpus_per_worker:g} CPU / {s.gpus_per_worker:g} GPU "
                                    f"started within {s.start_timeout_s:g} s") from None
        except Exception as e:  # the package missing on a node, a worker crash
            raise EngineUnavailable(f"a Ray worker could not run cusemo-batch: {_first_line(e)}") from None

    # --------------------------------------------------------------------------------- run
    def run(self, jobs: list[CallJob], writer: CallWriter) -> Iterator[JobResult]:
        """Results as the workers return them; EngineFailed when Ray fails, StoreWriteError when OUT does."""
        if not jobs:
            return
        rows = self._rows(jobs, writer)
        seen: set[str] = set()  # a block Ray recomputed after a loss must not count a call twice
        while True:
            try:
                row = next(rows)
            except StopIteration:
                return
            except Exception as e:  # a Ray error: the cluster lost, workers failing to start or dying
                raise EngineFailed(f"the Ray scoring failed: {type(e).__name__}: {_first_line(e)}") from None
            result = pickle.loads(row["result"])
            if isinstance(result, WriteFailed):
                raise StoreWriteError(result.message)
            self._providers.add(str(row["providers"]))
            cid = result.error.call_id if isinstance(result, Failed) else result.call_id
            if cid in seen:
                continue
            seen.add(cid)
            if isinstance(result, Written):
                self._check_shared(result, writer.store.root)
            yield result

    def _rows(self, jobs: list[CallJob], writer: CallWriter) -> Iterator[dict]:
        """The Ray Data pipeline: pickled jobs -> map_batches(CallScorer) in an actor pool -> result rows."""
        import ray
        from ray.data import ActorPoolStrategy

        assert self._spec is not None, "start() first"
        s = self.settings
        # batches small enough that every worker gets several (the tail of the night stays balanced)
        per_task = max(1, min(s.calls_per_task, math.ceil(len(jobs) / (2 * self.workers))))
        items = [{"job": pickle.dumps(j)} for j in jobs]
        try:
            ds = ray.data.from_items(items, override_num_blocks=math.ceil(len(items) / per_task))
            ds = ds.map_batches(
                CallScorer, fn_constructor_kwargs={"spec": self._spec, "writer": writer.for_worker()},
                batch_size=per_task, batch_format="numpy", compute=ActorPoolStrategy(size=self.workers),
                num_cpus=s.cpus_per_worker, num_gpus=s.gpus_per_worker or None)
            return iter(ds.iter_rows())
        except Exception as e:
            raise EngineFailed(f"Ray could not start the scoring: {_first_line(e)}") from None

    def _check_shared(self, r: Written, root: Path) -> None:
        """The first call each node writes must show in the driver's OUT: one shared folder, not one per node."""
        node = r.worker.rsplit(":", 1)[0]
        if node in self._visible_nodes:
            return
        deadline = time.monotonic() + VISIBLE_RETRY_S
        while not all((root / f).is_file() for f in r.files):
            if time.monotonic() > deadline:
                raise EngineFailed(f"worker node {node} wrote {r.files[-1]} but {root} does not show it: OUT must "
                                   "be one shared folder mounted at the same path on every node")
            time.sleep(0.2)
        self._visible_nodes.add(node)

    def providers(self) -> tuple[str, str]:
        return ",".join(sorted(self._providers)), self._device_note

    def _where(self) -> str:
        if self._local:
            return "a local instance"
        return self.settings.address or os.environ.get("RAY_ADDRESS", "")

    def describe(self) -> str:
        s = self.settings
        gpu = f", {s.gpus_per_worker:g} GPU" if s.gpus_per_worker else ""
        return (f"Ray ({self._where()}): {self.workers} worker(s) x {s.cpus_per_worker:g} CPU{gpu}, "
                f"{s.ort_threads} onnxruntime thread(s) each")

    def close(self) -> None:
        if self._started_ray:
            import ray

            ray.shutdown()
            self._started_ray = False
        if self._session_dir:
            shutil.rmtree(self._session_dir, ignore_errors=True)
            self._session_dir = None


def _private_instance_auth() -> None:
    """Token authentication for a Ray instance started by this run, without Ray's ``~/.ray/auth_token``.

    A new local instance enables token auth and, with no token given, writes one to the home
    folder; the night writes nothing outside OUT, so the token lives in this process's environment
    (inherited by the instance's processes, readable only by this user). A token the operator set
    (``RAY_AUTH_TOKEN`` / ``RAY_AUTH_TOKEN_PATH``) or an explicit ``RAY_AUTH_MODE`` is kept.
    """
    import secrets

    if "RAY_AUTH_MODE" in os.environ or "RAY_AUTH_TOKEN" in os.environ or "RAY_AUTH_TOKEN_PATH" in os.environ:
        return
    os.environ["RAY_AUTH_MODE"] = "token"
    os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """A bounded look at HOST:PORT first: ``ray.init`` retries an unreachable GCS for many minutes."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise EngineUnavailable(f"--address {address!r}: expected auto or HOST:PORT")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s).close()
    except OSError as e:
        raise EngineUnavailable(f"cannot connect to Ray at {address}: {e.strerror or e} (is `ray start --head` "
                                "running there, and the port open?)") from None


def _short_temp_dir() -> str:
    """A private folder for a local instance's session files, in the temporary folder (``score``'s
    private one, removed at exit) when its path is short enough: Ray puts Unix sockets up to 77
    characters below ``ray-XXXXXXXX``'s parent (``session_<date>_<time>_<pid>/sockets/plasma_store``),
    and a socket path has 107 at most."""
    base = os.environ.get("TMPDIR") or tempfile.gettempdir()  # tempfile caches the folder it chose first
    if not os.path.isdir(base) or len(base) > UNIX_SOCKET_ROOM:
        base = "/tmp"
    return tempfile.mkdtemp(prefix="ray-", dir=base)


def _existing(p: Path) -> Path:
    """``p`` or its nearest existing parent (OUT may not exist yet: the workers must see where it will be)."""
    while not p.exists() and p.parent != p:
        p = p.parent
    return p


def _first_line(e: BaseException) -> str:
    from .text import first_line

    return first_line(e)
