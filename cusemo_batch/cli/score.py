"""``cusemo-batch score CALLS --out OUT``: the nightly job (runtime only: onnxruntime, never torch)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import click

from cusemo_batch.options import ScoreOptions

from .common import UserError, console, discovery_from, discovery_options, err_console

# The options' defaults live in their dataclasses; the flags show and use the same values.
_OPTS = ScoreOptions()

EXIT_HELP = """
\b
Exit codes (for schedulers):
  0  every call scored or skipped (unchanged since the last run)
  1  some calls failed: see OUT/errors (the others were scored)
  2  usage or configuration error (bad flags, unreadable CALLS, OUT not writable, bad model)
  3  OUT is locked by another running cusemo-batch score
  4  no calls found under CALLS (an empty or unmounted folder?); nothing scored
  5  OUT could not be written (disk full, I/O error): the night stopped; what was written is whole
  6  --engine ray: the Ray cluster failed mid-run (lost, workers kept dying, a node writing to
     another OUT); what was written is whole, the next run completes the night
Options, the model, --manifest and the Ray cluster are checked before OUT is touched: exit 2
leaves OUT as it was.
A call that fails keeps the rows of its last good result (marked with last_error_at).
"""


def _private_ort_cache() -> None:
    """Keep onnxruntime's side files out of the user's home and the shared temp folder.

    onnxruntime writes ``$XDG_CACHE_HOME/Microsoft/DeveloperTools/.onnxruntime/{deviceid,
    onnxruntime.db}`` (``~/.cache`` by default) and ``$TMPDIR/.ses`` whenever it creates its
    environment, whatever ``disable_telemetry_events()`` says (measured with onnxruntime 1.31). A
    nightly job should write under OUT and nowhere else, so ``score`` points both variables at a
    temporary folder that is removed when the process exits (only this process and its children
    see them; Python's own ``tempfile`` keeps the folder it already chose). A run killed with
    SIGKILL cannot remove its folder; the folder's name carries the pid, and the next ``score``
    removes the folders of processes that no longer exist.
    """
    import atexit
    import os
    import shutil
    import tempfile

    if "onnxruntime" in sys.modules:  # too late: its environment already exists
        return
    base = Path(tempfile.gettempdir())
    for stale in base.glob(f"{_ORT_PREFIX}*-*"):
        pid = stale.name[len(_ORT_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not stale.is_symlink() and stale.is_dir() \
                and stale.stat().st_uid == os.getuid() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = tempfile.mkdtemp(prefix=f"{_ORT_PREFIX}{os.getpid()}-")
    os.environ["XDG_CACHE_HOME"] = os.environ["TMPDIR"] = tmp
    atexit.register(shutil.rmtree, tmp, True)


_ORT_PREFIX = "cusemo-ort-"


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, someone else's
        return True
    return True


def _engine(engine: str, address: str | None, workers: int | None, cpus_per_worker: float, gpus_per_worker: float,
            device: str, threads: int | None):
    """The local engine, or a Ray engine (imported only here: the local path never imports Ray)."""
    from cusemo_batch.engine import LocalEngine

    if engine == "local":
        return LocalEngine()
    from cusemo_batch.engine_ray import RayEngine, RaySettings

    return RayEngine(RaySettings(address=address, workers=workers, cpus_per_worker=cpus_per_worker,
                                 gpus_per_worker=gpus_per_worker, device=device, threads=threads))


# A click command: its length is the flag list, the options it builds and the exit-code mapping;
# the work is run_nightly's.
@click.command(epilog=EXIT_HELP)
@click.argument("calls_dir", metavar="[CALLS]", required=False,
                type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder (hive-partitioned Parquet tables).")
@click.option("--manifest", "call_list", type=click.Path(dir_okay=False, path_type=Path),
              help="Score the calls listed in this file (.csv, .parquet or .jsonl: call_id, files, optional "
                   "rttm, roles, channels, metadata columns) instead of walking CALLS.")
@click.option("--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: this process. ray: an actor pool on a Ray cluster (pip install 'cusemo-batch[ray]').")
@click.option("--address", help="--engine ray: the cluster (auto = the one this node joined, or HOST:PORT). "
                                "Default: a Ray instance on this machine for this run.")
@click.option("--workers", type=click.IntRange(min=1),
              help="--engine ray: scoring actors (default: as many as the cluster's CPUs/GPUs hold).")
@click.option("--cpus-per-worker", type=click.FloatRange(min=0.01), default=1.0, show_default=True,
              help="--engine ray: CPUs per actor (onnxruntime threads follow unless --threads).")
@click.option("--gpus-per-worker", type=click.FloatRange(min=0.0), default=0.0, show_default=True,
              help="--engine ray: GPUs per actor; fractions share a GPU (0.25 = four actors per GPU).")
@click.option("--model", "-m", type=click.Path(dir_okay=False, path_type=Path),
              help="Exported model (NAME.onnx). Default: the embedded model.")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto = CUDA when onnxruntime can use it, else CPU.")
@click.option("--threads", type=click.IntRange(min=1), help="onnxruntime intra-op threads (default: all cores).")
@click.option("--batch-seconds", type=click.FloatRange(min=1), default=_OPTS.batch_seconds, show_default=True,
              help="Audio seconds (padded) per inference batch; bounds memory.")
@click.option("--rate", type=click.FloatRange(min=0.05), default=_OPTS.rate_s, show_default=True,
              help="Timeseries window in seconds (0.5 = the annotation rate).")
@discovery_options("score")
@click.option("--config", "config_path", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="TOML with change-detection thresholds (see cusemo_batch/config/changes.toml).")
@click.option("--compress-silence/--no-compress-silence", default=_OPTS.compress_silence, show_default=True,
              help="Compress silences as in training (> --min-silence s -> --keep-silence s).")
@click.option("--min-silence", type=click.FloatRange(min=0.1), default=_OPTS.min_silence_s, show_default=True)
@click.option("--keep-silence", type=click.FloatRange(min=0.0), default=_OPTS.keep_silence_s, show_default=True)
@click.option("--force", is_flag=True, help="Rescore calls even when unchanged since the last run.")
@click.option("--strict-roles", is_flag=True,
              help="An RTTM label that no --roles entry maps makes its call an error (default: a warning, "
                   "and the speaker keeps the label as its name).")
@click.option("--min-speech", type=click.FloatRange(min=0.0), default=_OPTS.min_speech_s, show_default=True,
              help="Seconds of detected speech a speaker needs; less is an error row (TooShortError).")
@click.option("--log-format", type=click.Choice(["text", "json"]), default="text", show_default=True,
              help="text: timestamped lines when not on a terminal; json: one object per line "
                   "(time, level, run_id, call_id, stage, message).")
@click.option("--verbose", "-v", is_flag=True, help="Log a line per call (scored, skipped).")
def score(calls_dir: Path | None, out: Path, call_list: Path | None, engine: str, address: str | None,
          workers: int | None, cpus_per_worker: float, gpus_per_worker: float, model: Path | None, device: str,
          threads: int | None, batch_seconds: float,
          rate: float, layout: str, channels: str, roles: str, speaker_name: str, speakers: str,
          config_path: Path | None, compress_silence: bool, min_silence: float, keep_silence: float,
          force: bool, follow_symlinks: bool, strict_roles: bool, min_speech: float, log_format: str,
          verbose: bool) -> None:
    """Score every call under CALLS (or listed in --manifest) into Parquet tables under OUT.

    Calls are stereo files, per-speaker files, mono + RTTM, or mono (one speaker), mixed freely.
    Writes OUT/{timeseries,calls,events,errors,runs}/date=YYYY-MM-DD/*.parquet. Unchanged calls
    are skipped on re-runs; a bad call becomes one row in OUT/errors and the run goes on.
    """
    if (calls_dir is None) == (call_list is None):
        raise click.UsageError("give CALLS or --manifest FILE (one of them)")
    ray_flags = {"--address": address, "--workers": workers, "--cpus-per-worker": cpus_per_worker != 1.0 or None,
                 "--gpus-per-worker": gpus_per_worker or None}
    if engine != "ray" and any(v is not None for v in ray_flags.values()):
        raise click.UsageError(f"{next(k for k, v in ray_flags.items() if v is not None)} needs --engine ray")
    _private_ort_cache()
    from cusemo_batch import changes, oplog
    from cusemo_batch.model import ModelError
    from cusemo_batch.scorer import Scorer

    oplog.configure(log_format, verbose)
    if keep_silence >= min_silence and compress_silence:
        raise click.BadParameter("--keep-silence must be shorter than --min-silence")
    try:
        opts = ScoreOptions(
            rate_s=rate, compress_silence=compress_silence, min_silence_s=min_silence, keep_silence_s=keep_silence,
            discovery=discovery_from(layout, channels, roles, speaker_name, speakers, follow_symlinks,
                                     strict_roles=strict_roles),
            change_config=changes.load_change_config(config_path), batch_seconds=batch_seconds,
            min_speech_s=min_speech)
        # --engine ray: the driver only checks the model and names it; the workers run it
        scorer = Scorer(model, device="cpu" if engine == "ray" else device, threads=1 if engine == "ray" else threads,
                        options=opts)
        where = "Ray workers" if engine == "ray" else ", ".join(scorer.model.providers)
        runner = _engine(engine, address, workers, cpus_per_worker, gpus_per_worker, device, threads)
    except (ModelError, OSError, ValueError) as e:
        raise UserError(str(e)) from None
    console.print(f"model {scorer.model_id} ({scorer.model.sha256[:12]}) on {where}")

    _run_and_exit(calls_dir, out, scorer, runner, force=force, call_list=call_list)


def _run_and_exit(calls_dir: Path | None, out: Path, scorer, runner, *, force: bool, call_list: Path | None) -> None:
    """Run the night, print its summary and exit with the code the scheduler reads (docs/operations.md)."""
    from cusemo_batch.calls import MetadataError
    from cusemo_batch.nightly import EngineFailed, EngineUnavailable, run_nightly
    from cusemo_batch.store import LockedError, StoreError, StoreWriteError
    from rich.markup import escape

    try:
        summary = _run_with_progress(
            lambda on_call, on_start: run_nightly(calls_dir, out, scorer, force=force, call_list=call_list,
                                                  engine=runner, on_call=on_call, on_start=on_start))
    except LockedError as e:
        err_console.print(f"error: {e}")
        sys.exit(3)
    except StoreWriteError as e:
        err_console.print(f"error: {escape(str(e))}", soft_wrap=True)
        sys.exit(5)
    except EngineFailed as e:
        err_console.print(f"error: {escape(str(e))}", soft_wrap=True)
        sys.exit(6)
    except (StoreError, MetadataError, EngineUnavailable) as e:
        raise UserError(str(e)) from None
    console.print(
        f"{summary.scored} scored, {summary.skipped} skipped, {summary.failed} failed of {summary.calls_found} "
        f"calls; {summary.audio_s / 3600:.2f} h of audio in {summary.wall_s:.1f} s "
        f"({summary.x_real_time:.0f}x real time)")
    console.print(f"Parquet tables in {out}/{{timeseries,calls,events,errors,runs}}")
    if summary.failed:
        console.print(f"see errors: duckdb -c \"select call_id, stage, error, message from '{out}/errors/**/*.parquet'\"")
    sys.exit(summary.exit_code)


class _Progress:
    """Per-call progress: a live bar on a terminal, a log line every 30 s otherwise (cron, CI)."""

    def __init__(self) -> None:
        import logging

        self.log = logging.getLogger("cusemo_batch.cli")
        self.started = self.last_log = time.perf_counter()
        self.n, self.audio_s = 0, 0.0

    def call_done(self, outcome) -> None:
        self.n += 1
        self.audio_s += outcome.audio_s
        now = time.perf_counter()
        if not console.is_terminal and now - self.last_log >= 30:
            self.last_log = now
            self.log.info("progress: %d calls, %.2f h of audio, %.0f s", self.n, self.audio_s / 3600,
                          now - self.started, extra={"stage": "progress"})


def _run_with_progress(run):
    """``run(on_call, on_start)`` with the progress display this output calls for."""
    state = _Progress()
    if not console.is_terminal:
        return run(state.call_done, None)
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("scoring"), BarColumn(), MofNCompleteColumn(), TextColumn("calls"),
                  TextColumn("{task.fields[hours]:.2f} h audio"), TimeRemainingColumn(),
                  console=console, transient=True) as bar:
        task = bar.add_task("score", total=None, hours=0.0)

        def on_call(outcome) -> None:
            state.call_done(outcome)
            bar.update(task, advance=1, hours=state.audio_s / 3600)

        return run(on_call, lambda n: bar.update(task, total=n))

