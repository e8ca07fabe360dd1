"""RTTM diarization files: ``SPEAKER <file> 1 <onset> <dur> <NA> <NA> <speaker> <NA> <NA>`` lines.

Strict on purpose: a malformed line (wrong field count -- a speaker name with spaces --, a time that
is not a finite non-negative number) is an error naming file and line, never a silently wrong
speaker turn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

RTTM_TOLERANCE_S = 0.5  # segments may overrun the audio by rounding; more means the RTTM is for another file


class RTTMError(ValueError):
    """An RTTM file that cannot be used (one line: file, line, reason)."""


@dataclass(frozen=True)
class RTTMSegment:
    onset_s: float
    duration_s: float
    label: str

    @property
    def end_s(self) -> float:
        return self.onset_s + self.duration_s


def read_rttm(path: str | Path) -> list[RTTMSegment]:
    """Parse ``SPEAKER <file> 1 <onset> <dur> <NA> <NA> <speaker> <NA> <NA>`` lines (others ignored)."""
    segs = []
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise RTTMError(f"{path}: cannot read ({e.__class__.__name__})") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts or parts[0].startswith("#") or parts[0] != "SPEAKER":
            if parts and not parts[0].startswith("#") and parts[0] not in ("SPKR-INFO", "LEXEME", "NON-SPEECH", "NON-LEX", "SPEAKER"):
                raise RTTMError(f"{path}:{lineno}: not an RTTM line: {line.strip()[:80]!r}")
            continue
        if len(parts) < 8:
            raise RTTMError(f"{path}:{lineno}: SPEAKER line needs 8+ fields, got {len(parts)}")
        if len(parts) > 10:  # "Agent Smith" would otherwise become the label "Agent"
            raise RTTMError(f"{path}:{lineno}: SPEAKER line has {len(parts)} fields, RTTM has 10 "
                            f"(a speaker name with spaces? {' '.join(parts[7:-2])!r})")
        try:
            onset, dur = float(parts[3]), float(parts[4])
        except ValueError:
            raise RTTMError(f"{path}:{lineno}: onset/duration not numbers: {parts[3]!r} {parts[4]!r}") from None
        if not (math.isfinite(onset) and math.isfinite(dur)):
            raise RTTMError(f"{path}:{lineno}: onset/duration not finite: {parts[3]!r} {parts[4]!r}")
        if onset < 0 or dur < 0:
            raise RTTMError(f"{path}:{lineno}: negative onset or duration")
        segs.append(RTTMSegment(onset, dur, parts[7]))
    if not segs:
        raise RTTMError(f"{path}: no SPEAKER lines")
    return segs


def keep_speaker_regions(x: np.ndarray, sr: int, rttm: Path, labels: tuple[str, ...], duration: float) -> np.ndarray:
    """Silence everything outside the RTTM regions of ``labels`` (timing preserved).

    Zeros rather than cuts, so the speaker's track keeps the call's clock (the scorer's VAD then
    treats the other speakers' turns as silence). Segments may overrun the audio by rounding
    (``RTTM_TOLERANCE_S``); more means the RTTM belongs to another file.
    """
    import numpy as np

    segs = read_rttm(rttm)
    over = [s for s in segs if s.end_s > duration + RTTM_TOLERANCE_S]
    if over:
        raise RTTMError(f"{rttm}: {len(over)} segment(s) end after the audio ({over[0].end_s:.2f} s > {duration:.2f} s)")
    keep = np.zeros(len(x), bool)
    for s in segs:
        if s.label in labels:
            keep[int(s.onset_s * sr): int(math.ceil(s.end_s * sr))] = True
    if not keep.any():
        raise RTTMError(f"{rttm}: no segment for speaker label(s) {', '.join(labels)}")
    return np.where(keep, x, np.float32(0.0)).astype(np.float32)
