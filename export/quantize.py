"""int8 quantization of an exported pair, and what it costs in CCC.

Two layers of quantization:

* dynamic (``onnxruntime.quantization.quantize_dynamic``) for the LSTM and MatMul weights: int8
  weights, activations quantized on the fly from their observed range, no calibration set;
* static (QDQ, ``quantize_static``) for the convolutions after the first, when calibration audio is
  given: their input and output ranges are fixed from real speech (99.99th percentile, so a few
  clicks do not waste the int8 range), and onnxruntime fuses each ``DQ -> Conv -> Q`` into an int8
  convolution (VNNI/AMX where the CPU has them). **Only for level-normalised models**
  (``normalisation = rms``): a fixed int8 range cannot follow the input level of a raw-waveform
  model, and the export refuses. Measured on the raw-level default model, static int8 vs fp32 on
  10 s of speech: correlation 0.99 at the calibration level, 0.67 at -10 dB, 0.04 at -24 dB, 0 on
  a quiet demo passage -- while the test-split CCC moved by only 0.010 (loud acted speech), which
  is why the level test matters. Speed measured on 2 Xeon cores, batch 8 x 2 s steps:
  the second conv 3.75 -> 0.84 ms, the third 1.67 -> 0.32 ms, the whole step 12.4 -> 9.6 ms.
  Test CCC of the session-1 default model (18 test calls), calibrated on 600 s of training calls:
  fp32 V 0.2390 / A 0.5200; dynamic-only int8 0.2386 / 0.5218; + static convs at the 99.99th
  percentile 0.2381 / 0.5186 (99.999th: 0.2320 / 0.5240; 99.9999th: 0.2372 / 0.5189; min-max
  ranges: 0.2292 / 0.5226). The first conv stays fp32: one input channel, and its int8 version
  (plus the requantization of its 50-channel output) is slower than fp32.

The price is measured, not assumed: :func:`compare_quantized` reports, per head, the agreement CCC
of int8 vs fp32 predictions on the check audio and -- given a labelled validation manifest -- the
CCC against the gold standard for both models and the change.

Dynamic activation scales depend on the tensor seen, so chunked int8 streaming is *not* bit-equal
to the int8 whole pass; the report gives that difference too.
"""

from __future__ import annotations

import contextlib
import csv
import io
import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cusemo_batch.audio import AudioError, load_audio, normalise
from cusemo_batch.metrics import ccc
from cusemo_batch.model import Model
from cusemo_batch.training.categorical import DEFAULT_INTENSITY, DEFAULT_MAP

# Which ops to quantize. Measured (paper sizes, 300 s, 2 threads, onnxruntime 1.31): fp32 0.44 s;
# MatMul+LSTM 0.37 s; MatMul only 0.45 s; all ops incl. Conv (ConvInteger) 1.2 s -- the int8 conv
# kernels are 3x slower than the fp32 ones here and the first conv has a single input channel,
# so Conv stays fp32.
QUANT_OPS = ("MatMul", "LSTM")
QUANT_CHUNK_FRAMES = 320
CALIB_PERCENTILE = 99.99
CALIB_STEP_S = 2.0  # calibration inputs look like the scorer's streaming steps: rows of 2 s
CALIB_BATCH = 8
CALIB_MAX_S = 600.0  # calibration audio used at most (ranges settle long before)



class QuantizationError(Exception):
    """Quantization or its validation failed. One-line message."""


@dataclass(frozen=True)
class HeadReport:
    head: str
    agreement_ccc: float  # CCC(int8, fp32) over all check/validation frames
    ccc_fp32: float | None  # vs gold, validation set only
    ccc_int8: float | None

    @property
    def ccc_change(self) -> float | None:
        return None if self.ccc_fp32 is None or self.ccc_int8 is None else self.ccc_int8 - self.ccc_fp32


@dataclass
class QuantReport:
    heads: list[HeadReport] = field(default_factory=list)
    max_abs_diff: float = 0.0  # int8 vs fp32, whole pass
    stream_max_abs_diff: float = 0.0  # int8 chunked vs int8 whole
    n_validation: int = 0
    validation_seconds: float = 0.0
    ops: tuple[str, ...] = QUANT_OPS
    static_convs: tuple[str, ...] = ()  # conv nodes quantized statically (empty: dynamic only)
    calibration_seconds: float = 0.0


