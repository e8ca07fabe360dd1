"""Runtime side of an exported CusEmo CRNN: load the ONNX pair, read its metadata, run it.

Needs only numpy and onnxruntime -- never torch or onnx -- so scoring machines stay light.

An exported model is a *file family* (written by ``cusemo-batch export``):

* ``NAME.onnx`` -- whole pass. Input ``audio`` ``[batch, samples]`` float32, unpadded, at
  ``sample_rate``; the graph zero-pads internally. Outputs: one ``[batch, frames]`` tensor per head
  (``valence``, ``arousal``, then any auxiliary heads), ``frames = samples // hop``; frame ``i``
  describes samples ``[i*hop, (i+1)*hop)``.
* ``NAME.stream.onnx`` -- one streaming step. Inputs ``audio`` = the chunk *with its context*
  (padded-waveform samples ``[a*hop, b*hop + receptive_field - hop)`` for frames ``[a, b)``),
  ``h0``/``c0`` ``[lstm_layers, batch, lstm_hidden]``; outputs the heads for frames ``[a, b)`` plus
  ``hn``/``cn``. Feeding consecutive chunks with the carried state equals the whole pass.

Both files carry the same ``metadata_props`` (see :data:`REQUIRED_KEYS`); the whole graph also names
its stream file and that file's sha256, so a mismatched pair is detected on first use.

The caller applies the input normalisation named by :attr:`Model.normalisation` (see
:func:`cusemo_batch.audio.normalise`) per call before inference: ``rms`` needs the whole call, so it
cannot live inside a chunked graph.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from cusemo_batch.files import sha256_file
from cusemo_batch.text import first_line

log = logging.getLogger(__name__)

FORMAT = "cusemo-onnx/1"
DEVICES = ("auto", "cpu", "cuda")
# Audio per streaming step (per batch row). int8 models quantize activations per chunk, and longer
# chunks lose resolution on quiet passages; the scorer and the int8 calibration use the same value
# (measurements at ScoreOptions.chunk_s in scorer.py).
DEFAULT_CHUNK_S = 3.0
# Keys the runtime relies on; export writes more (training data, CCC, versions, dates...).
REQUIRED_KEYS = (
    "format", "name", "version", "graph", "sample_rate", "hop", "receptive_field", "pad_left",
    "pad_right", "lstm_layers", "lstm_hidden", "outputs", "normalisation", "quantized",
)
_CPU = "CPUExecutionProvider"
_CUDA = "CUDAExecutionProvider"


class ModelError(Exception):
    """A file is not a usable cusemo ONNX model, or inputs do not fit it. One-line message.

    Examples
    --------
    >>> import cusemo_batch as cb
    >>> try:
    ...     cb.load_model("examples/calls/calls.csv")
    ... except cb.ModelError as e:
    ...     print("not a model")
    not a model
    """


def stream_path_for(path: str | Path) -> Path:
    """``NAME.onnx`` -> ``NAME.stream.onnx`` (the streaming graph of the same family)."""
    path = Path(path)
    if path.suffix != ".onnx" or path.name.endswith(".stream.onnx"):
        raise ModelError(f"{path}: model file names must end in .onnx (and not .stream.onnx)")
    return path.with_name(path.name[: -len(".onnx")] + ".stream.onnx")


def _providers_for(device: str) -> list[str]:
    if device not in DEVICES:
        raise ModelError(f"unknown device {device!r}; expected one of {', '.join(DEVICES)}")
    import onnxruntime as ort

    if device == "cpu":
        return [_CPU]
    if _CUDA in ort.get_available_providers():
        return [_CUDA, _CPU]
    if device == "cuda":
        raise ModelError("device cuda: this onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu "
                         "and CUDA 12), or use device auto / cpu")
    return [_CPU]


def open_session(path: str | Path, device: str = "cpu", threads: int | None = None) -> Any:
    """Create an onnxruntime session with an explicit provider list; see :func:`open_session_noted`."""
    return open_session_noted(path, device, threads)[0]


def open_session_noted(path: str | Path, device: str = "cpu", threads: int | None = None) -> tuple[Any, str]:
    """An onnxruntime session and a note on the device (empty when it is the one asked for).

    ``cuda`` means CUDA or nothing: a scheduler that asked for GPUs must hear that it did not get
    them (ModelError, exit 2), not find a slow CPU night in the morning. ``auto`` takes CUDA when
    it works and otherwise CPU, with one warning when CUDA was listed but failed (onnxruntime-gpu
    lists ``CUDAExecutionProvider`` even on machines without a GPU or CUDA libraries; creating a
    session with it then either raises or silently drops to CPU). onnxruntime's own console
    errors during the attempt are silenced (its logger severity); the reason is in the note,
    which the nightly job stores in the runs table.
    """
    import onnxruntime as ort

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    wanted = _providers_for(device)
    so = ort.SessionOptions()
    so.log_severity_level = 3  # errors only: ORT's per-node warnings are noise for users
    if threads is not None:
        if threads < 1:
            raise ModelError(f"threads must be >= 1, got {threads}")
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    note = ""
    try:
        if _CUDA in wanted:
            ort.set_default_logger_severity(4)  # the provider's load errors go to the note, not the console
        try:
            session = ort.InferenceSession(str(path), so, providers=wanted)
        except Exception as e:
            if wanted == [_CPU] or "protobuf" in str(e).lower():
                raise
            if device == "cuda":
                raise ModelError(f"{path}: device cuda unavailable ({first_line(e)})") from None
            note = f"CUDA unavailable ({first_line(e)}); running on CPU"
            session = ort.InferenceSession(str(path), so, providers=[_CPU])
    except ModelError:
        raise
    except Exception as e:
        raise ModelError(f"{path}: not a loadable ONNX model ({first_line(e)})") from None
    finally:
        if _CUDA in wanted:
            ort.set_default_logger_severity(2)  # onnxruntime's default (warning)
    used = session.get_providers()
    if _CUDA in wanted and used[0] != _CUDA:
        if device == "cuda":
            raise ModelError(f"{path}: device cuda unavailable (onnxruntime fell back to {used[0]})")
        note = note or f"CUDA unavailable (onnxruntime fell back to {used[0]}); running on CPU"
    if note:
        log.warning("%s", note)
    return session, note


def read_metadata(session: Any, path: str | Path) -> dict[str, str]:
    """The raw ``metadata_props`` of a session, checked for the keys the runtime needs."""
    meta = dict(session.get_modelmeta().custom_metadata_map)
    if meta.get("format") != FORMAT:
        raise ModelError(f"{path}: ONNX model without cusemo-batch metadata (expected format {FORMAT})")
    missing = [k for k in REQUIRED_KEYS if k not in meta]
    if missing:
        raise ModelError(f"{path}: cusemo model metadata lacks {', '.join(missing)}")
    return meta


def decode_metadata(meta: dict[str, str]) -> dict[str, Any]:
    """Metadata values are strings; structured and numeric ones are JSON. Decode what decodes."""
    out: dict[str, Any] = {}
    for k, v in meta.items():
        try:
            out[k] = json.loads(v)
        except (ValueError, TypeError):
            out[k] = v
    return out


def _batch_invariant(quantized: str, scheme: Any) -> bool:
    """Whether each batch row's outputs depend on that row alone (bit for bit).

    fp32 graphs and row-scaled int8 convolutions compute every row on its own (measured: identical
    float32 bytes alone, in batches of 4 and 8, with 1 or 2 threads). onnxruntime's *dynamic* int8
    LSTM/MatMul quantize their input with one scale per tensor, i.e. over every row of the batch:
    a call's numbers then move with its batch-mates (up to 0.02 per window on the default model),
    so the scorer runs such models one row at a time. int8 models written before the
    ``quantization`` metadata existed used dynamic LSTM/MatMul.
    """
    if quantized in ("", "none", "fp32", "false"):
        return True
    dynamic = scheme.get("dynamic", ["?"]) if isinstance(scheme, dict) else ["?"]
    return not dynamic


class Model:
    """An exported CusEmo CRNN ready to score audio.

    ``Model(path)`` takes ``NAME.onnx``; the streaming graph ``NAME.stream.onnx`` is opened (and its
    sha256 checked against the whole graph's metadata) on first streaming use.

    Attributes (from the metadata, typed): ``name``, ``version``, ``sample_rate``, ``hop``,
    ``frame_rate``, ``receptive_field``, ``pad_left``, ``pad_right``, ``lstm_layers``,
    ``lstm_hidden``, ``outputs``, ``label_rate_ms``, ``normalisation``, ``quantized``; ``sha256`` of
    the whole-graph file; ``metadata`` (all keys, decoded); ``providers`` (really in use);
    ``batch_invariant`` (whether a batch row's outputs are independent of the other rows, see
    :func:`_batch_invariant`).

    Examples
    --------
    >>> import cusemo_batch as cb
    >>> m = cb.Model(cb.load_model(device="cpu").path, device="cpu")
    >>> m.normalisation, m.frame_rate
    ('speech_rms', 32.0)
    """

    def __init__(self, path: str | Path, device: str = "auto", threads: int | None = None) -> None:
        self.path = Path(path)
        self.stream_path = stream_path_for(self.path)
        self.device = device
        self.threads = threads
        self._session, self.device_note = open_session_noted(self.path, device, threads)
        raw = read_metadata(self._session, self.path)
        if raw["graph"] != "whole":
            raise ModelError(f"{self.path}: is the {raw['graph']!r} graph; pass the whole-pass NAME.onnx")
        self.metadata: dict[str, Any] = decode_metadata(raw)
        m = self.metadata
        try:
            self.name = str(m["name"])
            self.version = str(m["version"])
            self.sample_rate = int(m["sample_rate"])
            self.hop = int(m["hop"])
            self.frame_rate = self.sample_rate / self.hop
            self.receptive_field = int(m["receptive_field"])
            self.pad_left = int(m["pad_left"])
            self.pad_right = int(m["pad_right"])
            self.lstm_layers = int(m["lstm_layers"])
            self.lstm_hidden = int(m["lstm_hidden"])
            self.outputs: tuple[str, ...] = tuple(m["outputs"])
            self.label_rate_ms: float | None = m.get("label_rate_ms")
            self.normalisation = str(m["normalisation"])
            self.quantized = str(m["quantized"])
        except (TypeError, ValueError) as e:
            raise ModelError(f"{self.path}: malformed cusemo model metadata ({first_line(e)})") from None
        if self.pad_left + self.pad_right != self.receptive_field - self.hop:
            raise ModelError(f"{self.path}: inconsistent padding in metadata")
        self.sha256 = sha256_file(self.path)
        self.providers: list[str] = self._session.get_providers()
        self.batch_invariant = _batch_invariant(self.quantized, m.get("quantization"))
        self._stream_session: Any = None

    def __repr__(self) -> str:
        return f"Model({self.name!r}, version={self.version!r}, providers={self.providers})"

    def n_frames(self, n_samples: int) -> int:
        return n_samples // self.hop

    # -- whole pass ---------------------------------------------------------------------------

    def infer(self, audio: np.ndarray) -> dict[str, np.ndarray]:
        """Whole pass: ``audio`` ``[batch, samples]`` (or ``[samples]``) -> ``{head: [batch, frames]}``.

        Zero-pad a batch of calls of different lengths to the longest: each call's first
        ``len // hop`` frames equal the call run alone. Memory grows with the input (about
        ``4 * conv_channels[0]`` bytes per sample and batch item): use :meth:`infer_stream` for
        long calls. An int8 model quantizes activations over the whole input here, which costs
        resolution beyond a few seconds (a 58 s call: largest arousal error vs fp32 0.39, against
        0.04 in 3 s streaming chunks): :meth:`infer_stream` is the accurate path for int8 too.
        """
        squeeze = np.ndim(audio) == 1
        x = self._check_audio(audio, min_samples=self.hop)
        ys = self._session.run(list(self.outputs), {"audio": x})
        out = {k: y for k, y in zip(self.outputs, ys)}
        return {k: v[0] for k, v in out.items()} if squeeze else out

    # -- streaming ----------------------------------------------------------------------------

    @property
    def default_chunk_frames(self) -> int:
        """Frames per streaming step when none is given: :data:`DEFAULT_CHUNK_S` of audio."""
        return max(1, int(DEFAULT_CHUNK_S * self.frame_rate))

    def stream(self, batch: int = 1, chunk_frames: int | None = None) -> "Stream":
        """A push-based streaming pass over ``batch`` calls; see :class:`Stream`."""
        return Stream(self, batch, chunk_frames)

    def infer_stream(self, audio: np.ndarray, chunk_frames: int | None = None) -> dict[str, np.ndarray]:
        """Same result as :meth:`infer` (within float tolerance), computed ``chunk_frames`` at a time
        (default :attr:`default_chunk_frames`).

        Peak memory is bounded by the chunk, not the call.
        """
        squeeze = np.ndim(audio) == 1
        x = self._check_audio(audio, min_samples=self.hop)
        st = self.stream(x.shape[0], chunk_frames)
        step = st.chunk_frames * self.hop
        parts = [st.push(x[:, i : i + step]) for i in range(0, x.shape[1], step)]
        parts.append(st.finish())
        out = {k: np.concatenate([p[k] for p in parts], axis=1) for k in self.outputs}
        return {k: v[0] for k, v in out.items()} if squeeze else out

    def check_stream(self) -> None:
        """Open (and verify) the streaming graph now rather than on first use.

        A scorer calls this before it touches the output folder: a missing or mismatched
        ``NAME.stream.onnx`` is a configuration error of the run, not a failure of every call.
        """
        if self._stream_session is None:
            self._stream_session = self._open_stream()

    def run_stream_step(
        self, padded: np.ndarray, h: np.ndarray, c: np.ndarray
    ) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """One raw streaming step (chunk with context, state in) -> (heads, hn, cn)."""
        self.check_stream()
        ys = self._stream_session.run(
            [*self.outputs, "hn", "cn"], {"audio": padded, "h0": h, "c0": c})
        return dict(zip(self.outputs, ys[:-2])), ys[-2], ys[-1]

    def _open_stream(self) -> Any:
        p = self.stream_path
        if not p.is_file():
            raise ModelError(f"{p}: streaming graph missing (export writes it next to {self.path.name})")
        expected = self.metadata.get("stream_sha256")
        if expected and sha256_file(p) != expected:
            raise ModelError(f"{p}: does not belong to {self.path.name} (sha256 differs from its metadata)")
        # the device the whole graph really got (a fallback is decided, and reported, once)
        session = open_session(p, "cpu" if self.providers[0] == _CPU else self.device, self.threads)
        meta = read_metadata(session, p)
        if meta["graph"] != "stream":
            raise ModelError(f"{p}: is not a streaming graph")
        return session

    def _check_audio(self, audio: np.ndarray, min_samples: int) -> np.ndarray:
        a = np.asarray(audio)
        if a.ndim == 1:
            a = a[None, :]
        if a.ndim != 2:
            raise ModelError(f"audio must be [samples] or [batch, samples], got shape {a.shape}")
        if a.shape[0] < 1:
            raise ModelError("empty batch")
        if a.shape[1] < min_samples:
            raise ModelError(
                f"audio of {a.shape[1]} samples is shorter than one frame ({self.hop} samples)")
        return np.ascontiguousarray(a, dtype=np.float32)


class Stream:
    """Chunked inference with LSTM state carry: push audio as it is decoded, get final frames.

    Keeps at most ``chunk_frames * hop + receptive_field`` samples per call buffered, runs the
    streaming graph on exactly ``chunk_frames`` frames at a time (a frame is final once its right
    context has arrived), and emits the tail with the zero right padding on :meth:`finish`. The
    concatenated outputs equal :meth:`Model.infer` on the whole input within float tolerance.
    """

    def __init__(self, model: Model, batch: int = 1, chunk_frames: int | None = None) -> None:
        chunk_frames = model.default_chunk_frames if chunk_frames is None else chunk_frames
        if batch < 1 or chunk_frames < 1:
            raise ModelError("batch and chunk_frames must be >= 1")
        self.model = model
        self.batch = batch
        self.chunk_frames = chunk_frames
        m = model
        # Buffer holds padded-waveform samples starting at frames_done * hop.
        self._buf = np.zeros((batch, m.pad_left), dtype=np.float32)
        self._h = np.zeros((m.lstm_layers, batch, m.lstm_hidden), dtype=np.float32)
        self._c = np.zeros_like(self._h)
        self.samples_in = 0
        self.frames_out = 0
        self._finished = False

    def push(self, audio: np.ndarray) -> dict[str, np.ndarray]:
        """Add ``[batch, n]`` (or ``[n]`` for batch 1) samples; return the frames completed by them."""
        if self._finished:
            raise ModelError("stream already finished")
        a = np.asarray(audio, dtype=np.float32)
        if a.ndim == 1:
            a = a[None, :]
        if a.ndim != 2 or a.shape[0] != self.batch:
            raise ModelError(f"expected audio [{self.batch}, n], got shape {a.shape}")
        self._buf = np.concatenate([self._buf, a], axis=1)
        self.samples_in += a.shape[1]
        return self._run(final=False)

    def finish(self) -> dict[str, np.ndarray]:
        """Append the right zero padding and return the remaining frames (``samples // hop`` in all)."""
        if self._finished:
            raise ModelError("stream already finished")
        self._finished = True
        m = self.model
        self._buf = np.concatenate([self._buf, np.zeros((self.batch, m.pad_right), np.float32)], axis=1)
        return self._run(final=True)

    def _run(self, final: bool) -> dict[str, np.ndarray]:
        m = self.model
        ctx = m.receptive_field - m.hop
        total = self.samples_in // m.hop if final else (self._buf.shape[1] - ctx) // m.hop + self.frames_out
        parts: list[dict[str, np.ndarray]] = []
        while True:
            todo = total - self.frames_out
            n = min(todo, self.chunk_frames)
            if n <= 0 or (n < self.chunk_frames and not final):
                break
            chunk = self._buf[:, : n * m.hop + ctx]
            y, self._h, self._c = m.run_stream_step(np.ascontiguousarray(chunk), self._h, self._c)
            parts.append(y)
            self._buf = self._buf[:, n * m.hop :]
            self.frames_out += n
        if not parts:
            return {k: np.zeros((self.batch, 0), np.float32) for k in m.outputs}
        return {k: np.concatenate([p[k] for p in parts], axis=1) for k in m.outputs}

    def frames(self, chunks: Iterable[np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
        """Generator form: push each chunk from ``chunks``, yield non-empty outputs, then finish."""
        for c in chunks:
            y = self.push(c)
            if y[self.model.outputs[0]].shape[1]:
                yield y
        y = self.finish()
        if y[self.model.outputs[0]].shape[1]:
            yield y
