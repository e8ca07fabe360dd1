"""Export a trained CRNN to a self-describing, verified ONNX file family.

``export_checkpoint(ckpt, "model.onnx")`` writes ``model.onnx`` (whole pass) and
``model.stream.onnx`` (streaming step with LSTM state in/out) -- the layout, inputs, outputs and
metadata are documented in :mod:`cusemo_batch.model`, which is also what reads them back. Steps:

1. trace both graphs with torch's exporter (see *Exporter choice* below), opset >= 17;
2. stamp docs and ``metadata_props``, run ``onnx.checker`` (full check) and strict shape
   inference, and insist the batch/time axes stayed symbolic;
3. parity check (default on): onnxruntime vs torch eager on random and real audio at odd lengths,
   batch 1 and a zero-padded batch of 3, plus chunked streaming vs one pass; fail above tolerance;
4. optional int8 quantization (:mod:`cusemo_batch.export.quantize`: dynamic LSTM/MatMul,
   row-scaled convolutions) with its report;
5. write the stream file, then the whole file that names it and its sha256, each atomically.

Exporter choice (measured on the pinned torch 2.13.0+cpu, onnx 1.23, onnxruntime 1.31, paper
sizes, 2 threads):

- export time: legacy 0.2 s; dynamo 7-15 s.
- nodes (whole / stream): legacy 72 / 49, two ONNX LSTM nodes; dynamo 74 / 73-74, two LSTM
  nodes plus 26 Slice.
- dynamic time axis: legacy keeps ``[batch, samples] -> [batch, frames]`` symbolic. Dynamo with
  ``Dim.DYNAMIC`` fails (it specialises samples to the traced length); with ``Dim.AUTO`` the
  outputs claim the traced frame count, so onnxruntime warns at every other length.
- onnxruntime, 300 s, batch 1: 0.48 s for both. max |ORT - torch|: 7e-9 for both.

Same speed and accuracy, but only the legacy exporter keeps the frame axis symbolic without
workarounds, is 50x faster to run, and gives the smaller stream graph, so we use ``dynamo=False``
(it is deprecated but present in torch < 2.15, the pinned range; revisit when raising the pin --
the shape check in step 2 will fail loudly if an exporter change makes an axis static).
"""

from __future__ import annotations

import datetime as _dt
import json
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from cusemo_batch import __version__
from cusemo_batch.audio import (AUDIO_SUFFIXES, NORMALISATIONS, AudioError, describe_normalisation, load_audio,
                                normalise)
from cusemo_batch.files import atomic_path, sha256_bytes
from cusemo_batch.model import FORMAT, Model, ModelError, stream_path_for
from cusemo_batch.training.checkpoint import load_checkpoint
from cusemo_batch.text import first_line
from cusemo_batch.training.model import CRNN, ModelConfig

from .quantize import WEIGHT_SCALES

MIN_OPSET = 17
MAX_OPSET = 20  # the legacy exporter's maximum in torch 2.13 (ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)
DEFAULT_OPSET = 17
# Parity tolerances (absolute, on the model's output scale). Measured: ORT vs torch <= 1e-7 and
# chunked vs whole <= 1e-7 for the paper's model on 300 s; the margins absorb other CPUs' kernels.
PARITY_ATOL = 1e-4  # onnxruntime (whole or chunked) vs torch eager
STREAM_ATOL = 1e-5  # onnxruntime chunked streaming vs onnxruntime whole pass
CHECK_LENGTHS_S = (0.3, 7.3, 61.7)  # odd lengths: partial last frame, several stream chunks
CHECK_CHUNK_FRAMES = 320  # 10 s chunks in the check, so 61.7 s spans 7 chunks with a short tail
MAX_CHECK_FILES = 6

Log = Callable[[str], None]


class ExportError(Exception):
    """Export failed (bad checkpoint metadata, checker/shape/parity failure). One-line message."""


@dataclass(frozen=True)
class ParityRow:
    """One parity measurement: max |a - b| over all valid frames and heads."""

    case: str
    graph: str  # "whole", "stream" (vs torch) or "stream~whole" (ORT chunked vs ORT whole)
    batch: int
    seconds: float  # longest item
    max_abs_diff: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.max_abs_diff) and self.max_abs_diff <= self.tolerance)


@dataclass
class ExportResult:
    path: Path
    stream_path: Path
    metadata: dict[str, str]
    parity: list[ParityRow] = field(default_factory=list)
    quantization: Any = None  # quantize.QuantReport when --quantize was used


