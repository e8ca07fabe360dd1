"""Helpers of the accuracy benchmarks (``bench_accuracy.py``, ``bench_transfer.py``): eGEMAPS windows
and whole-file functionals (cached), reference change events, event matching, speech ratio and
speech frames, corpus hash. Pure numpy / polars / opensmile; no torch.

Conventions (as in :mod:`cusemo_batch.timegrid`): label bin ``k`` of width ``bin_s`` covers
``[k*bin_s, (k+1)*bin_s)`` seconds of the call, its centre is ``(k + 0.5) * bin_s``.
"""

from __future__ import annotations

import atexit
import csv
import hashlib
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np

from cusemo_batch import silence
from cusemo_batch.files import sha256_file

# --------------------------------------------------------------------------------------------------
# eGEMAPS functionals over sliding windows, one openSMILE pass per call
# --------------------------------------------------------------------------------------------------
#
# openSMILE's eGeMAPSv02 config computes its functionals over the whole input (frameMode = full),
# so calling ``process_signal`` once per 4 s window re-extracts every low-level descriptor about
# 8 times (measured: ~0.14 s per window, i.e. ~30 min for the corpus on a busy 2-core machine).
# The config exposes the functionals' frame mode as a command-line option
# (``frameModeFunctionalsConf``, shared/FrameModeFunctionals.conf.inc), so we point it at a
# fixed-window include: the LLDs are extracted once per call and every functional is computed over
# ``window_s`` windows every ``hop_s`` -- the same 88 eGeMAPS v02 functionals, ~10x faster.
# (Windows differ from a standalone 4 s extraction only in the LLD context at the window edges:
# smoothing and F0 tracking see the neighbouring audio, as they would in a continuous stream.)

FRAME_MODE_TEMPLATE = """\
; written by benchmarks/accuracy_lib.py: eGeMAPS functionals over fixed sliding windows
frameMode = fixed
frameSize = {window_s}
frameStep = {hop_s}
frameCenterSpecial = left
"""

_SMILE = None  # one openSMILE instance per process (workers build their own)
_SMILE_KEY: tuple | None = None


def _smile(window_s: float, hop_s: float):
    global _SMILE, _SMILE_KEY
    import opensmile

    key = (window_s, hop_s)
    if _SMILE is None or _SMILE_KEY != key:
        conf = Path(tempfile.gettempdir()) / f"cusemo_bench_framemode_{os.getpid()}_{window_s:g}_{hop_s:g}.conf.inc"
        conf.write_text(FRAME_MODE_TEMPLATE.format(window_s=window_s, hop_s=hop_s))
        atexit.register(conf.unlink, missing_ok=True)
        _SMILE = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                                 feature_level=opensmile.FeatureLevel.Functionals,
                                 options={"frameModeFunctionalsConf": str(conf)})
        _SMILE_KEY = key
    return _SMILE


@dataclass
class WindowFeatures:
    """eGeMAPS functionals of one call: ``features[j]`` over ``[start_s[j], end_s[j])`` (call time)."""

    features: np.ndarray  # float32 [n_windows, 88]
    start_s: np.ndarray
    end_s: np.ndarray
    columns: list[str]
    window_s: float


def frame_offset(window_s: float, bin_s: float) -> float:
    """Seconds to skip at the call start so that window centres fall on label-bin centres."""
    return float(np.mod(0.5 * bin_s - window_s / 2, bin_s))


def extract_windows(x: np.ndarray, sample_rate: int, window_s: float, bin_s: float) -> WindowFeatures:
    """eGeMAPS v02 functionals over ``window_s`` windows every ``bin_s``, centred on bin centres."""
    off = frame_offset(window_s, bin_s)
    i0 = int(round(off * sample_rate))
    df = _smile(window_s, bin_s).process_signal(np.ascontiguousarray(x[i0:], dtype=np.float32), sample_rate)
    start = np.array([s.total_seconds() for s in df.index.get_level_values("start")]) + i0 / sample_rate
    end = np.array([e.total_seconds() for e in df.index.get_level_values("end")]) + i0 / sample_rate
    return WindowFeatures(df.to_numpy(dtype=np.float32), start, end, list(df.columns), window_s)


