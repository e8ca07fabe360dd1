"""From a validated corpus to training batches: audio + gold at the label rate, splits, segments.

Segments: each call is cut into consecutive windows of ``segment_s`` (the paper: 150 s); the last
window is shorter and padded. A batch is padded only to its longest member (rounded to a whole
number of label bins and model frames), and a mask marks the label bins that have both a gold value
and complete model frames, so neither the loss nor the metrics ever see padding.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from cusemo_batch.audio import load_audio, normalise
from cusemo_batch.files import sha256_file

from .augment import augment, speed_perturb
from .config import Config
from .corpus import Corpus
from .labels import binary_target, gold_at_rate, gold_standard, interval_target


@dataclass
class CallData:
    call_id: str
    group: str
    audio: np.ndarray  # float32 at the model rate, normalised as a whole (what the scorer feeds)
    valence: np.ndarray  # gold at the label rate, [-1, 1]
    arousal: np.ndarray
    alpha_target: float  # [0, 1] or NaN
    beta_target: float  # 1/0 or NaN
    raw: np.ndarray | None = None  # decoded, not normalised: kept only for channel augmentation


@dataclass(frozen=True)
class Segment:
    call: int  # index into the call list
    bin0: int
    bin1: int


def load_calls(corpus: Corpus, cfg: Config) -> list[CallData]:
    """Decode every call once (calls are minutes long; the corpus fits in memory)."""
    d = cfg.data
    group_col = group_column(corpus, d.group_by)
    out = []
    for c in corpus.calls:
        gold = gold_at_rate(gold_standard(c, d.gold, d.gold_annotator or None), d.label_rate_ms)
        raw = load_audio(c.audio_path, cfg.model.sample_rate)
        audio = normalise(raw, d.normalisation, cfg.model.sample_rate)
        group = str(c.context.get(group_col) or c.call_id) if group_col else c.call_id
        out.append(CallData(c.call_id, group, audio, gold.valence.astype(np.float32),
                            gold.arousal.astype(np.float32), interval_target(c, d.alpha_target),
                            binary_target(c, d.beta_target), raw if cfg.augment.enabled else None))
    return out


def group_column(corpus: Corpus, group_by: str) -> str | None:
    if group_by == "auto":
        return "speaker" if "speaker" in corpus.context_columns else None
    if group_by in ("", "call", "call_id"):
        return None
    if group_by not in corpus.context_columns:
        raise ValueError(f"group_by column {group_by!r} is not in context.csv")
    return group_by


def data_hash(corpus: Corpus) -> str:
    """sha256 over every call's audio and annotation bytes: identifies the training data exactly."""
    h = hashlib.sha256()
    for c in sorted(corpus.calls, key=lambda c: c.call_id):
        h.update(c.call_id.encode())
        h.update(sha256_file(c.audio_path).encode())
        for t in sorted(c.tracks, key=lambda t: t.annotator):
            h.update(sha256_file(t.path).encode())
    return h.hexdigest()


def split_groups(groups: list[str], fractions: tuple[float, float, float], seed: int) -> list[str]:
    """Assign each item to train/dev/test by *group* (speaker or call), seeded and deterministic.

    Groups are shuffled with ``seed`` and dealt out so the split sizes in groups follow
    ``fractions`` (largest-remainder rounding, at least one group in every non-empty split when
    there are enough groups). Returns the split name per item.
    """
    unique = sorted(set(groups))
    rng = np.random.default_rng(seed)
    order = [unique[i] for i in rng.permutation(len(unique))]
    n = len(unique)
    raw = [f * n for f in fractions]
    counts = [int(math.floor(x)) for x in raw]
    for i in sorted(range(3), key=lambda i: raw[i] - counts[i], reverse=True)[: n - sum(counts)]:
        counts[i] += 1
    for i in range(3):  # ensure non-empty splits when asked for and possible
        if fractions[i] > 0 and counts[i] == 0 and n >= 3:
            j = int(np.argmax(counts))
            counts[j] -= 1
            counts[i] += 1
    names = ["train"] * counts[0] + ["dev"] * counts[1] + ["test"] * counts[2]
    assign = dict(zip(order, names))
    return [assign[g] for g in groups]


def valid_bins(call: CallData, hop: int, sample_rate: int, bin_s: float) -> int:
    """Number of leading label bins with a gold value *and* complete model frames under them."""
    frames = len(call.audio) // hop
    covered = int(math.floor(frames * hop / sample_rate / bin_s + 1e-9))
    return min(len(call.valence), covered)


def make_segments(calls: list[CallData], indices: list[int], cfg: Config,
                  rng: np.random.Generator | None = None) -> list[Segment]:
    """Cut each call into consecutive ``segment_s`` windows (the last one shorter).

    With ``rng`` and ``[data] segment_jitter`` the cut points move by a random offset per call (a
    fresh one every epoch), so a short corpus does not show the network the same segment edges (and
    the same CCC normalisation windows) every epoch. Pieces under ``min_segment_s`` that the offset
    cuts off the start are dropped for that epoch only; without jitter every bin is kept.
    """
    bin_s = cfg.data.label_rate_ms / 1000
    per_seg = int(round(cfg.data.segment_s / bin_s))
    min_bins = int(round(cfg.data.min_segment_s / bin_s))
    jitter = rng is not None and cfg.data.segment_jitter
    segs = []
    for i in indices:
        n = valid_bins(calls[i], cfg.model.hop, cfg.model.sample_rate, bin_s)
        offset = int(rng.integers(0, per_seg)) if jitter and n > per_seg else 0
        for b0 in range(-offset, n, per_seg):
            lo, hi = max(b0, 0), min(b0 + per_seg, n)
            if jitter and hi - lo < min_bins:
                continue
            segs.append(Segment(i, lo, hi))
    return segs


