"""Silence compression of audio files (``prepare compress-silence``), with a time map per output.

The paper's preprocessing: every silence longer than 3 s becomes 1 s. The work is done by
:mod:`cusemo_batch.silence` -- the same ``speech_mask`` / ``compress_silence`` functions and
defaults (20 ms VAD frames) the scorer uses -- this module only adds file handling:

* a **call** (found with :func:`cusemo_batch.calls.discover`) is compressed with one speech mask,
  the union of the speech of all its channels and files (stereo, ``CALL/agent.flac`` +
  ``CALL/client.flac``): its sides stay aligned, so the conversation the annotators hear is
  intact and one time map serves every side. ``joint=False`` compresses each file on its own
  speech (stereo channels always share one mask). (The scorer compresses each *speaker* on its
  own; joint compression is for annotation, where the mix must stay a conversation.)
* audio keeps its sample rate, channel count and (when the format allows) sample format;
* next to each output ``X.flac`` goes ``X.timemap.parquet`` (or ``.json``): one row per kept
  segment, ``compressed_start_s, original_start_s, duration_s``
  (:class:`cusemo_batch.silence.TimeMap`), so any compressed time maps back to the original;
* a ``CALL.rttm`` next to a mono call is rewritten in compressed time; ``calls.csv`` /
  ``calls.parquet`` at the root are copied, so the output is again a valid CALLS folder.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf

from cusemo_batch import silence
from cusemo_batch.silence import KEEP_SILENCE_S, MIN_SILENCE_S
from cusemo_batch.audio import AUDIO_SUFFIXES, AudioError, load_audio
from cusemo_batch.files import atomic_path, atomic_write_text

MAP_FORMATS = ("parquet", "json")


@dataclass(frozen=True)
class Compressed:
    """One written file."""

    source: Path
    output: Path
    time_map: Path
    sample_rate: int
    channels: int
    original_s: float
    compressed_s: float
    n_cuts: int

    @property
    def removed_s(self) -> float:
        return self.original_s - self.compressed_s


def time_map_path(output: Path, fmt: str = "parquet") -> Path:
    """``dir/X.flac`` -> ``dir/X.timemap.parquet`` (or ``.timemap.json``)."""
    return output.with_name(output.name[: -len(output.suffix)] + f".timemap.{fmt}")


def write_time_map(tmap: silence.TimeMap, path: Path) -> None:
    if path.suffix == ".json":
        atomic_write_text(path, json.dumps(tmap.to_dict()) + "\n")
    else:
        with atomic_path(path) as tmp:
            tmap.to_polars().write_parquet(tmp)


def read_time_map(path: str | Path) -> silence.TimeMap:
    path = Path(path)
    if path.suffix == ".json":
        return silence.TimeMap.from_dict(json.loads(path.read_text()))
    import polars as pl

    return silence.TimeMap.from_polars(pl.read_parquet(path))


def _read_channels(path: Path) -> tuple[list[np.ndarray], int, str]:
    try:
        info = sf.info(str(path))
    except Exception as e:
        why = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        raise AudioError(f"{path}: not readable as audio ({why})") from None
    sr = int(info.samplerate)
    chans = [load_audio(path, sr, ch if info.channels > 1 else None) for ch in range(info.channels)]
    return chans, sr, info.subtype


def compress_files(sources: list[Path], outputs: list[Path], min_silence_s: float = MIN_SILENCE_S, keep_s: float = KEEP_SILENCE_S,
                   map_format: str = "parquet", rttm: Path | None = None) -> list[Compressed]:
    """Compress ``sources`` (the files of one call) with their joint speech mask into ``outputs``."""
    if map_format not in MAP_FORMATS:
        raise ValueError(f"unknown time-map format {map_format!r}; expected one of {MAP_FORMATS}")
    decoded = [_read_channels(p) for p in sources]
    rates = {sr for _, sr, _ in decoded}
    if len(rates) > 1:
        raise AudioError(f"{sources[0]}: the files of one call have different sample rates {sorted(rates)}")
    sr = rates.pop()
    n_max = max(len(x) for chans, _, _ in decoded for x in chans)
    speech = np.zeros(n_max, dtype=bool)
    for chans, _, _ in decoded:
        for x in chans:
            speech[: len(x)] |= silence.speech_mask(x, sr)
    results = []
    for src, out, (chans, _, subtype) in zip(sources, outputs, decoded):
        ys, tmap = [], None
        for x in chans:
            y, tmap = silence.compress_silence(x, sr, min_silence_s, keep_s, speech=speech[: len(x)])
            ys.append(y)
        n = min(len(y) for y in ys)  # channels of one file have one length; guard anyway
        data = np.stack([y[:n] for y in ys], axis=1) if len(ys) > 1 else ys[0]
        fmt = out.suffix.lstrip(".").upper()
        if fmt == "AIF":
            fmt = "AIFF"
        st = subtype if sf.check_format(fmt, subtype) else None
        with atomic_path(out) as tmp:
            sf.write(str(tmp), data, sr, subtype=st, format=fmt)
        mpath = time_map_path(out, map_format)
        write_time_map(tmap, mpath)
        results.append(Compressed(src, out, mpath, sr, len(chans), tmap.original_duration,
                                  tmap.compressed_duration, len(tmap.removed_intervals())))
    if rttm is not None and results:
        remap_rttm(rttm, read_time_map(results[0].time_map), outputs[0].with_suffix(".rttm"), outputs[0].stem)
    return results


def remap_rttm(rttm: Path, tmap: silence.TimeMap, out: Path, file_id: str) -> None:
    """Rewrite an RTTM in compressed time (segments inside a removed part vanish)."""
    from cusemo_batch.calls import read_rttm

    lines = []
    for seg in read_rttm(rttm):
        a = float(tmap.to_compressed(seg.onset_s))
        b = float(tmap.to_compressed(seg.end_s))
        if b - a > 1e-6:
            lines.append(f"SPEAKER {file_id} 1 {a:.3f} {b - a:.3f} <NA> <NA> {seg.label} <NA> <NA>")
    atomic_write_text(out, "\n".join(lines) + ("\n" if lines else ""))


def compress_path(src: str | Path, dst: str | Path, min_silence_s: float = MIN_SILENCE_S, keep_s: float = KEEP_SILENCE_S,
                  joint: bool = True, map_format: str = "parquet",
                  progress: Callable[[int], None] = lambda n=1: None) -> tuple[list[Compressed], list[dict]]:
    """Compress one file (``dst`` a file or a folder) or a whole CALLS folder into ``dst``.

    Returns the written files and the errors (``call_id, file, error, message`` dicts): a bad file
    never stops the others.
    """
    src, dst = Path(src), Path(dst)
    if not src.exists():
        raise FileNotFoundError(f"{src}: no such file or folder")
    if not 0 <= keep_s < min_silence_s:
        raise ValueError(f"need 0 <= keep ({keep_s}) < min silence ({min_silence_s})")
    if src.is_file():
        out = dst if dst.suffix.lower() in AUDIO_SUFFIXES else dst / src.name
        if out.resolve() == src.resolve():
            raise ValueError(f"{out}: output would overwrite the input")
        rttm = src.with_suffix(".rttm")
        res = compress_files([src], [out], min_silence_s, keep_s, map_format, rttm if rttm.is_file() else None)
        progress(1)
        return res, []
    from cusemo_batch.calls import DiscoveryOptions, discover

    src_r, dst_r = src.resolve(), dst.resolve()
    if dst_r == src_r or src_r in dst_r.parents:
        raise ValueError(f"{dst}: the output folder must not be inside the input folder")
    calls, disc_errors = discover(src, DiscoveryOptions())
    errors = [{"call_id": e.call_id, "file": e.file, "error": e.error, "message": e.message} for e in disc_errors]
    results: list[Compressed] = []
    for call in calls:
        audio = [p for p in call.files if p.suffix.lower() in AUDIO_SUFFIXES]
        rttm = next((p for p in call.files if p.suffix.lower() == ".rttm"), None)
        outs = [dst / p.relative_to(src) for p in audio]
        groups = [(audio, outs)] if joint else [([a], [o]) for a, o in zip(audio, outs)]
        for files, targets in groups:
            try:
                results += compress_files(files, targets, min_silence_s, keep_s, map_format,
                                          rttm if len(files) == 1 else None)
            except (AudioError, ValueError, RuntimeError, OSError) as e:
                errors.append({"call_id": call.call_id, "file": str(files[0]), "error": type(e).__name__,
                               "message": str(e).splitlines()[0][:300]})
        progress(1)
    for meta in ("calls.csv", "calls.parquet"):
        if (src / meta).is_file():
            dst.mkdir(parents=True, exist_ok=True)
            with atomic_path(dst / meta) as tmp:
                shutil.copyfile(src / meta, tmp)
    return results, errors
