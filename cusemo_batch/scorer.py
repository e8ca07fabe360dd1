"""Score calls with an exported CRNN: decode -> compress silence -> batched streaming ONNX -> tracks.

Library API (no store, no CLI)::

    from cusemo_batch.scorer import Scorer
    result = Scorer().score_folder("calls/")        # embedded default model, CPU or CUDA
    result.timeseries, result.calls, result.events, result.errors   # polars DataFrames

Per speaker: the audio is decoded at the model's rate, long silences (> 3 s) are compressed to 1 s
as in training (with a :class:`~cusemo_batch.silence.TimeMap`), normalised as the model's metadata
says, and run through the streaming graph in fixed chunks with the LSTM state carried, several
speakers at once (sorted by length, zero-padded: padding cannot leak backwards through a forward
LSTM). Frame outputs are mapped back to *original call time* and averaged into ``rate`` windows;
each window also gets the fraction of it in which the speaker speaks. Decoding of the next calls
runs in a thread while the current batch is in onnxruntime (both release the GIL).

Any failure of one call becomes a :class:`~cusemo_batch.calls.CallError` for that call; the
others go on.
"""

from __future__ import annotations

import hashlib
import os
import queue
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import polars as pl

from . import changes, silence
from .audio import AudioError, load_channels, normalise
from .level import active_level_db, clipped_fraction
from .calls import Call, CallError, RTTMError, SpeakerSource, calls_from_files, discover
from .rttm import keep_speaker_regions
from .files import sha256_file
from .metadata import join_metadata, read_metadata
from .model import Model, ModelError
from .options import ScoreOptions
from .schema import CALL_ERROR_SCHEMA
from .text import first_line
from .silence import VAD_FRAME_S
from .windows import SpeakerAudio, speaker_windows

__all__ = ["Scorer", "ScoreOptions", "Result", "CallOutcome", "DEFAULT_MODEL", "join_metadata", "errors_frame"]

DEFAULT_MODEL = Path(__file__).parent / "models" / "cusemo-default.onnx"
FIRST_WAVE_S = 120.0  # audio seconds in the first inference wave (pipeline fill)


@dataclass
class DecodedCall:
    call: Call
    audio_sha256: str
    speakers: list[SpeakerAudio]


@dataclass
class CallOutcome:
    call: Call
    audio_sha256: str = ""
    timeseries: pl.DataFrame | None = None
    events: pl.DataFrame | None = None
    summary: pl.DataFrame | None = None
    error: CallError | None = None
    audio_s: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class Result:
    """What an in-memory scoring returns: the four tables of the store, as polars DataFrames.

    Columns as in docs/schema.md (without the run columns the nightly job adds).

    Examples
    --------
    >>> import cusemo_batch as cb
    >>> r = cb.score_folder("examples/calls", device="cpu")
    >>> r.calls.height >= 4, r.errors.height
    (True, 0)
    """

    timeseries: pl.DataFrame
    calls: pl.DataFrame
    events: pl.DataFrame
    errors: pl.DataFrame


ERROR_SCHEMA = CALL_ERROR_SCHEMA


def errors_frame(errors: Iterable[CallError]) -> pl.DataFrame:
    return pl.DataFrame([asdict(e) for e in errors], schema=ERROR_SCHEMA)


def audio_hash(call: Call) -> str:
    """sha256 over the bytes of every file the call is read from (audio and RTTM)."""
    h = hashlib.sha256()
    for p in sorted(call.files):
        h.update(sha256_file(p).encode())
    return h.hexdigest()