class _WholeGraph(nn.Module):
    """``audio [B, S]`` -> one ``[B, frames]`` tensor per head; zero state built from the batch size.

    The explicit zero h0/c0 of the traced batch size keeps the batch axis dynamic (the LSTM-export
    pitfall); the check runs batch 1 and 3 to prove it.
    """

    def __init__(self, model: CRNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, audio: torch.Tensor) -> tuple[torch.Tensor, ...]:
        c = self.model.config
        padded = nn.functional.pad(audio, (c.pad_left, c.pad_right))
        zeros = audio.new_zeros(c.lstm_layers, audio.shape[0], c.lstm_hidden)
        y, _ = self.model.forward_padded(padded, (zeros, zeros))
        return tuple(y[..., i] for i in range(len(c.outputs)))


class _StreamGraph(nn.Module):
    """``(audio with context, h0, c0)`` -> heads ``[B, frames]``, ``hn``, ``cn``."""

    def __init__(self, model: CRNN) -> None:
        super().__init__()
        self.model = model

    def forward(self, audio: torch.Tensor, h0: torch.Tensor, c0: torch.Tensor) -> tuple[torch.Tensor, ...]:
        y, (hn, cn) = self.model.forward_padded(audio, (h0, c0))
        return (*(y[..., i] for i in range(y.shape[-1])), hn, cn)


# -- metadata -----------------------------------------------------------------------------------

def build_metadata(
    config: ModelConfig,
    meta: dict[str, Any],
    *,
    name: str,
    opset: int,
    quantized: str = "none",
) -> dict[str, str]:
    """The ``metadata_props`` shared by both graphs (values: plain strings or JSON).

    Refuses checkpoints whose metadata would make scoring guess: unknown normalisation, heads or
    sample rate disagreeing with the model config.
    """
    norm = meta.get("normalisation")
    if norm not in NORMALISATIONS:
        raise ExportError(
            f"checkpoint metadata 'normalisation' is {norm!r}; expected one of {', '.join(NORMALISATIONS)}")
    if "heads" in meta and tuple(meta["heads"]) != tuple(config.outputs):
        raise ExportError(f"checkpoint heads {meta['heads']} differ from model outputs {list(config.outputs)}")
    if "sample_rate" in meta and int(meta["sample_rate"]) != config.sample_rate:
        raise ExportError(
            f"checkpoint sample_rate {meta['sample_rate']} differs from model config {config.sample_rate}")
    sha = meta.get("checkpoint_sha256") or "unknown"
    j = json.dumps
    return {
        "format": FORMAT,
        "name": str(meta.get("name") or name),
        # A checkpoint may carry its own version; otherwise the weights' hash identifies it.
        "version": str(meta.get("version") or f"ckpt-{sha[:12]}"),
        "sample_rate": str(config.sample_rate),
        "hop": str(config.hop),
        "frame_rate": j(config.frame_rate),
        "receptive_field": str(config.receptive_field),
        "pad_left": str(config.pad_left),
        "pad_right": str(config.pad_right),
        "lstm_layers": str(config.lstm_layers),
        "lstm_hidden": str(config.lstm_hidden),
        "outputs": j(list(config.outputs)),
        "label_rate_ms": j(meta.get("label_rate_ms")),
        "normalisation": norm,
        "normalisation_doc": describe_normalisation(norm),
        "quantized": quantized,
        "train_data": j(meta.get("train_data")),
        "dev_ccc": j(meta.get("dev_ccc")),
        "test_ccc": j(meta.get("test_ccc")),
        # a final fit (train --refit-from) trained on its source's dev calls: no dev numbers of its own
        **({"refit_from": j(meta["refit_from"])} if meta.get("refit_from") else {}),
        "model_config": j(config.to_dict()),
        "torch_version": torch.__version__,
        "onnx_version": _onnx().__version__,
        "onnxruntime_version": _ort_version(),
        "opset": str(opset),
        "exporter": f"cusemo-batch {__version__}, torch.onnx legacy TorchScript exporter",
        "checkpoint_sha256": sha,
        "export_date": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
    }


def _onnx() -> Any:
    import onnx

    return onnx


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


# -- export -------------------------------------------------------------------------------------

