"""int8 quantization of an exported pair, and what it costs in CCC.

Two layers of quantization:

* dynamic (``onnxruntime.quantization.quantize_dynamic``) for the LSTM and MatMul weights: int8
  weights, activations quantized on the fly from their observed range, no calibration set;
* **row-scaled int8 convolutions** for the conv blocks after the first, when calibration audio is
  given (:func:`quantize_convs_pair`). Each block ``Conv -> ReLU -> MaxPool`` becomes::

      z = x - d                         d: the block's input at digital silence, per channel
      a = max|z| per batch row
      q = QuantizeLinear(z, a/127, 128) per-row scale: every row uses the whole uint8 range
      y = Conv_int8(q) -> uint8         fixed output range in the *normalised* domain (calibrated)
      MaxPool on uint8, DequantizeLinear, * a, + (bias + conv(d)), ReLU

  Conv is linear, so ``conv(x) = a * conv((x - d) / a) + conv(d)``, and ``conv(d)`` of a
  per-channel constant is a per-output constant folded into the bias; ``relu(a*y + b)`` rises with
  ``y`` for ``a > 0``, so the max-pool can run first, on the uint8 tensor (5x fewer elements for
  the rest). onnxruntime fuses ``DQ -> Conv -> Q`` into QLinearConv (VNNI/AMX where the CPU has
  them) and keeps the block in NHWC, uint8 MaxPool included. ``d`` follows from the weights
  (:func:`silence_inputs`: ``relu(b1)`` after the first block, and so on).

  Why per-row scaling: a raw-waveform model reads input *level* (loudness is an arousal cue), so
  its activations span the input's dynamic range. Fixed (static) int8 ranges calibrated on
  speech at one level lost quieter calls completely (default model: correlation with fp32 0.67 at
  -10 dB, 0.04 at -24 dB), and onnxruntime's dynamic ConvInteger shares one scale across the whole
  batch (a quiet call batched with a loud one) and ran 3x slower than fp32. Why the silence
  offset: quiet input leaves the first block's output near ``relu(b1)``, a constant that can be
  far larger than the signal riding on it; scaled by the maximum, the signal then fell below one
  int8 step (measured on the current default checkpoint without it: RMSE / SD of arousal vs fp32
  0.34 at -24 dB; the previous checkpoint, with smaller conv-1 biases, did not show it).

  Measured (embedded model vs its fp32 export, 9 calls, the scorer's 3 s chunks, RMSE / SD of
  arousal; largest frame error): 0.0054 (0.05) at the recorded level and 0.0092 (0.008) at -24 dB,
  against dynamic-only int8 0.0058 (0.08) and 0.0093 (0.006); the previous checkpoint 0.011 /
  0.048, the same as its dynamic-only int8; unchanged with full-scale clicks every 3 s and with
  every other call at -24 dB in the same batches. Output ranges at the 99.999th percentile: at
  99.99 a few of the strongest (angriest) frames clipped (largest error 0.39); min-max ranges
  lost resolution at -24 dB (0.049). Speed (2 Xeon cores with AVX-512 VNNI, one 4 x 3 s step):
  8.4-9.4 -> 6.1 ms (second conv 2.6 -> 0.8 ms, third 1.3 -> 0.25 ms); 60 short calls end to end
  4.8 -> 3.8 s.

  On the log-mel CRNN (the default model since v10: a fixed DFT/mel front end, then conv blocks on
  160 and 32 Hz feature grids) they no longer pay. Measured 2026-12-04 on v21's checkpoint, int8 in the
  scorer's 3 s chunks vs its fp32 export, 3 demo + 18 RAVDESS test calls: dynamic-only int8 RMS
  0.0030, largest frame error 0.039; with row-scaled convs RMS 0.0054 and largest 0.086 (0.06-0.12
  depending on which calls calibrate). Removing only the input quantization (Q/DQ of ``x - d``)
  brought it to 0.0039 / 0.051, removing only the output one changed nothing, and a per-row
  asymmetric input range (min..max instead of +-max) did not help (0.0059 / 0.105): the int8
  *input* of these convs is the error. Speed, 7 alternating runs over the demo calls: 0.256 s
  dynamic-only vs 0.280 s row-scaled (the convs run on few frames here). So the default build
  (``scripts/build_default_model.py``) leaves them out; ``--calibration-audio`` still adds them.

  The first conv stays fp32: one input channel (the waveform), and the int8 version (measured,
  same scheme with a signed per-row scale) saved only ~0.6 ms per step in onnxruntime but doubled
  the error at -24 dB (RMSE / SD 0.068 / 0.075) and did not speed up the pipeline.

The price is measured, not assumed: :func:`compare_quantized` reports, per head, the agreement CCC
of int8 vs fp32 predictions on the check audio and -- given a labelled validation manifest -- the
CCC against the gold standard for both models and the change.

Activation scales depend on the chunk seen (per row for the convs, per batch for the dynamic
LSTM/MatMul), so int8 outputs differ slightly with the chunking and batching: chunked int8
streaming is *not* bit-equal to the int8 whole pass; the report gives that difference too.
"""

