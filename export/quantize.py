"""Dynamic int8 quantization of an exported pair, and what it costs in CCC.

Dynamic quantization (``onnxruntime.quantization.quantize_dynamic``) stores weights as int8 and
quantizes activations on the fly from their observed range, so it needs no calibration set. The
price is measured, not assumed: :func:`compare_quantized` reports, per head, the agreement CCC of
int8 vs fp32 predictions on the check audio and -- given a labelled validation manifest -- the CCC
against the gold standard for both models and the change.

Dynamic activation scales depend on the tensor seen, so chunked int8 streaming is *not* bit-equal
to the int8 whole pass; the report gives that difference too.
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
from cusemo_batch.model import Model
from cusemo_batch.training.categorical import DEFAULT_INTENSITY, DEFAULT_MAP

# Which ops to quantize. Measured (paper sizes, 300 s, 2 threads, onnxruntime 1.31): fp32 0.44 s;
# MatMul+LSTM 0.37 s; MatMul only 0.45 s; all ops incl. Conv (ConvInteger) 1.2 s -- the int8 conv
# kernels are 3x slower than the fp32 ones here and the first conv has a single input channel,
# so Conv stays fp32.
QUANT_OPS = ("MatMul", "LSTM")
QUANT_CHUNK_FRAMES = 320



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