def export_checkpoint(checkpoint: str | Path, out: str | Path, **kwargs: Any) -> ExportResult:
    """Load a checkpoint (``CheckpointError`` on bad files) and :func:`export_model` it."""
    model, meta = load_checkpoint(checkpoint)
    return export_model(model, meta, out, **kwargs)


def export_model(
    model: CRNN,
    meta: dict[str, Any],
    out: str | Path,
    *,
    opset: int = DEFAULT_OPSET,
    quantize: str | None = None,
    check: bool = True,
    check_audio: Sequence[str | Path] = (),
    validation: str | Path | None = None,
    calibration: Sequence[str | Path] = (),
    int8_weights: str = "per_tensor",
    log: Log = lambda s: None,
) -> ExportResult:
    """Export ``model`` to ``out`` (``NAME.onnx``) and ``NAME.stream.onnx``; verify; write atomically.

    Nothing is written at ``out`` unless every check passed. ``int8_weights`` (with ``quantize``):
    the scale granularity of the dynamic int8 MatMul/LSTM weights (:func:`.quantize.quantize_dynamic_pair`).
    """
    out = Path(out)
    try:
        out_stream = stream_path_for(out)
    except ModelError as e:
        raise ExportError(str(e)) from None
    if not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset {opset} not supported: use {MIN_OPSET}..{MAX_OPSET} "
                          f"(verified minimum .. the legacy exporter's maximum)")
    if quantize not in (None, "int8"):
        raise ExportError(f"unknown quantization {quantize!r}; only int8 is supported")
    if int8_weights not in WEIGHT_SCALES:  # before the trace: a typo must not cost an export
        raise ExportError(f"int8 weights must be {' or '.join(WEIGHT_SCALES)}, not {int8_weights!r}")
    name = out.name[: -len(".onnx")]
    md = build_metadata(model.config, meta, name=name, opset=opset)
    was_training = model.training
    model.eval()  # dropout off in the graph and in the torch reference
    try:
        return _export(model, md, out, out_stream, opset=opset, quantize=quantize, check=check,
                       check_audio=check_audio, validation=validation, calibration=calibration,
                       int8_weights=int8_weights, log=log)
    finally:
        model.train(was_training)


def _export(model: CRNN, md: dict[str, str], out: Path, out_stream: Path, *, opset: int,
            quantize: str | None, check: bool, check_audio: Sequence[str | Path],
            validation: str | Path | None, calibration: Sequence[str | Path], int8_weights: str,
            log: Log) -> ExportResult:
    name = md["name"]
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".cusemo-tmp-export-", dir=out.parent) as tmp_name:
        tmp = Path(tmp_name)
        raw_whole, raw_stream = tmp / "raw.onnx", tmp / "raw.stream.onnx"
        try:
            _trace(model, raw_whole, raw_stream, opset)
        except Exception as e:  # e.g. an opset this torch cannot emit
            raise ExportError(f"torch.onnx export failed at opset {opset} ({first_line(e)})") from None
        fp32 = _stamp_pair(raw_whole, raw_stream, tmp / "fp32" / out.name, md)
        log(f"exported {name}: opset {opset}, {_node_count(fp32)} / {_node_count(stream_path_for(fp32))} nodes "
            f"(whole / stream)")
        result = ExportResult(out, out_stream, md)
        audios = _check_inputs(model.config, md["normalisation"], check_audio) if check or quantize else []
        if check:
            result.parity = check_parity(model, fp32, audios, log=log)
            bad = [r for r in result.parity if not r.ok]
            if bad:
                r = max(bad, key=lambda r: r.max_abs_diff)
                raise ExportError(
                    f"parity check failed: {r.case} ({r.graph}, batch {r.batch}) max-abs-diff "
                    f"{r.max_abs_diff:.3g} > tolerance {r.tolerance:g}; nothing written")
        final = fp32
        if quantize == "int8":
            final = _quantize_int8(model, md, fp32, tmp, out.name, audios, calibration, validation, result, log,
                                   weights=int8_weights)
        # Stream first: the whole graph is the entry point and names the stream file's hash.
        for src, dst in ((stream_path_for(final), out_stream), (final, out)):
            with atomic_path(dst) as t:
                t.write_bytes(src.read_bytes())
        Model(out, device="cpu")  # the runtime reader accepts what was written
        result.metadata = _read_props(out)
    log(f"wrote {out} and {out_stream}")
    return result