from __future__ import annotations

import csv
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from cusemo_batch.audio import AudioError, load_audio, normalise
from cusemo_batch.metrics import ccc
from cusemo_batch.model import DEFAULT_CHUNK_S, Model
from cusemo_batch.training.categorical import DEFAULT_INTENSITY, DEFAULT_MAP

# Which ops to quantize dynamically. Measured (paper sizes, 300 s, 2 threads, onnxruntime 1.31):
# fp32 0.44 s; MatMul+LSTM 0.37 s; MatMul only 0.45 s; all ops incl. Conv (ConvInteger) 1.2 s --
# onnxruntime's dynamic int8 conv is 3x slower than fp32 here (and shares one scale per batch), so
# the convs get the row-scaled scheme of quantize_convs_pair instead.
QUANT_OPS = ("MatMul", "LSTM")
QUANT_CHUNK_FRAMES = 320
CALIB_PERCENTILE = 99.999  # conv output range: 0.001th..99.999th percentile (a few clicks do not widen it)
CALIB_STEP_S = DEFAULT_CHUNK_S  # calibration inputs look like the scorer's streaming steps
CALIB_BATCH = 4
CALIB_SUBSAMPLE = 7  # keep every 7th activation for the percentiles (memory)
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
    int8_convs: tuple[str, ...] = ()  # conv nodes made row-scaled int8 (empty: dynamic only)
    calibration_seconds: float = 0.0


WEIGHT_SCALES = ("per_tensor", "per_channel")


def quantize_dynamic_pair(whole: Path, stream: Path, out_whole: Path, out_stream: Path,
                          weights: str = "per_tensor") -> None:
    """int8 weights for MatMul and LSTM in both graphs (same weights -> same int8 values).

    ``weights``: one scale per weight tensor (``per_tensor``, what the embedded v5 model was
    exported with) or one per output channel (``per_channel``). Why the choice exists: with one
    scale per tensor, the largest weight of a matrix sets the step for all its rows, and a
    thresholded output (change events) can flip. Measured with ``bench_transfer.py`` (int8 vs fp32,
    largest gap over the 24 rows; 2026-12-02): v8 candidate seed 12 0.019 -> 0.009, v6 candidate
    seed 10 0.026 -> 0.012, shipped v5 0.005 -> 0.005 (per tensor -> per channel, convs as always).
    """
    if weights not in WEIGHT_SCALES:
        raise QuantizationError(f"int8 weights must be one of {', '.join(WEIGHT_SCALES)}, not {weights!r}")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for src, dst in ((whole, out_whole), (stream, out_stream)):
        # quantize_dynamic logs a generic "consider pre-processing" warning on the root logger
        # (shape-inference pre-processing matters for static quantization, not here).
        logging.disable(logging.WARNING)
        try:
            quantize_dynamic(src, dst, op_types_to_quantize=list(QUANT_OPS), weight_type=QuantType.QInt8,
                             per_channel=weights == "per_channel")
        except Exception as e:
            msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
            raise QuantizationError(f"int8 quantization of {src.name} failed ({msg})") from None
        finally:
            logging.disable(logging.NOTSET)


def conv_blocks(graph) -> list[tuple]:
    """``(conv, relu, maxpool)`` node chains in graph order (the CRNN's conv blocks).

    The fixed convolutions of a log-mel front end (``training/frontend.py``; exported under the
    ``frontend`` module scope) are not blocks: they stay fp32 and are skipped here.
    """
    consumers: dict[str, list] = {}
    for n in graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    blocks = []
    for conv in (n for n in graph.node if n.op_type == "Conv" and "frontend" not in n.name.split("/")):
        nxt = consumers.get(conv.output[0], [])
        relu = nxt[0] if len(nxt) == 1 and nxt[0].op_type == "Relu" else None
        nxt = consumers.get(relu.output[0], []) if relu is not None else []
        pool = nxt[0] if len(nxt) == 1 and nxt[0].op_type == "MaxPool" else None
        if relu is None or pool is None:
            raise QuantizationError(f"conv {conv.name} is not followed by ReLU and MaxPool: not a CusEmo CRNN graph")
        blocks.append((conv, relu, pool))
    return blocks