def features_for_bins(w: WindowFeatures, n_bins: int, bin_s: float, delay_bins: int = 0) -> np.ndarray:
    """Feature row per label bin: the *complete* window whose centre is nearest to the bin centre
    shifted ``delay_bins`` earlier (annotation-delay compensation). At the call edges, where no
    complete window is centred on the bin, the nearest complete window is used (clamped)."""
    # openSMILE stamps a window with its LLD frames' span (window_s + one LLD frame length) and
    # flushes the input's remainder into the last window(s): "complete" = the common span, +-20 ms.
    length = w.end_s - w.start_s
    full = (np.abs(length - np.median(length)) <= 0.02) & (length >= w.window_s - 1e-6)
    idx = np.flatnonzero(full) if full.any() else np.arange(len(w.start_s))  # very short call: take what exists
    centres = w.start_s[idx] + np.minimum(w.window_s, length[idx]) / 2
    want = (np.arange(n_bins) - delay_bins + 0.5) * bin_s
    pos = np.clip(np.searchsorted(centres, want), 1, max(len(centres) - 1, 1))
    left = np.clip(pos - 1, 0, len(centres) - 1)
    right = np.clip(pos, 0, len(centres) - 1)
    pick = np.where(np.abs(centres[left] - want) <= np.abs(centres[right] - want), left, right)
    return np.nan_to_num(w.features[idx[pick]], nan=0.0, posinf=0.0, neginf=0.0)


def cached_windows(audio_path: Path, x: np.ndarray, sample_rate: int, window_s: float, bin_s: float,
                   cache_dir: Path | None) -> WindowFeatures:
    """:func:`extract_windows` with a per-call ``.npz`` cache keyed by audio bytes and parameters."""
    content = sha256_file(audio_path) if cache_dir is not None else ""
    return _cached_windows(audio_path.stem, content, x, sample_rate, window_s, bin_s, cache_dir)


def cached_windows_of_array(name: str, x: np.ndarray, sample_rate: int, window_s: float, bin_s: float,
                            cache_dir: Path | None) -> WindowFeatures:
    """:func:`extract_windows` of audio that exists only in memory (a simulated channel or level),
    cached under ``name`` and keyed by the samples themselves: a change in the code that made them
    (a codec, a noise generator) gives other samples, hence a cache miss, never stale features."""
    content = array_sha256(x) if cache_dir is not None else ""
    return _cached_windows(name, content, x, sample_rate, window_s, bin_s, cache_dir)


def array_sha256(x: np.ndarray) -> str:
    """sha256 of the float32 samples (the bytes openSMILE is given)."""
    return hashlib.sha256(np.ascontiguousarray(x, dtype=np.float32).tobytes()).hexdigest()


def _cached_windows(name: str, content_sha: str, x: np.ndarray, sample_rate: int, window_s: float, bin_s: float,
                    cache_dir: Path | None) -> WindowFeatures:
    path = None
    if cache_dir is not None:
        import opensmile

        key = hashlib.sha256("|".join([content_sha, str(sample_rate), f"{window_s:g}", f"{bin_s:g}",
                                       opensmile.__version__, "eGeMAPSv02", "fixed-v1"]).encode()).hexdigest()[:20]
        path = cache_dir / f"{name}-{key}.npz"
        if path.is_file():
            z = np.load(path, allow_pickle=False)
            return WindowFeatures(z["features"], z["start_s"], z["end_s"], [str(c) for c in z["columns"]],
                                  float(z["window_s"]))
    w = extract_windows(x, sample_rate, window_s, bin_s)
    if path is not None:
        _save_npz(path, features=w.features, start_s=w.start_s, end_s=w.end_s, columns=np.array(w.columns),
                  window_s=np.float64(w.window_s))
    return w