def _quantize_int8(model: CRNN, md: dict[str, str], fp32: Path, tmp: Path, name: str, audios: list,
                   calibration: Sequence[str | Path], validation: str | Path | None, result: ExportResult,
                   log: Log, *, weights: str) -> Path:
    """The int8 pair from the checked fp32 pair (row-scaled int8 convolutions calibrated on
    ``calibration``, then dynamic int8 MatMul/LSTM), compared with fp32 into ``result.quantization``;
    returns the int8 whole-graph path under ``tmp``."""
    from .quantize import (CALIB_MAX_S, QUANT_OPS, compare_quantized, load_validation, quantize_convs_pair,
                           quantize_dynamic_pair)

    c = model.config
    src_whole, src_stream = fp32, stream_path_for(fp32)
    calib = [x for _, x in _load_files(_audio_paths(calibration), c.sample_rate, md["normalisation"],
                                       CALIB_MAX_S)]
    convs: list[str] = []
    if calib:
        s_whole, s_stream = tmp / "s.onnx", tmp / "s.stream.onnx"
        convs = quantize_convs_pair(src_whole, src_stream, s_whole, s_stream, calib,
                                    context=c.receptive_field - c.hop, hop=c.hop,
                                    sample_rate=c.sample_rate, lstm_layers=c.lstm_layers,
                                    lstm_hidden=c.lstm_hidden)
        if convs:  # written only when there was a conv block to quantize
            src_whole, src_stream = s_whole, s_stream
    calib_s = round(min(sum(map(len, calib)) / c.sample_rate, CALIB_MAX_S), 1)
    if convs:
        log(f"row-scaled int8 convolutions {', '.join(convs)} calibrated on {calib_s:.0f} s of audio")
    elif not calib:
        log("no --calibration-audio: the convolutions stay fp32 (dynamic int8 for MatMul/LSTM only)")
    q_whole, q_stream = tmp / "q.onnx", tmp / "q.stream.onnx"
    quantize_dynamic_pair(src_whole, src_stream, q_whole, q_stream, weights)
    scheme = {"dynamic": list(QUANT_OPS), "row_scaled_convs": convs, "calibration_s": calib_s}
    if weights != "per_tensor":  # recorded when not the original scheme, so older exports read as before
        scheme["weights"] = weights
    final = _stamp_pair(q_whole, q_stream, tmp / "int8" / name,
                        {**md, "quantized": "int8", "quantization": json.dumps(scheme)})
    val = load_validation(validation, c.sample_rate, md["normalisation"]) if validation else []
    result.quantization = compare_quantized(Model(fp32, device="cpu"), Model(final, device="cpu"),
                                            audios, val, log=log)
    result.quantization.int8_convs = tuple(convs)
    result.quantization.calibration_seconds = calib_s
    return final


def _trace(model: CRNN, whole: Path, stream: Path, opset: int) -> None:
    c = model.config
    # Traced at batch 2 and ~1 s; batch 1/3 and other lengths are proven by the parity check.
    audio = 0.01 * torch.randn(2, c.sample_rate, generator=torch.Generator().manual_seed(0))
    padded = nn.functional.pad(audio, (c.pad_left, c.pad_right))
    h0 = torch.zeros(c.lstm_layers, 2, c.lstm_hidden)
    heads = list(c.outputs)
    bt = {0: "batch", 1: "samples"}
    bf = {0: "batch", 1: "frames"}
    state = {1: "batch"}
    with warnings.catch_warnings(), torch.no_grad():
        # The legacy exporter warns about its deprecation and the LSTM batch pitfall; both are
        # handled (see the module docstring and _WholeGraph), so keep the CLI output clean.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            _WholeGraph(model).eval(), (audio,), str(whole), dynamo=False, opset_version=opset,
            input_names=["audio"], output_names=heads,
            dynamic_axes={"audio": bt, **{h: bf for h in heads}}, do_constant_folding=True)
        torch.onnx.export(
            _StreamGraph(model).eval(), (padded, h0, h0.clone()), str(stream), dynamo=False,
            opset_version=opset, input_names=["audio", "h0", "c0"], output_names=[*heads, "hn", "cn"],
            dynamic_axes={"audio": bt, "h0": state, "c0": state, "hn": state, "cn": state,
                          **{h: bf for h in heads}}, do_constant_folding=True)