def _prefix(conv) -> str:
    """Name prefix of the nodes and tensors that replace ``conv``'s block."""
    return "rowq" + conv.name.replace("/", "_").replace(".", "_")


# ~70 lines on purpose: the replacement graph of one block, node by node in execution order (the
# module doc draws it); split, each half would need the other's tensor names.
def _row_scaled_block(conv, pool, inits: dict, opset: int, d_in: np.ndarray,
                      y_range: tuple[float, float] | None):
    """Nodes and initializers replacing one ``Conv -> Relu -> MaxPool`` block (see the module doc).

    ``d_in`` is the block's input at digital silence (per channel, from the biases upstream): it
    is subtracted before quantization and added back through the bias, so the int8 range covers
    the signal, not the constant the biases put under it. ``y_range=None`` builds the fp32
    *probe* of the block instead: the same arithmetic with a float conv, whose normalised output
    ``{prefix}_y`` calibration reads.
    """
    from onnx import helper, numpy_helper

    x, w_name, b_name = conv.input
    p = _prefix(conv)
    W = numpy_helper.to_array(inits[w_name]).astype(np.float32)
    b = numpy_helper.to_array(inits[b_name]).astype(np.float32)
    conv_attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    pool_attrs = {a.name: helper.get_attribute_value(a) for a in pool.attribute}
    if any(pool_attrs.get("pads", [])) or pool_attrs.get("ceil_mode", 0):
        raise QuantizationError(f"{pool.name}: padded or ceil-mode max-pool cannot run before the bias")
    # conv(x) + b = conv(x - d) + (b + conv(d)); conv of a per-channel constant is a per-output constant
    b_eff = b + np.einsum("ock,c->o", W, d_in.astype(np.float32))
    arr = numpy_helper.from_array
    inits_out = [arr(np.array(1e-12, np.float32), p + "_eps"), arr(b_eff.reshape(1, -1, 1).astype(np.float32), p + "_b"),
                 arr(d_in.reshape(1, -1, 1).astype(np.float32), p + "_d"),
                 arr(np.array([-1, 1, 1], np.int64), p + "_shape")]
    nodes = [helper.make_node("Sub", [x, p + "_d"], [p + "_xs"]),
             helper.make_node("Abs", [p + "_xs"], [p + "_xa"])]
    if opset >= 18:  # axes became an input of ReduceMax in opset 18
        inits_out.append(arr(np.array([1, 2], np.int64), p + "_axes"))
        nodes.append(helper.make_node("ReduceMax", [p + "_xa", p + "_axes"], [p + "_a0"], keepdims=0))
    else:
        nodes.append(helper.make_node("ReduceMax", [p + "_xa"], [p + "_a0"], axes=[1, 2], keepdims=0))
    nodes += [helper.make_node("Max", [p + "_a0", p + "_eps"], [p + "_a"]),  # silent rows: a = eps, x - d = 0
              helper.make_node("Reshape", [p + "_a", p + "_shape"], [p + "_a3"])]
    if y_range is None:
        nodes += [helper.make_node("Div", [p + "_xs", p + "_a3"], [p + "_xn"]),
                  helper.make_node("Conv", [p + "_xn", w_name], [p + "_y"], name=conv.name, **conv_attrs),
                  helper.make_node("Mul", [p + "_y", p + "_a3"], [p + "_ys"]),
                  helper.make_node("Add", [p + "_ys", p + "_b"], [p + "_yb"]),
                  helper.make_node("Relu", [p + "_yb"], [p + "_yr"]),
                  helper.make_node("MaxPool", [p + "_yr"], [pool.output[0]], **pool_attrs)]
        return nodes, inits_out
    sw = np.maximum(np.abs(W).reshape(len(W), -1).max(axis=1), 1e-12) / 127.0  # per output channel
    wq = np.clip(np.round(W / sw[:, None, None]), -127, 127).astype(np.int8)
    lo, hi = min(y_range[0], 0.0), max(y_range[1], 0.0)
    sy = max(hi - lo, 1e-6) / 255.0
    zy = int(np.clip(round(-lo / sy), 0, 255))
    inits_out += [arr(np.array(1 / 127, np.float32), p + "_sx"), arr(np.array(128, np.uint8), p + "_zx"),
                  arr(np.array(0.0, np.float32), p + "_zero"), arr(np.array(128.0, np.float32), p + "_128"),
                  arr(wq, p + "_wq"), arr(sw.astype(np.float32), p + "_sw"), arr(np.zeros(len(W), np.int8), p + "_zw"),
                  arr(np.array(sy, np.float32), p + "_sy"), arr(np.array(zy, np.uint8), p + "_zy")]
    nodes += [
        # x - d lies in [-a, a]: uint8 with zero point 128, one scale per row (zero points per row too,
        # as QuantizeLinear wants them shaped like the scales)
        helper.make_node("Mul", [p + "_a", p + "_sx"], [p + "_sxa"]),
        helper.make_node("Mul", [p + "_a", p + "_zero"], [p + "_z0"]),
        helper.make_node("Add", [p + "_z0", p + "_128"], [p + "_z1"]),
        helper.make_node("Cast", [p + "_z1"], [p + "_zxa"], to=2),  # uint8
        helper.make_node("QuantizeLinear", [p + "_xs", p + "_sxa", p + "_zxa"], [p + "_xq"], axis=0),
        helper.make_node("DequantizeLinear", [p + "_xq", p + "_sx", p + "_zx"], [p + "_xd"]),
        helper.make_node("DequantizeLinear", [p + "_wq", p + "_sw", p + "_zw"], [p + "_wd"], axis=0),
        helper.make_node("Conv", [p + "_xd", p + "_wd"], [p + "_y"], name=conv.name, **conv_attrs),
        helper.make_node("QuantizeLinear", [p + "_y", p + "_sy", p + "_zy"], [p + "_yq"]),
        helper.make_node("MaxPool", [p + "_yq"], [p + "_ypq"], **pool_attrs),
        helper.make_node("DequantizeLinear", [p + "_ypq", p + "_sy", p + "_zy"], [p + "_yp"]),
        helper.make_node("Mul", [p + "_yp", p + "_a3"], [p + "_ys"]),
        helper.make_node("Add", [p + "_ys", p + "_b"], [p + "_yb"]),
        helper.make_node("Relu", [p + "_yb"], [pool.output[0]]),
    ]
    return nodes, inits_out