def augment_calls(calls: list[CallData], indices: list[int], cfg: Config,
                  rng: np.random.Generator) -> dict[int, np.ndarray]:
    """This epoch's line for each call: the *whole* raw call through a random telephone line
    (:func:`cusemo_batch.training.augment.augment`), then the model's input normalisation over the
    whole call -- exactly what the scorer does to a track, so the segments cut from it keep the
    loudness changes within the call. Empty without ``[augment] enabled``."""
    if not cfg.augment.enabled:
        return {}
    sr = cfg.model.sample_rate
    return {i: normalise(augment(calls[i].raw, sr, cfg.augment, rng), cfg.data.normalisation, sr)
            for i in indices if calls[i].raw is not None}


def batch_arrays(segs: list[Segment], calls: list[CallData], cfg: Config,
                 rng: np.random.Generator | None = None,
                 line_audio: dict[int, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Pad a list of segments into arrays: audio [B, S], valence/arousal/mask [B, K], targets [B].

    ``line_audio`` maps call index -> this epoch's audio of the call (:func:`augment_calls`); calls not
    in it use their clean normalised audio. ``lengths`` [B] counts the real (unpadded) samples per
    row, for the batch-norm statistics. With ``rng`` and ``[augment] speeds`` each segment is played
    at a random speed (:func:`segment_speeds`), its labels stretched with it.
    """
    sr, bin_s = cfg.model.sample_rate, cfg.data.label_rate_ms / 1000
    bin_samples = bin_s * sr
    if abs(bin_samples - round(bin_samples)) > 1e-6:
        raise ValueError(f"label bin {bin_s} s is not a whole number of samples at {sr} Hz")
    unit = math.lcm(int(round(bin_samples)), cfg.model.hop)
    speeds = segment_speeds(len(segs), cfg, rng)
    bins = [speed_bins(s.bin1 - s.bin0, f) for s, f in zip(segs, speeds)]
    n_samples = int(math.ceil(max(bins) * bin_samples / unit) * unit)
    n_bins = int(round(n_samples / bin_samples))
    B = len(segs)
    audio = np.zeros((B, n_samples), np.float32)
    val = np.zeros((B, n_bins), np.float32)
    aro = np.zeros((B, n_bins), np.float32)
    mask = np.zeros((B, n_bins), bool)
    lengths = np.zeros(B, np.int64)
    for j, (s, f, k) in enumerate(zip(segs, speeds, bins)):
        c = calls[s.call]
        a0 = int(round(s.bin0 * bin_samples))
        source = (line_audio or {}).get(s.call, c.audio)
        # the resampling filter's tail needs a few samples past the segment's end; cut back to the
        # batch (at speed 1 nothing is resampled and the labels are the gold itself)
        chunk = speed_perturb(source[a0:a0 + int(math.ceil(n_samples * f)) + 64], f)[:n_samples]
        val[j, :k] = stretch_labels(c.valence, s.bin0, k, f)
        aro[j, :k] = stretch_labels(c.arousal, s.bin0, k, f)
        if rng is not None and cfg.data.gain_db > 0:
            chunk = chunk * np.float32(10 ** (rng.uniform(-cfg.data.gain_db, cfg.data.gain_db) / 20))
        audio[j, :len(chunk)] = chunk
        lengths[j] = len(chunk)
        mask[j, :k] = True
    return {
        "audio": audio, "lengths": lengths, "valence": val, "arousal": aro, "mask": mask,
        "alpha": np.array([calls[s.call].alpha_target for s in segs], np.float32),
        "beta": np.array([calls[s.call].beta_target for s in segs], np.float32),
    }


def segment_speeds(n: int, cfg: Config, rng: np.random.Generator | None) -> list[float]:
    """One speed per segment: drawn from ``[augment] speeds`` when training with it, else 1.

    The draws come from ``rng`` only when speed perturbation is on, so a recipe without it keeps
    its batches (and gains) draw for draw.
    """
    a = cfg.augment
    if rng is None or not (a.enabled and a.speeds):
        return [1.0] * n
    return [float(a.speeds[i]) for i in rng.integers(0, len(a.speeds), size=n)]


def speed_bins(n_bins: int, factor: float) -> int:
    """Label bins that ``n_bins`` of source cover once played ``factor`` times faster (whole bins)."""
    return int(math.floor(n_bins / factor + 1e-9))


def stretch_labels(gold: np.ndarray, bin0: int, n_out: int, factor: float) -> np.ndarray:
    """Gold for ``n_out`` bins of audio played ``factor`` times faster from source bin ``bin0``.

    Output bin ``k`` spans source time ``[k, k + 1) * factor`` bins after ``bin0``; its label is
    the gold linearly interpolated at that span's centre (the gold is a smooth rater mean).
    """
    centres = bin0 + (np.arange(n_out) + 0.5) * factor - 0.5
    return np.interp(centres, np.arange(len(gold)), gold).astype(np.float32)