def _docs(config: ModelConfig, graph: str) -> tuple[str, dict[str, str]]:
    c = config
    frame = f"frame i covers samples [i*{c.hop}, (i+1)*{c.hop}) at {c.sample_rate} Hz ({c.frame_rate:g} frames/s)"
    heads = {h: f"{h} per frame, [batch, frames]; {frame}" for h in c.outputs}
    state = f"[{c.lstm_layers}, batch, {c.lstm_hidden}]"
    if graph == "whole":
        doc = ("CusEmo CRNN, whole pass: raw waveform in, frame-level emotion dimensions out. "
               "Zero-pads the input internally; frames = samples // hop.")
        io = {"audio": f"raw waveform float32 [batch, samples] at {c.sample_rate} Hz, unpadded; "
                       "zero-pad shorter calls of a batch at the end", **heads}
    else:
        ctx = c.receptive_field - c.hop
        doc = ("CusEmo CRNN, one streaming step. Frames [a, b) need padded-waveform samples "
               f"[a*{c.hop}, b*{c.hop} + {ctx}) (waveform zero-padded by {c.pad_left} left, "
               f"{c.pad_right} right) and the state returned by the previous step (zeros first).")
        io = {"audio": f"padded waveform chunk with context, [batch, (b-a)*{c.hop} + {ctx}]",
              "h0": f"LSTM hidden state in {state}", "c0": f"LSTM cell state in {state}", **heads,
              "hn": f"LSTM hidden state out {state}", "cn": f"LSTM cell state out {state}"}
    return doc, io