def silence_inputs(blocks: list[tuple], inits: dict) -> list[np.ndarray]:
    """Per conv block (:func:`conv_blocks`), its input at digital silence (zero waveform), per channel.

    Block 1 reads the (zero) waveform; block ``i`` reads ``maxpool(relu(conv_i-1(d) + b))`` of the
    constant ``d`` before it, i.e. ``relu(sum_k W . d + b)`` per channel (the convolutions are
    unpadded, so a constant input gives a constant output).
    """
    from onnx import numpy_helper

    out, d = [], None
    for i, (conv, _, pool) in enumerate(blocks):
        if i and conv.input[0] != blocks[i - 1][2].output[0]:
            raise QuantizationError(f"conv {conv.name} does not read the previous block's max-pool")
        W = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
        b = numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)
        d = np.zeros(W.shape[1]) if d is None else d
        out.append(d.astype(np.float32))
        d = np.maximum(np.einsum("ock,c->o", W, d) + b, 0.0)
    return out


def _rewrite_convs(model, ranges: dict[str, tuple[float, float]] | None):
    """Replace every conv block after the first (in place); returns (model, probe output names)."""
    from onnx import TensorProto, helper

    g = model.graph
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 17)
    inits = {i.name: i for i in g.initializer}
    all_blocks = conv_blocks(g)
    blocks, silence = all_blocks[1:], silence_inputs(all_blocks, inits)[1:]
    replaced: dict[int, list] = {}
    dropped: set[int] = set()
    new_inits, probes = [], []
    for (conv, relu, pool), d_in in zip(blocks, silence):
        nodes, more = _row_scaled_block(conv, pool, inits, opset, d_in,
                                        None if ranges is None else ranges[conv.name])
        replaced[id(pool)] = nodes
        dropped |= {id(conv), id(relu)}
        new_inits += more
        probes.append(_prefix(conv) + "_y")
    kept = []
    for n in g.node:
        if id(n) in replaced:
            kept += replaced[id(n)]
        elif id(n) not in dropped:
            kept.append(n)
    used = {i for n in kept for i in n.input}
    keep_inits = [i for i in g.initializer if i.name in used]  # the fp32 conv weights go when quantized
    del g.node[:]
    g.node.extend(kept)
    del g.initializer[:]
    g.initializer.extend(keep_inits + new_inits)
    if ranges is None:
        g.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, None) for name in probes)
    return model, [c.name for c, _, _ in blocks], probes