def _save_npz(path: Path, **arrays) -> None:
    """Write atomically (rename), so a killed run never leaves a truncated cache entry."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)


# --------------------------------------------------------------------------------------------------
# eGEMAPS functionals of a whole (short) file
# --------------------------------------------------------------------------------------------------
#
# For one score per file (BAVED words, 1-3 s): openSMILE's default eGeMAPSv02 functionals over the
# whole input -- the same 88 features, in the same order, as the windows above, so a regressor
# trained on windows applies unchanged. A file is shorter than a training window (4 s), which is
# the closest a single vector gets to the training features.

_SMILE_FULL = None


def file_functionals(x: np.ndarray, sample_rate: int) -> tuple[np.ndarray, list[str]]:
    """The 88 eGeMAPS v02 functionals of the whole signal (float32) and their column names."""
    global _SMILE_FULL
    import opensmile

    if _SMILE_FULL is None:
        _SMILE_FULL = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02,
                                      feature_level=opensmile.FeatureLevel.Functionals)
    df = _SMILE_FULL.process_signal(np.ascontiguousarray(x, dtype=np.float32), sample_rate)
    return df.to_numpy(dtype=np.float32)[0], list(df.columns)


def cached_file_functionals(name: str, x: np.ndarray, sample_rate: int,
                            cache_dir: Path | None) -> tuple[np.ndarray, list[str]]:
    """:func:`file_functionals` cached under ``name``, keyed by the samples (as
    :func:`cached_windows_of_array`)."""
    path = None
    if cache_dir is not None:
        import opensmile

        key = hashlib.sha256("|".join([array_sha256(x), str(sample_rate), opensmile.__version__, "eGeMAPSv02",
                                       "full-v1"]).encode()).hexdigest()[:20]
        path = cache_dir / f"{name}-{key}.npz"
        if path.is_file():
            z = np.load(path, allow_pickle=False)
            return z["features"], [str(c) for c in z["columns"]]
    f, columns = file_functionals(x, sample_rate)
    if path is not None:
        _save_npz(path, features=f, columns=np.array(columns))
    return f, columns


# --------------------------------------------------------------------------------------------------
# Speech ratio per window (the scorer's definition)
# --------------------------------------------------------------------------------------------------

def speech_ratio(x: np.ndarray, sample_rate: int, n_bins: int, bin_s: float, vad_frame_s: float) -> np.ndarray:
    """Fraction of each bin in which the VAD hears speech -- computed exactly as
    :meth:`cusemo_batch.scorer.Scorer.timeseries` does (``silence.detect_speech`` on 20 ms frames,
    each VAD frame assigned to the window of its centre)."""
    speech = silence.detect_speech(x, sample_rate, vad_frame_s)
    vad_s = silence.frame_hop(sample_rate, vad_frame_s) / sample_rate
    win = np.clip(((np.arange(len(speech)) + 0.5) * vad_s / bin_s).astype(np.int64), 0, n_bins - 1)
    ratio = np.bincount(win, weights=speech.astype(np.float64), minlength=n_bins)[:n_bins] * vad_s / bin_s
    return np.clip(ratio, 0.0, 1.0)


def speech_frames(x: np.ndarray, sample_rate: int, n_frames: int, frame_s: float, vad_frame_s: float) -> np.ndarray:
    """Which model frames (``frame_s`` apart, frame ``j`` centred at ``(j + 0.5) * frame_s``) the
    scorer's VAD (``silence.detect_speech``) hears as speech: each frame takes the decision of the
    VAD frame under its centre."""
    speech = silence.detect_speech(x, sample_rate, vad_frame_s)
    if speech.size == 0:
        return np.zeros(n_frames, dtype=bool)
    vad_s = silence.frame_hop(sample_rate, vad_frame_s) / sample_rate
    idx = np.clip(((np.arange(n_frames) + 0.5) * frame_s / vad_s).astype(np.int64), 0, len(speech) - 1)
    return speech[idx]


# --------------------------------------------------------------------------------------------------
# Reference change events from segments.csv
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Utt:
    start_s: float
    end_s: float
    emotion: str
    intensity: str
    valence: float
    arousal: float


def read_segments(path: Path) -> dict[str, list[Utt]]:
    """``segments.csv`` of a ``corpus from-categorical`` corpus: utterances per call, in time order."""
    out: dict[str, list[Utt]] = {}
    with open(path, newline="", encoding="utf-8") as f:
        for r in csv.DictReader(f):
            out.setdefault(r["call_id"], []).append(Utt(float(r["start_s"]), float(r["end_s"]), r["emotion"],
                                                        r.get("intensity", ""), float(r["valence"]),
                                                        float(r["arousal"])))
    for v in out.values():
        v.sort(key=lambda u: u.start_s)
    return out


KIND = {("valence", -1): "valence_drop", ("valence", 1): "valence_rise",
        ("arousal", 1): "arousal_spike", ("arousal", -1): "arousal_drop"}


def reference_events(utts: list[Utt], min_change: float, until_s: float) -> list[dict]:
    """True change events of one pseudo-call.

    The corpus' reference trajectory is piecewise constant: utterance ``i``'s target (valence,
    arousal) holds from its ``start_s`` through the pause after it, up to the next utterance's
    ``start_s``. A reference event of a dimension is a switch between consecutive utterances whose
    targets differ by at least ``min_change`` in that dimension (the detector's own threshold); its
    time is the switch time, ``start_s`` of the later utterance; its kind follows the sign. Switches
    at or after ``until_s`` (the end of the evaluated bins) are left out.
    """
    out = []
    for prev, cur in zip(utts, utts[1:]):
        if cur.start_s >= until_s:
            break
        for dim in ("valence", "arousal"):
            d = getattr(cur, dim) - getattr(prev, dim)
            if abs(d) >= min_change - 1e-9:
                out.append({"dimension": dim, "kind": KIND[(dim, int(np.sign(d)))], "t_s": cur.start_s,
                            "magnitude": d})
    return out


def reference_track(utts: list[Utt], n_bins: int, bin_s: float, fs: float = 20.0) -> tuple[np.ndarray, np.ndarray]:
    """The reference trajectory averaged into bins (as the corpus builder bins its raters)."""
    per = int(round(fs * bin_s))
    t = np.arange(n_bins * per) / fs
    starts = np.array([u.start_s for u in utts])
    i = np.clip(np.searchsorted(starts, t, side="right") - 1, 0, len(utts) - 1)
    v = np.array([u.valence for u in utts])[i].reshape(n_bins, per).mean(1)
    a = np.array([u.arousal for u in utts])[i].reshape(n_bins, per).mean(1)
    return v, a


# --------------------------------------------------------------------------------------------------
# Matching
# --------------------------------------------------------------------------------------------------

def match_greedy(ref_t: Iterable[float], det_t: Iterable[float], tol_s: float) -> list[tuple[int, int]]:
    """One-to-one matching of reference and detected times within ``+-tol_s``: all pairs in reach,
    closest first, each event used at most once (ties: earlier reference, then earlier detection)."""
    r = np.asarray(list(ref_t), dtype=float)
    d = np.asarray(list(det_t), dtype=float)
    if r.size == 0 or d.size == 0:
        return []
    dist = np.abs(r[:, None] - d[None, :])
    ii, jj = np.nonzero(dist <= tol_s + 1e-9)
    order = np.lexsort((jj, ii, dist[ii, jj]))
    used_r, used_d, pairs = set(), set(), []
    for k in order:
        i, j = int(ii[k]), int(jj[k])
        if i not in used_r and j not in used_d:
            used_r.add(i), used_d.add(j)
            pairs.append((i, j))
    return pairs


def prf(tp: int, n_det: int, n_ref: int) -> dict:
    p = tp / n_det if n_det else float("nan")
    r = tp / n_ref if n_ref else float("nan")
    f = 2 * p * r / (p + r) if n_det and n_ref and (p + r) > 0 else (0.0 if n_ref or n_det else float("nan"))
    return {"tp": tp, "n_detected": n_det, "n_reference": n_ref, "precision": p, "recall": r, "f1": f}


def score_events(ref: dict[str, list[dict]], det: dict[str, list[dict]], tol_s: float) -> dict:
    """P/R/F1 per dimension (and per kind) over calls; a match needs the same call and kind.

    ``ref[call]`` items have ``kind``/``dimension``/``t_s``; ``det[call]`` items ``kind``/
    ``dimension``/``t_change_s``. Also the timing of matches (detected - reference, seconds).
    """
    kinds = sorted(KIND.values())
    tp = dict.fromkeys(kinds, 0)
    nd = dict.fromkeys(kinds, 0)
    nr = dict.fromkeys(kinds, 0)
    lags: dict[str, list[float]] = {"valence": [], "arousal": []}
    for call in sorted(set(ref) | set(det)):
        for kind in kinds:
            rt = [e["t_s"] for e in ref.get(call, []) if e["kind"] == kind]
            dt = [e["t_change_s"] for e in det.get(call, []) if e["kind"] == kind]
            pairs = match_greedy(rt, dt, tol_s)
            tp[kind] += len(pairs)
            nd[kind] += len(dt)
            nr[kind] += len(rt)
            lags[kind.split("_")[0]] += [dt[j] - rt[i] for i, j in pairs]
    out: dict = {"by_kind": {k: prf(tp[k], nd[k], nr[k]) for k in kinds}}
    for dim in ("valence", "arousal"):
        ks = [k for k in kinds if k.startswith(dim)]
        m = prf(sum(tp[k] for k in ks), sum(nd[k] for k in ks), sum(nr[k] for k in ks))
        lag = np.asarray(lags[dim])
        m["mean_lag_s"] = float(lag.mean()) if lag.size else float("nan")
        m["mean_abs_lag_s"] = float(np.abs(lag).mean()) if lag.size else float("nan")
        out[dim] = m
    return out


# --------------------------------------------------------------------------------------------------
# Corpus identity
# --------------------------------------------------------------------------------------------------

def data_hash(calls) -> str:
    """sha256 over every call's audio and annotation bytes: the ``data_sha256`` a training run records
    in its ``config.json`` (the training package's own function; it does not import torch)."""
    from types import SimpleNamespace

    from cusemo_batch.training.data import data_hash as training_data_hash

    return training_data_hash(SimpleNamespace(calls=list(calls)))