def quantize_dynamic_pair(whole: Path, stream: Path, out_whole: Path, out_stream: Path) -> None:
    """int8 weights for MatMul and LSTM in both graphs (same weights -> same int8 values)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for src, dst in ((whole, out_whole), (stream, out_stream)):
        # quantize_dynamic logs a generic "consider pre-processing" warning on the root logger
        # (shape-inference pre-processing matters for static quantization, not here).
        logging.disable(logging.WARNING)
        try:
            quantize_dynamic(src, dst, op_types_to_quantize=list(QUANT_OPS), weight_type=QuantType.QInt8,
                             per_channel=False)
        except Exception as e:
            msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise QuantizationError(f"int8 quantization of {src.name} failed ({msg})") from None
        finally:
            logging.disable(logging.NOTSET)


def static_conv_nodes(path: Path) -> list[str]:
    """Conv nodes worth int8: all but the first (single input channel, memory-bound)."""
    import onnx

    convs = [n.name for n in onnx.load(str(path), load_external_data=False).graph.node if n.op_type == "Conv"]
    return convs[1:]


def quantize_static_pair(whole: Path, stream: Path, out_whole: Path, out_stream: Path,
                         calibration: Sequence[np.ndarray], *, context: int, hop: int, sample_rate: int,
                         lstm_layers: int, lstm_hidden: int) -> list[str]:
    """QDQ int8 for the convolutions after the first in both graphs; returns the quantized nodes.

    Ranges are calibrated once, on the stream graph fed the scorer's step shape (``CALIB_BATCH``
    rows of ``CALIB_STEP_S`` with context, zero state; at most ``CALIB_MAX_S`` of ``calibration``
    audio), and the whole graph reuses them through onnxruntime's calibration cache: separately
    calibrated graphs made chunked and whole-pass outputs drift apart (0.11 on a small model).
    """
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    nodes = static_conv_nodes(stream)
    if not nodes:
        return []
    # One stream of all calibration audio (short clips are fine), cut into equal pieces: the
    # percentile calibrator stacks the activations of every feed, so shapes must match.
    x = np.concatenate([np.asarray(a, np.float32) for a in calibration])[: int(CALIB_MAX_S * sample_rate)] \
        if calibration else np.zeros(0, np.float32)
    step = int(CALIB_STEP_S * sample_rate) // hop * hop
    rows = [x[i:i + step + context] for i in range(0, len(x) - step - context + 1, step)]
    if not rows:
        raise QuantizationError(f"calibration audio too short: {len(x) / sample_rate:.1f} s, need at least "
                                f"{(step + context) / sample_rate:.1f} s")
    bs = min(CALIB_BATCH, len(rows))
    feeds = []
    for i in range(0, len(rows) - bs + 1, bs):  # full batches only: the calibrator stacks them
        z = np.zeros((lstm_layers, bs, lstm_hidden), np.float32)
        feeds.append({"audio": np.stack(rows[i:i + bs]), "h0": z, "c0": z})

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(feeds)

        def get_next(self):
            return next(self._it, None)

    logging.disable(logging.WARNING)
    try:
        with tempfile.TemporaryDirectory(prefix=".cusemo-calib-", dir=out_stream.parent) as tmp, \
                contextlib.redirect_stdout(io.StringIO()):  # the calibrator prints progress lines
            cache = Path(tmp) / "ranges.json"
            for src, dst, reader in ((stream, out_stream, Reader()), (whole, out_whole, None)):
                quantize_static(src, dst, reader, quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"],
                                nodes_to_quantize=nodes, per_channel=True, activation_type=QuantType.QUInt8,
                                weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.Percentile,
                                calibration_providers=["CPUExecutionProvider"], calibration_cache_path=cache,
                                # keep the ReLUs: onnxruntime fuses Conv+ReLU itself; folding them into
                                # the quantization ranges moves the MaxPool onto slow uint8 kernels
                                extra_options={"QDQKeepRemovableActivations": True,
                                               "CalibPercentile": CALIB_PERCENTILE})
    except Exception as e:
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise QuantizationError(f"static int8 quantization failed ({msg})") from None
    finally:
        logging.disable(logging.NOTSET)
    return nodes


def load_validation(manifest: str | Path, sample_rate: int, norm: str) -> list[tuple[str, np.ndarray, dict[str, float]]]:
    """Read a CSV manifest: ``file`` (relative to the CSV) and ``valence``,``arousal`` columns, or
    ``emotion`` (+ optional ``intensity``) mapped with the corpus bootstrap's category map (``training/categorical.py``). Gold is per file."""
    manifest = Path(manifest)
    try:
        with open(manifest, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise QuantizationError(f"{manifest}: cannot read validation manifest ({e})") from None
    if not rows or "file" not in rows[0]:
        raise QuantizationError(f"{manifest}: validation manifest needs a 'file' column and rows")
    cols = set(rows[0])
    items = []
    for i, r in enumerate(rows, start=2):
        if {"valence", "arousal"} <= cols:
            gold = {"valence": float(r["valence"]), "arousal": float(r["arousal"])}
        elif "emotion" in cols:
            emo = r["emotion"].strip().lower()
            if emo not in DEFAULT_MAP:
                raise QuantizationError(f"{manifest}:{i}: unknown emotion {emo!r}")
            k = DEFAULT_INTENSITY.get((r.get("intensity") or "").strip().lower(), 1.0)
            v, a = DEFAULT_MAP[emo]
            gold = {"valence": k * v, "arousal": k * a}
        else:
            raise QuantizationError(f"{manifest}: needs valence,arousal or emotion columns")
        try:
            audio = normalise(load_audio(manifest.parent / r["file"], sample_rate), norm)
        except AudioError as e:
            raise QuantizationError(str(e)) from None
        items.append((r["file"], audio, gold))
    return items


def compare_quantized(
    fp32: Model,
    int8: Model,
    check_items: Sequence[tuple[str, np.ndarray]],
    validation: Sequence[tuple[str, np.ndarray, dict[str, float]]] = (),
    *,
    log: Callable[[str], None] = lambda s: None,
) -> QuantReport:
    """Run both models on the check audio and the validation set; CCC per head; fail on non-finite."""
    heads = list(fp32.outputs)
    rep = QuantReport(n_validation=len(validation))
    agree: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {h: [] for h in heads}  # (fp32, int8)
    val: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {h: [] for h in heads}  # + gold
    items = [(n, x, None) for n, x in check_items] + list(validation)
    for name, x, g in items:
        if len(x) < fp32.hop:
            continue
        yf, yq = fp32.infer(x), int8.infer(x)
        for h in heads:
            if not np.all(np.isfinite(yq[h])):
                raise QuantizationError(f"int8 model gives non-finite {h} on {name}")
            rep.max_abs_diff = max(rep.max_abs_diff, float(np.max(np.abs(yq[h] - yf[h]), initial=0.0)))
            agree[h].append((yf[h], yq[h]))
            if g is not None and h in g:
                val[h].append((yf[h], yq[h], np.full(yf[h].shape, g[h], np.float32)))
        if g is not None:
            rep.validation_seconds += len(x) / fp32.sample_rate
    longest = max((x for _, x in check_items), key=len, default=None)
    if longest is not None and len(longest) >= int8.hop:
        whole, chunked = int8.infer(longest), int8.infer_stream(longest, chunk_frames=QUANT_CHUNK_FRAMES)
        rep.stream_max_abs_diff = max(float(np.max(np.abs(chunked[h] - whole[h]), initial=0.0)) for h in heads)
    for h in heads:
        a = ccc(*(np.concatenate(z) for z in zip(*agree[h]))) if agree[h] else float("nan")
        cf = ci = None
        if val[h]:
            f, q, g = (np.concatenate(z) for z in zip(*val[h]))
            cf, ci = ccc(f, g), ccc(q, g)
        rep.heads.append(HeadReport(h, a, cf, ci))
        log(f"  int8 {h:<10} agreement CCC {a:.4f}"
            + (f"; validation CCC fp32 {cf:.4f} -> int8 {ci:.4f} ({ci - cf:+.4f})" if cf is not None else ""))
    log(f"  int8 max-abs-diff vs fp32 {rep.max_abs_diff:.3g}; int8 chunked vs whole {rep.stream_max_abs_diff:.3g}")
    return rep
