"""Bootstrap a CusEmo-layout corpus from a categorical emotional-speech corpus (``corpus from-categorical``).

Users rarely have continuous annotations on day one. Acted corpora (RAVDESS, ...) give short
utterances with a category. We turn them into *pseudo-calls* so the whole continuous pipeline
(curation -> training -> export -> scoring) runs on real speech:

1. per speaker, utterances of one emotion and intensity are grouped into *episodes* of 1-3
   utterances (an emotion persists for a while in a real call), and episodes of different emotions
   are concatenated into calls of a seeded random length, separated by short pauses;
2. each utterance gets a target point (valence, arousal) from the category map below, scaled by
   intensity; the *reference* trajectory holds it for the utterance and the pause after it;
3. two simulated raters follow the reference with their own reaction lag, smoothing, gain, bias and
   slow noise (the known behaviour of joystick raters), sampled every 500 ms on the ±1000 Darma
   scale: annotator A1 written as a DARMA export, A2 as a plain track, so both readers are exercised.

The category -> (valence, arousal) magnitudes are **our own design choice** following the quadrants
of Russell's circumplex model (1980), not published values; override them with ``--map``. Splits
must be by speaker: ``context.csv`` carries a ``speaker`` column that training groups on.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from cusemo_batch.audio import load_audio
from cusemo_batch.tomlconfig import TomlConfigError, read_toml

# Circumplex quadrants (Russell 1980); magnitudes are a documented design choice (shared/data/README.md).
DEFAULT_MAP: dict[str, tuple[float, float]] = {
    "neutral": (0.0, -0.2),
    "calm": (0.3, -0.5),
    "happy": (0.7, 0.5),
    "surprised": (0.3, 0.7),
    "sad": (-0.6, -0.5),
    "boredom": (-0.3, -0.6),
    "angry": (-0.6, 0.8),
    "fearful": (-0.6, 0.6),
    "disgust": (-0.6, 0.3),
}
DEFAULT_INTENSITY = {"normal": 0.7, "strong": 1.0, "": 1.0}
# Interval context variable for the alpha task on bootstrapped corpora: emotion intensity 0..10.
INTENSITY_SCORE = {"neutral": 0.0, "normal": 5.0, "strong": 10.0}
SAMPLE_RATE = 8000
BIN_S = 0.5
MAGNITUDE = 1000.0

LICENCE_NOTE = """This corpus is derived from RAVDESS speech (Livingstone & Russo 2018, PLoS ONE 13(5):
e0196391, https://doi.org/10.1371/journal.pone.0196391), licensed CC BY-NC-SA 4.0: attribution,
non-commercial use only, share-alike. Anything trained on it inherits these terms.
"""


class ManifestError(ValueError):
    """The categorical manifest cannot be used (one-line message)."""


@dataclass(frozen=True)
class Utterance:
    path: Path
    speaker: str
    gender: str
    emotion: str
    intensity: str
    duration_s: float


@dataclass
class BootstrapConfig:
    seed: int = 0
    min_call_s: float = 30.0
    max_call_s: float = 75.0
    min_pause_s: float = 0.2
    max_pause_s: float = 0.8
    episode_max_utts: int = 3
    speakers: tuple[str, ...] = ()  # empty = all
    max_calls_per_speaker: int = 0  # 0 = as many as the speaker's utterances fill
    noise_dbfs: float = -65.0  # level of the faint noise filling pauses (digital silence is unnatural)


def load_map(path: str | Path | None) -> tuple[dict[str, tuple[float, float]], dict[str, float]]:
    """Category map from a TOML file (``[emotions] angry = [-0.6, 0.8]``, ``[intensity] normal = 0.7``)."""
    if path is None:
        return dict(DEFAULT_MAP), dict(DEFAULT_INTENSITY)
    try:
        data = read_toml(path, "category map")
    except TomlConfigError as e:
        raise ManifestError(str(e)) from None
    emotions = {k: (float(v[0]), float(v[1])) for k, v in data.get("emotions", {}).items()}
    intensity = dict(DEFAULT_INTENSITY)
    intensity.update({k: float(v) for k, v in data.get("intensity", {}).items()})
    if not emotions:
        raise ManifestError(f"{path}: no [emotions] table")
    return emotions, intensity


def read_manifest(path: str | Path, emotion_map: dict[str, tuple[float, float]]) -> list[Utterance]:
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"{path}: manifest not found")
    out = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        need = {"file", "speaker", "emotion"}
        missing = need - set(reader.fieldnames or [])
        if missing:
            raise ManifestError(f"{path}: missing column(s) {sorted(missing)}")
        for lineno, row in enumerate(reader, start=2):
            emo = row["emotion"].strip()
            if emo not in emotion_map:
                raise ManifestError(f"{path}:{lineno}: emotion {emo!r} not in the category map")
            audio = (path.parent / row["file"]).resolve()
            out.append(Utterance(audio, row["speaker"].strip(), (row.get("gender") or "U").strip().upper(),
                                 emo, (row.get("intensity") or "").strip(),
                                 float(row.get("duration_s") or "nan")))
    if not out:
        raise ManifestError(f"{path}: no rows")
    return out


def _target(u: Utterance, emap, imap) -> tuple[float, float]:
    v, a = emap[u.emotion]
    k = 1.0 if u.emotion == "neutral" else imap.get(u.intensity, 1.0)
    return v * k, a * k


def plan_calls(utts: list[Utterance], cfg: BootstrapConfig) -> list[tuple[str, list[Utterance]]]:
    """Group each speaker's utterances into episodes and episodes into calls (seeded, deterministic)."""
    rng = np.random.default_rng(cfg.seed)
    by_speaker: dict[str, list[Utterance]] = {}
    for u in utts:
        if not cfg.speakers or u.speaker in cfg.speakers:
            by_speaker.setdefault(u.speaker, []).append(u)
    calls = []
    for speaker in sorted(by_speaker):
        groups: dict[tuple[str, str], list[Utterance]] = {}
        for u in by_speaker[speaker]:
            groups.setdefault((u.emotion, u.intensity), []).append(u)
        episodes: list[list[Utterance]] = []
        for key in sorted(groups):
            pool = groups[key]
            order = rng.permutation(len(pool))
            i = 0
            while i < len(pool):
                n = int(rng.integers(1, cfg.episode_max_utts + 1))
                episodes.append([pool[j] for j in order[i:i + n]])
                i += n
        # Shuffle episodes so that consecutive ones differ in emotion where possible.
        remaining = [episodes[i] for i in rng.permutation(len(episodes))]
        ordered: list[list[Utterance]] = []
        while remaining:
            prev = ordered[-1][0].emotion if ordered else None
            k = next((i for i, e in enumerate(remaining) if e[0].emotion != prev), 0)
            ordered.append(remaining.pop(k))
        n_call, current, length = 0, [], 0.0
        target = rng.uniform(cfg.min_call_s, cfg.max_call_s)
        for ep in ordered:
            current.extend(ep)
            length += sum(u.duration_s for u in ep)
            if length >= target:
                calls.append((f"{speaker}_c{n_call:02d}", current))
                n_call += 1
                current, length = [], 0.0
                target = rng.uniform(cfg.min_call_s, cfg.max_call_s)
                if cfg.max_calls_per_speaker and n_call >= cfg.max_calls_per_speaker:
                    break
        if current and length >= cfg.min_call_s / 2 and not (cfg.max_calls_per_speaker and n_call >= cfg.max_calls_per_speaker):
            calls.append((f"{speaker}_c{n_call:02d}", current))
    return calls


def simulate_rater(reference: np.ndarray, fs: float, rng: np.random.Generator) -> np.ndarray:
    """A joystick rater: reaction lag, first-order smoothing, gain, bias and slow noise ([-1, 1])."""
    lag = int(rng.uniform(0.3, 1.2) * fs)
    tau = rng.uniform(0.4, 1.2)
    gain, bias = rng.uniform(0.85, 1.1), rng.normal(0.0, 0.04)
    x = np.concatenate([np.full(lag, reference[0]), reference[: len(reference) - lag]]) if lag else reference.copy()
    alpha = 1.0 - np.exp(-1.0 / (tau * fs))
    y = np.empty_like(x)
    acc = x[0]
    for i, v in enumerate(x):
        acc += alpha * (v - acc)
        y[i] = acc
    noise = np.cumsum(rng.normal(0.0, 1.0, len(y)))
    noise -= np.convolve(noise, np.ones(int(fs * 4)) / int(fs * 4), mode="same")  # keep it slow but bounded
    noise *= 0.05 / max(noise.std(), 1e-9)
    return np.clip(gain * y + bias + noise, -1.0, 1.0)


def build_corpus(manifest: str | Path, out: str | Path, cfg: BootstrapConfig = BootstrapConfig(),
                 map_path: str | Path | None = None, progress=lambda n=1: None) -> dict:
    """Write a CusEmo-layout corpus to ``out`` and return a summary (calls, hours, speakers)."""
    out = Path(out)
    emap, imap = load_map(map_path)
    utts = read_manifest(manifest, emap)
    plan = plan_calls(utts, cfg)
    if not plan:
        raise ManifestError("no pseudo-call could be built (too few utterances per speaker?)")
    (out / "audio").mkdir(parents=True, exist_ok=True)
    (out / "annotations").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(cfg.seed + 1)
    ctx_rows, seg_rows = [], []
    total_s = 0.0
    for call_id, call_utts in plan:
        rows, ctx, seconds = _write_call(out, call_id, call_utts, emap, imap, cfg, rng)
        seg_rows += rows
        ctx_rows.append(ctx)
        total_s += seconds
        progress(1)
    with open(out / "context.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["call_id", "annotator", "gender", "role", "empathy", "engagement", "urgency",
                    "satisfaction", "purpose", "resolution", "speaker", "intensity"])
        w.writerows(ctx_rows)
    with open(out / "segments.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["call_id", "start_s", "end_s", "emotion", "intensity", "valence", "arousal", "source_file"])
        w.writerows(seg_rows)
    summary = {
        "source_manifest": str(Path(manifest).resolve()),
        "calls": len(plan),
        "speakers": len({u.speaker for _, us in plan for u in us}),
        "hours": round(total_s / 3600, 4),
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.__dict__.items()},
        "emotion_map": {k: list(v) for k, v in emap.items()},
        "intensity_scale": imap,
        "note": "Targets follow our category->(valence, arousal) map (circumplex quadrants, own magnitudes); "
                "A1/A2 are simulated raters, not human annotations.",
    }
    (out / "source.json").write_text(json.dumps(summary, indent=2))
    (out / "README.md").write_text("# Pseudo-call corpus (generated by `cusemo-batch corpus from-categorical`)\n\n"
                                   + LICENCE_NOTE + "\n" + summary["note"] + "\n")
    return summary