class Scorer:
    """Batch scorer over one ONNX model: decode, condition, infer, pool, analyse (module docstring).

    One instance holds one onnxruntime session, so reuse it for many folders; its
    :meth:`score_folder` / :meth:`score_files` return results in memory, ``cusemo-batch score``
    (:func:`cusemo_batch.score_nightly`) stores them.

    Parameters
    ----------
    model : a model file, a :class:`Model`, or None for the embedded default.
    device : ``auto``, ``cpu`` or ``cuda`` (as :func:`cusemo_batch.load_model`).
    threads : onnxruntime intra-op threads (default: all cores).
    options : :class:`ScoreOptions` (default: the nightly job's defaults).

    Examples
    --------
    >>> import cusemo_batch as cb
    >>> s = cb.Scorer(device="cpu", options=cb.ScoreOptions.make(rate_s=1.0))
    >>> r = s.score_files(["examples/calls/negative_end.flac"])
    >>> float(r.timeseries["t_end_s"][0] - r.timeseries["t_start_s"][0])
    1.0
    """

    def __init__(self, model: str | Path | Model | None = None, device: str = "auto",
                 threads: int | None = None, options: ScoreOptions | None = None) -> None:
        self.options = options or ScoreOptions()
        self.options.validate()  # cheap, and before the model's device messages
        if isinstance(model, Model):
            self.model = model
        else:
            path = Path(model) if model is not None else DEFAULT_MODEL
            if model is None and not path.is_file():
                raise ModelError(f"no embedded default model in this install ({path}); pass a model file")
            self.model = Model(path, device=device, threads=threads)
        m = self.model
        if m.outputs[:2] != ("valence", "arousal"):
            raise ModelError(f"{m.path}: first outputs must be valence and arousal, got {m.outputs}")
        m.check_stream()  # a broken model family fails here, before any call (or output) is touched
        self._lane_models: list[Model] = []  # see _lanes

    @property
    def model_id(self) -> str:
        return f"{self.model.name}@{self.model.version}"

    # ------------------------------------------------------------------------------ decoding
    def decode(self, call: Call, audio_sha256: str | None = None) -> DecodedCall:
        """Decode and condition every speaker of a call (raises AudioError/RTTMError/ValueError)."""
        sha = audio_sha256 or audio_hash(call)
        decoded: dict[Path, np.ndarray] = {}  # speakers sharing a file (stereo, RTTM) decode it once
        speakers = []
        for _, src in sorted(call.speakers.items()):
            if src.path not in decoded:
                decoded[src.path] = load_channels(src.path, self.model.sample_rate)
            channels = decoded[src.path]
            if src.channel is not None and not 0 <= src.channel < len(channels):
                raise AudioError(f"{src.path}: has {len(channels)} channel(s), channel {src.channel} requested")
            x = channels[src.channel] if src.channel is not None else (
                channels[0] if len(channels) == 1 else channels.mean(axis=0))
            speakers.append(self._condition_speaker(src, np.ascontiguousarray(x, dtype=np.float32)))
        return DecodedCall(call, sha, speakers)

    def _condition_speaker(self, src: SpeakerSource, x: np.ndarray) -> SpeakerAudio:
        """RTTM selection, VAD, silence compression and normalisation of one speaker's audio."""
        m, o = self.model, self.options
        duration = len(x) / m.sample_rate
        if len(x) < m.hop:
            raise TooShortError(f"speaker {src.speaker}: {duration:.3f} s of audio is shorter than one model "
                                f"frame ({m.hop / m.sample_rate:.3f} s)")
        if src.rttm is not None:
            x = keep_speaker_regions(x, m.sample_rate, src.rttm, src.rttm_labels, duration)
        speech = silence.detect_speech(x, m.sample_rate, VAD_FRAME_S)
        if not speech.any():
            raise NoSpeechError(f"speaker {src.speaker}: no speech detected in {duration:.1f} s of audio")
        speech_s = float(speech.sum()) * silence.frame_hop(m.sample_rate, VAD_FRAME_S) / m.sample_rate
        if speech_s < o.min_speech_s:
            raise TooShortError(f"speaker {src.speaker}: {speech_s:.2f} s of speech, less than the minimum of "
                                f"{o.min_speech_s:g} s (min_speech_s / --min-speech)")
        if o.compress_silence:
            per_sample = np.repeat(speech, silence.frame_hop(m.sample_rate, VAD_FRAME_S))[: len(x)]
            if per_sample.size < len(x):
                per_sample = np.pad(per_sample, (0, len(x) - per_sample.size))
            y, tmap = silence.compress_silence(x, m.sample_rate, o.min_silence_s, o.keep_silence_s, speech=per_sample)
        else:
            y, tmap = x, silence.TimeMap.identity(duration)
        if len(y) < m.hop:
            raise TooShortError(f"speaker {src.speaker}: {len(y) / m.sample_rate:.3f} s of audio is shorter "
                                f"than one model frame ({m.hop / m.sample_rate:.3f} s)")
        # the line as it arrived (what the level contract then removes), for the calls table
        level_db = active_level_db(y, m.sample_rate)
        return SpeakerAudio(src.speaker, normalise(y, m.normalisation, m.sample_rate, level_db=level_db), tmap,
                            speech, duration, level_db, clipped_fraction(y))

    # ----------------------------------------------------------------------------- inference
    def infer(self, items: list[SpeakerAudio]) -> list[dict[str, np.ndarray]]:
        """Frames for each item, batching items of similar length through the streaming graph."""
        m, o = self.model, self.options
        order = sorted(range(len(items)), key=lambda i: len(items[i].audio))
        budget = o.batch_seconds * m.sample_rate
        # A row's numbers must not depend on its batch-mates (same audio -> same stored rows): a
        # model with per-batch activation scales (dynamic int8) runs one row at a time. Measured on
        # the default int8 model, 30 calls on 2 cores: 4.0 s in batches of 4, 4.4 s one at a time.
        rows = o.max_batch if m.batch_invariant else 1
        groups: list[list[int]] = []
        i = 0
        while i < len(order):
            j = i + 1
            # grow the batch while the padded size (longest x count) stays within budget
            while j < len(order) and j - i < rows and len(items[order[j]].audio) * (j - i + 1) <= budget:
                j += 1
            groups.append(order[i:j])
            i = j
        out: list[dict[str, np.ndarray] | None] = [None] * len(items)

        def run(model: Model, g: list[int]) -> None:
            for k, frames in zip(g, self._infer_group(model, [items[k] for k in g])):
                out[k] = frames

        lanes = self._lanes(len(groups))
        # A group longer than a lane's fair share (a 2 h call among short ones) runs first on the
        # multi-threaded session: on one lane thread it would leave the other lanes idle at the end.
        size = [len(items[g[-1]].audio) * len(g) for g in groups]  # padded samples of each group
        share = sum(size) / max(len(lanes), 1)
        rest = []
        for g, n in zip(groups, size):
            if len(lanes) < 2 or n > share:
                run(m, g)
            else:
                rest.append(g)
        if rest:
            todo: queue.SimpleQueue[list[int]] = queue.SimpleQueue()
            for g in sorted(rest, key=lambda g: -len(items[g[-1]].audio)):  # longest first
                todo.put(g)

            def work(lane: Model) -> None:
                while True:
                    try:
                        g = todo.get_nowait()
                    except queue.Empty:
                        return
                    run(lane, g)

            with ThreadPoolExecutor(max_workers=len(lanes), thread_name_prefix="lane") as pool:
                for f in [pool.submit(work, lane) for lane in lanes]:
                    f.result()
        return out  # type: ignore[return-value]

    def _lanes(self, n_groups: int) -> list[Model]:
        """Single-threaded sessions that score different calls at once (empty: don't).

        A model that runs one row at a time (dynamic int8: see ``rows`` above) cannot use a second
        core by batching, and onnxruntime's intra-op threads split each small LSTM step of one row
        with a sync per step. Whole calls on separate single-threaded sessions use the cores
        without either: each row is still computed alone, and onnxruntime's CPU kernels give the
        same bytes on 1 thread as on N (tested), so the stored numbers do not change. Measured
        (v10 int8, 24 tracks, 1710 s of speech, 2 cores, model only): one 2-thread session 0.73 s,
        two 1-thread lanes 0.55 s. CPU only; batch-invariant models keep their batches.
        """
        m = self.model
        want = m.threads or os.cpu_count() or 1
        if m.batch_invariant or m.providers[0] != "CPUExecutionProvider" or want < 2 or n_groups < 2:
            return []
        n = min(want, n_groups)  # open only the sessions this wave can use
        while len(self._lane_models) < n:
            lane = Model(m.path, device="cpu", threads=1)
            lane.check_stream()
            self._lane_models.append(lane)
        return self._lane_models[:n]

    def _infer_group(self, m: Model, group: list[SpeakerAudio]) -> list[dict[str, np.ndarray]]:
        """One batch (rows of similar length, zero-padded) through the streaming graph of ``m``."""
        longest = max(len(g.audio) for g in group)
        if len(group) == 1:  # a long call alone: no padded copy of hours of audio
            batch = group[0].audio[None, :]
        else:
            batch = np.zeros((len(group), longest), np.float32)
            for r, g in enumerate(group):
                batch[r, : len(g.audio)] = g.audio
        frames = m.infer_stream(batch, chunk_frames=max(1, int(self.options.chunk_s * m.frame_rate)))
        return [{name: v[r, : len(g.audio) // m.hop] for name, v in frames.items()} for r, g in enumerate(group)]

    # ------------------------------------------------------------------------- to call time
    def timeseries(self, call_id: str, item: SpeakerAudio, frames: dict[str, np.ndarray]) -> pl.DataFrame:
        """Frame outputs -> ``rate`` windows in original call time, with the speech ratio."""
        m = self.model
        return speaker_windows(call_id, item, frames, m.outputs, m.frame_rate, m.sample_rate, self.options.rate_s)

    # ------------------------------------------------------------------------------ pipeline
    def iter_outcomes(self, calls: list[Call], skip=None) -> Iterator[CallOutcome]:
        """Score calls in order; decoding runs ``prefetch`` calls ahead in a thread.

        ``skip(call, audio_sha256) -> bool`` lets the nightly job skip unchanged calls before the
        (expensive) decoding. Yields one outcome per call that is not skipped.
        """
        o = self.options
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="decode") as pool:
            def submit(call: Call) -> Future:
                return pool.submit(self._hash_and_decode, call, skip)

            pending: list[tuple[Call, Future]] = []
            it = iter(calls)
            for call in it:
                pending.append((call, submit(call)))
                if len(pending) >= o.prefetch:
                    break
            # The first wave is small so that inference starts while the decoder is still filling
            # the pipeline; each wave doubles up to ``batch_seconds``.
            full = o.batch_seconds * self.model.sample_rate
            budget = min(full, FIRST_WAVE_S * self.model.sample_rate)
            while pending:
                # take decoded calls until the audio budget of one inference round is reached
                wave: list[tuple[Call, object]] = []
                samples = 0
                while pending and (not wave or samples < budget):
                    call, fut = pending.pop(0)
                    nxt = next(it, None)
                    if nxt is not None:
                        pending.append((nxt, submit(nxt)))
                    res = fut.result()
                    wave.append((call, res))
                    if isinstance(res, DecodedCall):
                        samples += sum(len(s.audio) for s in res.speakers)
                yield from self._run_wave(wave)
                budget = min(full, 2 * budget)

    def _hash_and_decode(self, call: Call, skip):
        try:
            sha = audio_hash(call)
        except OSError as e:
            return CallError(call.call_id, str(call.files[0]), "read", type(e).__name__, first_line(e))
        if skip is not None and skip(call, sha):
            return ("skipped", sha)
        try:
            return self.decode(call, sha)
        except (AudioError, RTTMError, ScoringInputError, ValueError, OSError) as e:
            return CallError(call.call_id, _file_of(e, call), "decode", type(e).__name__, first_line(e))
        except MemoryError:
            return CallError(call.call_id, str(call.files[0]), "decode", "MemoryError", "out of memory while decoding")

    def _run_wave(self, wave) -> Iterator[CallOutcome]:
        decoded = [r for _, r in wave if isinstance(r, DecodedCall)]
        items = [s for d in decoded for s in d.speakers]
        frames: list[dict[str, np.ndarray]] = []
        infer_error: CallError | None = None
        if items:
            try:
                frames = self.infer(items)
            except Exception as e:  # an inference failure must not lose the batch: retry one by one
                infer_error = CallError("", "", "infer", type(e).__name__, first_line(e))
        pos = 0
        results: list[CallOutcome | tuple[DecodedCall, list[dict[str, np.ndarray]]] | None] = []
        for call, res in wave:
            if isinstance(res, CallError):
                results.append(CallOutcome(call, error=res))
                continue
            if isinstance(res, tuple):  # skipped
                results.append(None)
                continue
            n = len(res.speakers)
            call_frames = frames[pos:pos + n]
            pos += n
            if infer_error is not None:
                try:
                    call_frames = self.infer(res.speakers)
                except Exception as e:
                    results.append(CallOutcome(call, res.audio_sha256, error=CallError(
                        call.call_id, str(call.files[0]), "infer", type(e).__name__, first_line(e))))
                    continue
            results.append((res, call_frames))
        # The change analysis runs once over the whole wave (polars' per-call overhead dominates
        # otherwise); if that fails, call by call, so one bad call cannot take the others down.
        todo = [r for r in results if isinstance(r, tuple)]
        analysed: dict[str, CallOutcome] = {}
        if todo:
            try:
                analysed = {o.call.call_id: o for o in self._analyse(todo)}
            except Exception:
                analysed = {}
        for r in results:
            if r is None:
                continue
            if isinstance(r, CallOutcome):
                yield r
                continue
            d, call_frames = r
            if d.call.call_id in analysed:
                yield analysed[d.call.call_id]
                continue
            try:
                yield self._analyse([r])[0]
            except Exception as e:
                yield CallOutcome(d.call, d.audio_sha256, error=CallError(
                    d.call.call_id, str(d.call.files[0]), "analyse", type(e).__name__, first_line(e)))

    def _analyse(self, calls: list[tuple[DecodedCall, list[dict[str, np.ndarray]]]]) -> list[CallOutcome]:
        """Timeseries, events and per-speaker summaries for decoded calls and their frames."""
        cfg = self.options.change_config
        ts = pl.concat([self.timeseries(d.call.call_id, sp, f) for d, frames in calls
                        for sp, f in zip(d.speakers, frames)], how="vertical")
        ts, events, summary = changes.analyse(ts, cfg)
        extra = pl.DataFrame({
            "call_id": [d.call.call_id for d, _ in calls for _ in d.speakers],
            "speaker": [sp.speaker for d, _ in calls for sp in d.speakers],
            "layout": [d.call.layout for d, _ in calls for _ in d.speakers],
            "compressed_s": [len(sp.audio) / self.model.sample_rate for d, _ in calls for sp in d.speakers],
            "input_level_dbfs": [sp.input_level_dbfs for d, _ in calls for sp in d.speakers],
            "clipped_fraction": [sp.clipped_fraction for d, _ in calls for sp in d.speakers],
        })
        summary = summary.join(extra, on=["call_id", "speaker"], how="left")
        by_call = {k[0]: v for k, v in ts.partition_by("call_id", as_dict=True, maintain_order=True).items()}
        ev_by_call = {k[0]: v for k, v in events.partition_by("call_id", as_dict=True, maintain_order=True).items()}
        sum_by_call = {k[0]: v for k, v in summary.partition_by("call_id", as_dict=True, maintain_order=True).items()}
        out = []
        for d, _ in calls:
            cid = d.call.call_id
            out.append(CallOutcome(d.call, d.audio_sha256, by_call[cid], ev_by_call.get(cid, events.clear()),
                                   sum_by_call[cid], None, max(sp.duration_s for sp in d.speakers)))
        return out

    def score_folder(self, path: str | Path) -> Result:
        """Score every call under ``path`` in memory (no store, no skipping).

        Raises MetadataError when ``calls.csv`` / ``calls.parquet`` exists but cannot be used.

        Examples
        --------
        >>> result = Scorer().score_folder("examples/calls")       # doctest: +SKIP
        >>> result.calls.select("call_id", "speaker", "valence_mean")  # doctest: +SKIP
        """
        meta = read_metadata(path)
        calls, errors = discover(path, self.options.discovery)
        return self._collect(calls, errors, list(meta.rows.values()) if meta else [])

    def score_files(self, files: Iterable[str | Path]) -> Result:
        """Score audio files in memory, one call per file (its name without suffix is the call id).

        A stereo file is split by ``options.discovery.channels``, a mono file with a sibling
        ``CALL.rttm`` by its speakers, any other mono file is one speaker
        (``options.discovery.speaker_name``). Bad files become rows of ``Result.errors``.

        Examples
        --------
        >>> Scorer().score_files(["examples/calls/negative_end.flac"]).timeseries  # doctest: +SKIP
        """
        calls, errors = calls_from_files(list(files), self.options.discovery)
        return self._collect(calls, errors, [])

    def _collect(self, calls: list[Call], errors: list[CallError], meta_rows: list[dict[str, str]]) -> Result:
        ts, summaries, events, errs = [], [], [], list(errors)
        for out in self.iter_outcomes(calls):
            if out.ok:
                ts.append(out.timeseries)
                summaries.append(out.summary)
                events.append(out.events)
            else:
                errs.append(out.error)
        calls_df = pl.concat(summaries, how="diagonal_relaxed") if summaries else pl.DataFrame()
        if calls_df.height:  # the stored table's columns: call_date, metadata (`{}` when not listed)
            calls_df = join_metadata(calls_df, meta_rows)
        return Result(
            pl.concat(ts, how="diagonal_relaxed") if ts else pl.DataFrame(),
            calls_df,
            pl.concat(events, how="diagonal_relaxed") if events else pl.DataFrame(),
            errors_frame(errs),
        )


class ScoringInputError(ValueError):
    """A call that is readable but cannot be scored (no speech, too short, bad RTTM)."""


class NoSpeechError(ScoringInputError):
    pass


class TooShortError(ScoringInputError):
    pass


def _file_of(e: BaseException, call: Call) -> str:
    msg = str(e)
    for p in call.files:
        if msg.startswith(str(p)):
            return str(p)
    return str(call.files[0])