def _stamp_pair(raw_whole: Path, raw_stream: Path, dest: Path, md: dict[str, str]) -> Path:
    """Write ``dest`` and its stream sibling with docs + metadata, verified. Returns ``dest``."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    config = ModelConfig.from_dict(json.loads(md["model_config"]))
    stream_bytes = _stamp(raw_stream, config, {**md, "graph": "stream"})
    stream_path_for(dest).write_bytes(stream_bytes)
    whole_md = {**md, "graph": "whole", "stream_graph": stream_path_for(dest).name,
                "stream_sha256": sha256_bytes(stream_bytes)}
    dest.write_bytes(_stamp(raw_whole, config, whole_md))
    return dest


def _stamp(raw: Path, config: ModelConfig, md: dict[str, str]) -> bytes:
    onnx = _onnx()
    proto = onnx.load(str(raw))
    doc, io = _docs(config, md["graph"])
    proto.producer_name = "cusemo-batch"
    proto.producer_version = __version__
    proto.doc_string = doc
    proto.graph.name = f"cusemo_crnn_{md['graph']}"
    proto.graph.doc_string = doc
    for v in [*proto.graph.input, *proto.graph.output]:
        v.doc_string = io.get(v.name, "")
    del proto.metadata_props[:]
    onnx.helper.set_model_props(proto, md)
    quantized = md.get("quantized") != "none"
    try:
        onnx.checker.check_model(proto, full_check=not quantized)
        inferred = onnx.shape_inference.infer_shapes(proto, check_type=True, strict_mode=not quantized)
    except Exception as e:
        raise ExportError(f"{md['graph']} graph fails the ONNX checker ({first_line(e)})") from None
    for v in inferred.graph.output:
        if v.name in config.outputs:
            dims = v.type.tensor_type.shape.dim
            if len(dims) != 2 or any(d.HasField("dim_value") for d in dims):
                raise ExportError(f"{md['graph']} graph output {v.name} is not [batch, frames] with "
                                  f"symbolic axes: {[d.dim_param or d.dim_value for d in dims]}")
    return proto.SerializeToString()


def _node_count(path: Path) -> int:
    return len(_onnx().load(str(path)).graph.node)


def _read_props(path: Path) -> dict[str, str]:
    return {p.key: p.value for p in _onnx().load(str(path)).metadata_props}


# -- verification -------------------------------------------------------------------------------

def _check_inputs(config: ModelConfig, norm: str, files: Sequence[str | Path]) -> list[tuple[str, np.ndarray]]:
    """Random signals at the odd check lengths, plus real audio (files or folders) if given."""
    rng = np.random.default_rng(1234)
    sr = config.sample_rate
    items = [(f"random {s:g}s", (0.1 * rng.standard_normal(round(s * sr))).astype(np.float32))
             for s in CHECK_LENGTHS_S]
    return items + _load_files(_audio_paths(files)[:MAX_CHECK_FILES], sr, norm)


def _audio_paths(files: Sequence[str | Path]) -> list[Path]:
    paths: list[Path] = []
    for f in files:
        p = Path(f)
        if p.is_dir():
            paths += sorted(q for q in p.rglob("*") if q.suffix.lower() in AUDIO_SUFFIXES)
        else:
            paths.append(p)
    return paths


def _load_files(paths: Sequence[Path], sr: int, norm: str, max_s: float = float("inf")) -> list[tuple[str, np.ndarray]]:
    items, total = [], 0.0
    for p in paths:
        if total >= max_s:
            break
        try:
            items.append((p.name, normalise(load_audio(p, sr), norm, sr)))
        except AudioError as e:
            raise ExportError(str(e)) from None
        total += len(items[-1][1]) / sr
    return items


def _torch_frames(model: CRNN, x: np.ndarray) -> np.ndarray:
    """Reference frames ``[frames, heads]`` from torch eager, single-threaded.

    One thread on purpose: the LSTM's per-step GEMMs are tiny, and on a busy machine torch's
    OpenMP threads spin against other processes (measured: 61.7 s of audio took 25 s with 2
    contended threads, 0.4 s with 1).
    """
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad():
            return model(torch.from_numpy(x[None, :])).numpy()[0]
    finally:
        torch.set_num_threads(before)


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    if a.shape != b.shape:
        return float("inf")
    return float(np.max(np.abs(a - b))) if a.size else 0.0


def _diff(ort_out: dict[str, np.ndarray], ref: np.ndarray, heads: Sequence[str], row: int = 0) -> float:
    n = ref.shape[0]
    got = np.stack([ort_out[h][row, :n] for h in heads], axis=-1)
    if got.shape != ref.shape:
        return float("inf")
    return float(np.max(np.abs(got - ref))) if n else 0.0


def check_parity(
    model: CRNN,
    onnx_path: Path,
    items: Sequence[tuple[str, np.ndarray]],
    *,
    chunk_frames: int = CHECK_CHUNK_FRAMES,
    log: Log = lambda s: None,
) -> list[ParityRow]:
    """onnxruntime (whole, chunked) vs torch eager on each item alone and in zero-padded batches of 3.

    Torch runs every item alone, so the batched rows also prove that zero padding a batch does not
    change any call's frames.
    """
    m = Model(onnx_path, device="cpu")
    heads = list(model.config.outputs)
    sr = model.config.sample_rate
    refs = [_torch_frames(model, x) for _, x in items]
    rows: list[ParityRow] = []

    def add(case: str, graph: str, batch: int, seconds: float, d: float, tol: float) -> None:
        rows.append(ParityRow(case, graph, batch, seconds, d, tol))
        log(f"  parity {case:<28} {graph:<12} batch {batch}  {seconds:7.1f} s  max-abs-diff {d:.2e}"
            f" (tol {tol:g})")

    for (case, x), ref in zip(items, refs):
        whole = m.infer(x[None, :])
        add(case, "whole", 1, len(x) / sr, _diff(whole, ref, heads), PARITY_ATOL)
        if len(x) >= 2 * chunk_frames * model.config.hop or case.startswith("random 0.3"):
            chunked = m.infer_stream(x[None, :], chunk_frames=chunk_frames)
            add(case, "stream", 1, len(x) / sr, _diff(chunked, ref, heads), PARITY_ATOL)
            d = max(_max_abs(chunked[h], whole[h]) for h in heads)
            add(case, "stream~whole", 1, len(x) / sr, d, STREAM_ATOL)
    # Zero-padded variable-length batches of 3 (shortest first, so padding really happens).
    for group in (list(range(min(3, len(items)))), list(range(len(items)))[3:6]):
        if len(group) < 2:
            continue
        xs = [items[i][1] for i in group]
        batch = np.zeros((len(xs), max(len(x) for x in xs)), np.float32)
        for r, x in enumerate(xs):
            batch[r, : len(x)] = x
        label = "padded " + "+".join(f"{len(x) / sr:.1f}s" for x in xs)
        whole = m.infer(batch)
        chunked = m.infer_stream(batch, chunk_frames=chunk_frames)
        dw = max(_diff(whole, refs[i], heads, r) for r, i in enumerate(group))
        ds = max(_diff(chunked, refs[i], heads, r) for r, i in enumerate(group))
        add(label, "whole", len(xs), batch.shape[1] / sr, dw, PARITY_ATOL)
        add(label, "stream", len(xs), batch.shape[1] / sr, ds, PARITY_ATOL)
    return rows