def quantize_convs_pair(whole: Path, stream: Path, out_whole: Path, out_stream: Path,
                        calibration: Sequence[np.ndarray], *, context: int, hop: int, sample_rate: int,
                        lstm_layers: int, lstm_hidden: int) -> list[str]:
    """Row-scaled int8 for the conv blocks after the first, in both graphs; returns the conv names.

    The only calibrated numbers are each conv's output range *in the normalised domain* (input
    divided by its per-row maximum), so they do not depend on the level of the calibration audio.
    Ranges come from the stream graph fed the scorer's step shape (``CALIB_BATCH`` rows of
    ``CALIB_STEP_S`` with context, zero state) at the ``CALIB_PERCENTILE`` percentiles (a few
    outliers do not widen the range), and both graphs use the same ranges.
    """
    import onnx
    import onnxruntime as ort

    stream_model = onnx.load(str(stream))
    if len(conv_blocks(stream_model.graph)) < 2:
        return []  # a single conv block: it reads the waveform and stays fp32
    x = np.concatenate([np.asarray(a, np.float32) for a in calibration])[: int(CALIB_MAX_S * sample_rate)] \
        if calibration else np.zeros(0, np.float32)
    step = int(CALIB_STEP_S * sample_rate) // hop * hop
    rows = [x[i:i + step + context] for i in range(0, len(x) - step - context + 1, step)]
    if len(rows) < CALIB_BATCH:
        raise QuantizationError(f"calibration audio too short: {len(x) / sample_rate:.1f} s, need at least "
                                f"{(CALIB_BATCH * step + context) / sample_rate:.1f} s")
    try:
        probe = onnx.ModelProto()
        probe.CopyFrom(stream_model)
        probe, names, outputs = _rewrite_convs(probe, None)
        so = ort.SessionOptions()
        so.log_severity_level = 3
        session = ort.InferenceSession(probe.SerializeToString(), so, providers=["CPUExecutionProvider"])
        seen: dict[str, list[np.ndarray]] = {o: [] for o in outputs}
        z = np.zeros((lstm_layers, CALIB_BATCH, lstm_hidden), np.float32)
        for i in range(0, len(rows) - CALIB_BATCH + 1, CALIB_BATCH):
            ys = session.run(outputs, {"audio": np.stack(rows[i:i + CALIB_BATCH]), "h0": z, "c0": z})
            for o, y in zip(outputs, ys):
                seen[o].append(y.ravel()[::CALIB_SUBSAMPLE])
        ranges = {}
        for name, o in zip(names, outputs):
            v = np.concatenate(seen[o])
            ranges[name] = (float(np.percentile(v, 100 - CALIB_PERCENTILE)), float(np.percentile(v, CALIB_PERCENTILE)))
        for src, dst in ((stream_model, out_stream), (onnx.load(str(whole)), out_whole)):
            onnx.save(_rewrite_convs(src, ranges)[0], str(dst))
    except QuantizationError:
        raise
    except Exception as e:
        msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise QuantizationError(f"int8 convolution quantization failed ({msg})") from None
    return names


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
            audio = normalise(load_audio(manifest.parent / r["file"], sample_rate), norm, sample_rate)
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
    """Run both models on the check audio and the validation set; CCC per head; fail on non-finite.

    int8 runs as the scorer runs it (streaming, ``DEFAULT_CHUNK_S`` per step: activation
    scales are per chunk), fp32 as one whole pass.
    """
    heads = list(fp32.outputs)
    rep = QuantReport(n_validation=len(validation))
    agree: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {h: [] for h in heads}  # (fp32, int8)
    val: dict[str, list[tuple[np.ndarray, np.ndarray, np.ndarray]]] = {h: [] for h in heads}  # + gold
    items = [(n, x, None) for n, x in check_items] + list(validation)
    for name, x, g in items:
        if len(x) < fp32.hop:
            continue
        yf, yq = fp32.infer(x), int8.infer_stream(x)
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