def _write_call(out: Path, call_id: str, call_utts: list, emap: dict, imap: dict, cfg: BootstrapConfig,
                rng: np.random.Generator) -> tuple[list[list], list, float]:
    """One pseudo-call: its audio (utterances with noisy pauses), two simulated raters' tracks.

    Returns its segment rows, its context row and its duration (s). ``rng`` is the corpus's one
    generator, drawn in call order, so a corpus is reproducible from its seed.
    """
    fs_ref = 20.0  # reference trajectory resolution (Hz) before binning to 500 ms
    pieces, seg_rows = [], []
    t = 0.0
    for u in call_utts:
        x = load_audio(u.path, SAMPLE_RATE)
        pause = rng.uniform(cfg.min_pause_s, cfg.max_pause_s)
        gap = (rng.normal(0, 10 ** (cfg.noise_dbfs / 20), int(pause * SAMPLE_RATE))).astype(np.float32)
        pieces += [x, gap]
        v, a = _target(u, emap, imap)
        dur = (len(x) + len(gap)) / SAMPLE_RATE
        seg_rows.append([call_id, round(t, 4), round(t + len(x) / SAMPLE_RATE, 4), u.emotion, u.intensity,
                         v, a, str(u.path.name)])
        t += dur
    audio = np.concatenate(pieces)
    n_ref = int(np.ceil(len(audio) / SAMPLE_RATE * fs_ref))
    times = np.arange(n_ref) / fs_ref
    ref_v = np.zeros(n_ref)
    ref_a = np.zeros(n_ref)
    for row in seg_rows:
        sel = times >= row[1]
        ref_v[sel], ref_a[sel] = row[5], row[6]
    sf.write(out / "audio" / f"{call_id}.flac", audio, SAMPLE_RATE, subtype="PCM_16")
    n_bins = int(np.floor(len(audio) / SAMPLE_RATE / BIN_S))
    per_bin = int(fs_ref * BIN_S)
    ann_dir = out / "annotations" / call_id
    ann_dir.mkdir(exist_ok=True)
    for k, name in enumerate(("A1", "A2")):
        rv = simulate_rater(ref_v, fs_ref, rng)[: n_bins * per_bin].reshape(n_bins, per_bin).mean(1)
        ra = simulate_rater(ref_a, fs_ref, rng)[: n_bins * per_bin].reshape(n_bins, per_bin).mean(1)
        ends = (np.arange(n_bins) + 1) * BIN_S
        if k == 0:
            _write_darma(ann_dir / f"{name}.csv", call_id, ends, rv * MAGNITUDE, ra * MAGNITUDE)
        else:
            _write_plain(ann_dir / f"{name}.csv", ends, rv * MAGNITUDE, ra * MAGNITUDE)
    u0 = call_utts[0]
    intensity = np.mean([INTENSITY_SCORE["neutral" if u.emotion == "neutral" else u.intensity or "strong"]
                         for u in call_utts])
    ctx = [call_id, "", u0.gender if u0.gender in ("F", "M") else "U", "client",
           "", "", "", "", "", "", u0.speaker, f"{intensity:.2f}"]
    return seg_rows, ctx, len(audio) / SAMPLE_RATE


def _write_darma(path: Path, call_id: str, ends, v, a) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["Time of Rating", "simulated", "", ""])
        w.writerow(["Multimedia File", f"{call_id}.flac", "", ""])
        w.writerow(["Magnitude", "1000", "", ""])
        w.writerow(["Second", "Valence", "Arousal", "Button"])
        w.writerow(["%%%%%%"] * 4)
        for t, x, y in zip(ends, v, a):
            w.writerow([f"{t:g}", f"{x:.1f}", f"{y:.1f}", "0"])


def _write_plain(path: Path, ends, v, a) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time_s", "valence", "arousal"])
        for t, x, y in zip(ends, v, a):
            w.writerow([f"{t:g}", f"{x:.1f}", f"{y:.1f}"])
