"""F0 trackers for ``prepare rank-f0``: agreement with openSMILE on call-length real speech, speed.

    python benchmarks/bench_f0_trackers.py --corpus build/default/corpus --baved ../shared/data/baved \\
        --out benchmarks/results/f0_trackers.json

Why: ``rank-f0`` ranked speaker tracks by the sd of openSMILE's eGEMAPS F0 (semitones re 27.5 Hz),
but openSMILE's licence (audEERING research licence) forbids commercial use, and call centres are
commercial users. A permissively licensed tracker can replace it if it *ranks the same tracks as
varied*: the product only uses the order, so the headline number is the Spearman correlation of
per-track ``f0_sd_st`` against openSMILE's, on real speech of call length (a sd over one 3 s
utterance is mostly noise; a call has tens of seconds to minutes per speaker).

Tracks
------
* ``--corpus``: a pseudo-call corpus (``cusemo-batch corpus from-categorical``): every
  ``audio/*.flac`` is one speaker's call (RAVDESS utterances of one actor, 20-90 s).
* ``--baved``: BAVED (Arabic; evaluation only, read in place): all files of a speaker, in manifest
  order, concatenated with 0.25 s of silence into one track per speaker (4 s to 10 min).

Everything is decoded at 16 kHz with the product's ``load_audio``, as ``rank-f0`` does. Tracks with
less than ``--min-voiced`` seconds of voiced speech under either tracker are left out of the
correlation (rank-f0 does not rank them either).

Trackers (``--trackers``; ``opensmile`` is always run, it is the reference)
-------------------------------------------------------------------------------
* ``opensmile``: the product's ``OpenSmileTracker`` (eGEMAPSv02 LLD ``F0semitoneFrom27.5Hz_sma3nz``).
* ``pyin``: the product's default ``PyinTracker`` (librosa.pyin, 75-500 Hz, 64 ms frames, 10 ms hop,
  0.25-st bins); ``pyin-wide``: the same over 65-600 Hz; ``pyin-fine``: librosa's default 0.1-st bins.
* ``harvest``, ``dio``: pyworld (WORLD) Harvest, and DIO refined by StoneMask, 65-600 Hz, 10 ms.

Every permissive tracker is run once without smoothing; its stats are reported raw and after the
``_sma3nz`` smoothing (``smooth_voiced``: 3-frame mean over voiced frames, as openSMILE smooths its
own F0) -- two rows, one tracking pass. Speed is seconds of CPU per hour of audio on one thread
(after one warm-up call, whose time is reported separately: librosa's numba JIT; ``--cold-jit`` points
numba at an empty cache so the warm-up is the first call of a fresh install).

Output: a Markdown table on stdout and, with ``--out``, a JSON file with the command line, versions,
licences (read from the installed packages' metadata), every per-track value and every number.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


# ------------------------------------------------------------------------------------------ tracks
def corpus_tracks(corpus: Path):
    for p in sorted((corpus / "audio").glob("*.flac")):
        yield f"ravdess/{p.stem}", [p]


def baved_tracks(baved: Path):
    import polars as pl

    m = pl.read_csv(baved / "manifest.csv")
    for spk in sorted(m["speaker"].unique().to_list(), key=lambda s: int(s.split("_")[-1])):
        yield f"baved/{spk}", [baved / f for f in m.filter(pl.col("speaker") == spk)["file"].to_list()]


def load_track(files, sr: int) -> np.ndarray:
    from cusemo_batch.audio import load_audio

    gap = np.zeros(int(0.25 * sr), np.float32)
    parts = []
    for f in files:
        parts += [load_audio(f, sr), gap]
    return np.concatenate(parts[:-1]).astype(np.float32)


# ---------------------------------------------------------------------------------------- trackers
def smooth_voiced(f0_st: np.ndarray) -> np.ndarray:
    """openSMILE's ``_sma3nz``: each voiced frame becomes the mean of itself and its voiced
    neighbours; unvoiced frames stay 0. (Measured: it changes no agreement number, so the product
    does not smooth.)"""
    f = np.asarray(f0_st, dtype=np.float64)
    v = (f > 0).astype(np.float64)
    pad_f, pad_v = np.pad(f * v, 1), np.pad(v, 1)
    num = pad_f[:-2] + pad_f[1:-1] + pad_f[2:]
    den = pad_v[:-2] + pad_v[1:-1] + pad_v[2:]
    return np.where(v > 0, num / np.maximum(den, 1.0), 0.0)


def _pyworld():
    """pyworld's compiled module. pyworld 0.3.5's ``__init__`` imports ``pkg_resources``, which
    setuptools >= 81 no longer ships, so ``import pyworld`` fails on a current environment; the
    extension itself is fine and is loaded directly (one more reason it is not the product default)."""
    try:
        import pyworld
        return pyworld
    except ModuleNotFoundError as e:
        if e.name != "pkg_resources":
            raise
    import importlib.util

    spec = importlib.util.find_spec("pyworld")
    so = next(Path(spec.submodule_search_locations[0]).glob("pyworld*.so"))
    s = importlib.util.spec_from_file_location("pyworld.pyworld", so)
    mod = importlib.util.module_from_spec(s)
    s.loader.exec_module(mod)
    return mod


class WorldTracker:
    def __init__(self, method: str):
        self.name, self.pw = method, _pyworld()

    def frames(self, x, sr):
        from cusemo_batch.curation.f0 import hz_to_st

        x = np.asarray(x, dtype=np.float64)
        if self.name == "harvest":
            f0, t = self.pw.harvest(x, sr, f0_floor=65.0, f0_ceil=600.0, frame_period=10.0)
        else:
            f0, t = self.pw.dio(x, sr, f0_floor=65.0, f0_ceil=600.0, frame_period=10.0)
            f0 = self.pw.stonemask(x, f0, t, sr)
        return hz_to_st(f0), t, 0.01


def make(name: str):
    from cusemo_batch.curation.f0 import OpenSmileTracker, PyinTracker

    if name == "opensmile":
        return OpenSmileTracker()
    if name == "pyin":
        return PyinTracker()
    if name == "pyin-wide":
        return PyinTracker(fmin=65.0, fmax=600.0)
    if name == "pyin-fine":
        return PyinTracker(resolution=0.1)
    if name in ("harvest", "dio"):
        return WorldTracker(name)
    raise SystemExit(f"unknown tracker {name}")


PACKAGE = {"opensmile": "opensmile", "pyin": "librosa", "pyin-wide": "librosa", "pyin-fine": "librosa", "harvest": "pyworld",
           "dio": "pyworld"}


def licence(dist: str) -> str:
    """The licence an installed distribution declares (License-Expression, License, classifiers),
    plus the first line of its licence file when that says more (openSMILE's metadata says MIT in a
    classifier while its LICENSE file is the audEERING research licence)."""
    try:
        d = md.distribution(dist)
    except md.PackageNotFoundError:
        return "not installed"
    m = d.metadata
    said = [m.get("License-Expression") or "", (m.get("License") or "").strip().splitlines()[0:1],
            [c.split("::")[-1].strip() for c in m.get_all("Classifier") or [] if c.startswith("License")]]
    flat = [said[0]] + said[1] + said[2]
    text = ""
    for f in d.files or []:
        if "LICEN" in f.name.upper() or "COPYING" in f.name.upper():
            body = Path(d.locate_file(f)).read_text(errors="replace")
            for key in ("Research License", "ISC License", "MIT License", "BSD"):
                if key.lower() in body.lower():
                    text = f"file: {key}"
                    break
            break
    return "; ".join(dict.fromkeys(s for s in flat + [text] if s))


# ------------------------------------------------------------------------------------------ stats
def stats(f0_st: np.ndarray, hop: float) -> dict:
    from cusemo_batch.curation.f0 import F0Stats

    s = F0Stats.from_frames(f0_st, hop)
    return {"voiced_s": s.voiced_s, "mean_st": s.mean_st, "sd_st": s.sd_st}


def agreement(ref: list[dict], got: list[dict], min_voiced: float) -> dict:
    from scipy.stats import pearsonr, spearmanr

    ok = [i for i, (a, b) in enumerate(zip(ref, got))
          if a["voiced_s"] >= min_voiced and b["voiced_s"] >= min_voiced]
    a_sd = np.array([ref[i]["sd_st"] for i in ok])
    b_sd = np.array([got[i]["sd_st"] for i in ok])
    a_m = np.array([ref[i]["mean_st"] for i in ok])
    b_m = np.array([got[i]["mean_st"] for i in ok])
    q = max(1, len(ok) // 4)
    top_a, top_b = set(np.argsort(-a_sd)[:q]), set(np.argsort(-b_sd)[:q])
    return {"n": len(ok), "sd_spearman": float(spearmanr(a_sd, b_sd)[0]), "sd_pearson": float(pearsonr(a_sd, b_sd)[0]),
            "sd_ratio_median": float(np.median(b_sd / a_sd)),
            "top_quarter_overlap": len(top_a & top_b) / q,
            "mean_spearman": float(spearmanr(a_m, b_m)[0]), "mean_pearson": float(pearsonr(a_m, b_m)[0]),
            "mean_abs_diff_st": float(np.median(np.abs(b_m - a_m))),
            "voiced_ratio_median": float(np.median([got[i]["voiced_s"] / ref[i]["voiced_s"] for i in ok]))}


# ------------------------------------------------------------------------------------------- main
# Long on purpose: a script's main, read top to bottom (arguments, the runs, the table, the JSON).
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--corpus", type=Path, help="pseudo-call corpus (audio/*.flac, one speaker per file)")
    ap.add_argument("--baved", type=Path, help="BAVED folder (manifest.csv + audio/); one track per speaker")
    ap.add_argument("--trackers", default="pyin,pyin-wide,dio",
                    help="comma-separated, besides opensmile: pyin, pyin-wide, pyin-fine, harvest, dio")
    ap.add_argument("--max-tracks", type=int, default=0, help="per data set, evenly spaced (0 = all)")
    ap.add_argument("--min-voiced", type=float, default=1.0, help="seconds of voiced speech to compare a track")
    ap.add_argument("--cold-jit", action="store_true", help="empty numba cache: warm-up = a fresh install's first call")
    ap.add_argument("--out", type=Path, help="JSON with every number and per-track value")
    args = ap.parse_args(argv)
    if args.cold_jit:
        os.environ["NUMBA_CACHE_DIR"] = tempfile.mkdtemp(prefix="numba-cold-")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from cusemo_batch.curation.f0 import SAMPLE_RATE

    sets = {}
    if args.corpus:
        sets["ravdess pseudo-calls"] = list(corpus_tracks(args.corpus))
    if args.baved:
        sets["baved speakers"] = list(baved_tracks(args.baved))
    if not sets:
        ap.error("give --corpus and/or --baved")
    if args.max_tracks:
        for k, v in sets.items():
            idx = np.unique(np.linspace(0, len(v) - 1, min(args.max_tracks, len(v))).round().astype(int))
            sets[k] = [v[i] for i in idx]
    names = ["opensmile"] + [t for t in args.trackers.split(",") if t and t != "opensmile"]
    trackers, warmup = {}, {}
    probe = (np.random.default_rng(0).standard_normal(SAMPLE_RATE) * 0.05).astype(np.float32)
    for n in names:
        t0 = time.process_time()
        trackers[n] = make(n)
        trackers[n].frames(probe, SAMPLE_RATE)
        warmup[n] = time.process_time() - t0

    per_track: dict[str, list[dict]] = {}
    cpu = {n: 0.0 for n in names}
    audio_s = {}
    for set_name, tracks in sets.items():
        rows = []
        audio_s[set_name] = 0.0
        for i, (tid, files) in enumerate(tracks):
            x = load_track(files, SAMPLE_RATE)
            audio_s[set_name] += x.size / SAMPLE_RATE
            row = {"track": tid, "duration_s": x.size / SAMPLE_RATE}
            for n in names:
                t0 = time.process_time()
                f0, _, hop = trackers[n].frames(x, SAMPLE_RATE)
                cpu[n] += time.process_time() - t0
                row[n] = stats(f0, hop)
                if n != "opensmile":
                    row[n + "+sma3"] = stats(smooth_voiced(f0), hop)
            rows.append(row)
            print(f"[{set_name} {i + 1}/{len(tracks)}] {tid} {row['duration_s']:.0f} s "
                  + " ".join(f"{n}={row[n]['sd_st']:.2f}" for n in names), file=sys.stderr, flush=True)
        per_track[set_name] = rows

    hours = sum(audio_s.values()) / 3600
    variants = [v for n in names[1:] for v in (n, n + "+sma3")]
    results = {}
    for set_name, rows in per_track.items():
        results[set_name] = {v: agreement([r["opensmile"] for r in rows], [r[v] for r in rows], args.min_voiced)
                             for v in variants}
    speed = {n: {"cpu_s_per_audio_h": cpu[n] / hours, "warmup_s": warmup[n], "package": PACKAGE[n],
                 "version": _version(PACKAGE[n]), "licence": licence(PACKAGE[n])} for n in names}

    print(f"\n## F0 trackers vs openSMILE (eGEMAPS F0 semitones), per-track sd and mean\n")
    print("Data: " + "; ".join(f"{k}: {len(per_track[k])} tracks, {audio_s[k] / 3600:.2f} h "
                                  f"(median {np.median([r['duration_s'] for r in per_track[k]]):.0f} s)"
                                  for k in per_track) + f"; 16 kHz; min voiced {args.min_voiced:g} s.\n")
    print("| tracker | data | n | sd Spearman | sd Pearson | top-25 % overlap | sd ratio | mean Spearman | "
          "mean Pearson | mean abs diff (st) | voiced ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for v in variants:
        for set_name in per_track:
            a = results[set_name][v]
            print(f"| {v} | {set_name} | {a['n']} | {a['sd_spearman']:.3f} | {a['sd_pearson']:.3f} | "
                  f"{a['top_quarter_overlap']:.2f} | {a['sd_ratio_median']:.2f} | {a['mean_spearman']:.3f} | "
                  f"{a['mean_pearson']:.3f} | {a['mean_abs_diff_st']:.2f} | {a['voiced_ratio_median']:.2f} |")
    print("\n| tracker | package | licence (package metadata) | CPU s per audio hour | warm-up s |")
    print("|---|---|---|---|---|")
    for n in names:
        s = speed[n]
        print(f"| {n} | {s['package']} {s['version']} | {s['licence']} | {s['cpu_s_per_audio_h']:.0f} | "
              f"{s['warmup_s']:.1f} |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({
            "command": " ".join([Path(sys.argv[0]).as_posix()] + sys.argv[1:]),
            "date": time.strftime("%Y-%m-%d"), "python": platform.python_version(), "machine": platform.machine(),
            "cold_jit": args.cold_jit, "audio_s": audio_s, "agreement": results, "speed": speed,
            "tracks": per_track}, indent=1))
        print(f"\nwrote {args.out}", file=sys.stderr)
    return 0


def _version(dist: str) -> str:
    try:
        return md.version(dist)
    except md.PackageNotFoundError:
        return "-"


if __name__ == "__main__":
    sys.exit(main())
