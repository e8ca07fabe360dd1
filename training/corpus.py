"""Read and validate a corpus in the CusEmo layout (see ../shared/formats.md).

```
CORPUS/audio/<call_id>.wav|.flac            one diarized speaker per file
CORPUS/annotations/<call_id>/<annotator>.csv  one continuous valence/arousal track per annotator
CORPUS/context.csv                          call-level context, one row per annotator (or consolidated)
```

Validation collects *every* problem with its file and line before failing, because the person
fixing an annotation export wants the whole list at once, not one error per run. No torch here:
curation (``cusemo-batch prepare``) reads corpora with the runtime install.
"""

from __future__ import annotations

import csv
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cusemo_batch.audio import AUDIO_SUFFIXES, AudioError, audio_info
from cusemo_batch.text import is_number

GENDERS = {"F", "M", "U"}
INTERVAL_COLUMNS = ("empathy", "engagement", "urgency", "satisfaction")
ENUM_COLUMNS = {
    "purpose": {"purchase", "issue", "information"},
    "resolution": {"resolved", "unresolved", "client_action", "agent_action"},
}
DARMA_SEPARATOR = "%%%%%%"


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return f"{where}: {self.message}"


class CorpusError(ValueError):
    """The corpus has problems; ``problems`` lists them all (file, line, message)."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        head = f"{len(problems)} problem(s) in corpus"
        super().__init__(head + "\n" + "\n".join(f"  {p}" for p in problems))


@dataclass
class Track:
    """One annotator's continuous rating of one call, on the raw scale (±magnitude)."""

    annotator: str
    path: Path
    bin_s: float
    end_times: np.ndarray
    valence: np.ndarray
    arousal: np.ndarray
    magnitude: float

    def __len__(self) -> int:
        return len(self.end_times)


@dataclass
class CorpusCall:
    call_id: str
    audio_path: Path
    duration_s: float
    tracks: list[Track]
    context: dict[str, object] = field(default_factory=dict)  # consolidated over annotators


@dataclass
class Corpus:
    root: Path
    calls: list[CorpusCall]
    context_columns: list[str]
    warnings: list[Problem] = field(default_factory=list)

    def by_id(self) -> dict[str, CorpusCall]:
        return {c.call_id: c for c in self.calls}


# ---------------------------------------------------------------------------------------- tracks
def read_track(path: Path, magnitude: float = 1000.0, max_gap_s: float = 2.0,
               problems: list[Problem] | None = None) -> Track | None:
    """Parse a DARMA export or a plain ``time_s,valence,arousal`` track.

    Short NaN/empty gaps (<= ``max_gap_s``) are linearly interpolated -- a rater's joystick briefly
    not sampled; longer gaps are reported as problems because inventing seconds of emotion is not
    harmless. Values are mapped by *position* (2nd column valence, 3rd arousal), as in Darma where
    the column labels are whatever the rater configured.
    """
    problems = problems if problems is not None else []
    n_before = len(problems)
    name = str(path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError) as e:
        problems.append(Problem(name, None, f"cannot read track ({e.__class__.__name__})"))
        return None
    header = _header(rows, name, magnitude, problems)
    if header is None:
        return None
    first_data, magnitude = header
    times, vals, aros, lines = _numbers(rows, first_data, name, problems)
    if not times:
        problems.append(Problem(name, None, "track has no data rows"))
        return None
    t = np.asarray(times)
    for k in range(1, len(t)):
        if not t[k] > t[k - 1]:
            problems.append(Problem(name, lines[k], f"time {t[k]:g} is not after the previous {t[k-1]:g}"))
            return None
    bin_s = float(np.median(np.diff(t))) if len(t) > 1 else float(t[0])
    if bin_s <= 0 or not np.allclose(np.diff(t), bin_s, rtol=0.02, atol=1e-3):
        bad = int(np.argmax(~np.isclose(np.diff(t), bin_s, rtol=0.02, atol=1e-3))) + 1
        problems.append(Problem(name, lines[bad], f"irregular time step (expected {bin_s:g} s)"))
    if not np.isclose(t[0], bin_s, rtol=0.02, atol=1e-3):
        problems.append(Problem(name, lines[0], f"first bin ends at {t[0]:g} s, expected {bin_s:g} s "
                                                "(times are bin ends, starting at 0)"))
    arrays = [_checked_values(label, np.asarray(x), bin_s, magnitude, max_gap_s, lines, name, problems)
              for label, x in (("valence", vals), ("arousal", aros))]
    if len(problems) > n_before:
        return None
    return Track(path.stem, path, bin_s, t, arrays[0], arrays[1], magnitude)


def _header(rows: list[list[str]], name: str, magnitude: float,
            problems: list[Problem]) -> tuple[int, float] | None:
    """(index of the first data row, magnitude): DARMA exports carry metadata rows (one may set the
    Magnitude), a header and a separator row; plain tracks one header row. None when neither."""
    sep = next((i for i, r in enumerate(rows) if r and r[0].strip() == DARMA_SEPARATOR), None)
    if sep is not None:
        for r in rows[: max(sep - 1, 0)]:
            if len(r) >= 2 and r[0].strip().lower() == "magnitude":
                try:
                    magnitude = float(r[1])
                except ValueError:
                    problems.append(Problem(name, rows.index(r) + 1, f"bad Magnitude {r[1]!r}"))
        return sep + 1, magnitude
    if not rows or not rows[0] or rows[0][0].strip().lower() not in ("time_s", "time", "second"):
        problems.append(Problem(name, 1, "neither a DARMA export (no %%%%%% separator row) nor a "
                                         "plain track (header time_s,valence,arousal)"))
        return None
    return 1, magnitude


def _numbers(rows: list[list[str]], first_data: int, name: str,
             problems: list[Problem]) -> tuple[list[float], list[float], list[float], list[int]]:
    """Time, valence, arousal and file line of every data row (empty cells -> NaN, bad rows -> problems)."""
    times, vals, aros, lines = [], [], [], []
    for i in range(first_data, len(rows)):
        r = rows[i]
        if not r or all(not c.strip() for c in r):
            continue
        if len(r) < 3:
            problems.append(Problem(name, i + 1, f"expected at least 3 columns, got {len(r)}"))
            continue
        try:
            t = float(r[0])
            v = float(r[1]) if r[1].strip() else math.nan
            a = float(r[2]) if r[2].strip() else math.nan
        except ValueError:
            problems.append(Problem(name, i + 1, f"not a number in {r[:3]}"))
            continue
        times.append(t), vals.append(v), aros.append(a), lines.append(i + 1)
    return times, vals, aros, lines


def _checked_values(label: str, x: np.ndarray, bin_s: float, magnitude: float, max_gap_s: float,
                    lines: list[int], name: str, problems: list[Problem]) -> np.ndarray:
    """One dimension: values beyond the magnitude and long empty gaps are problems; short gaps are
    interpolated (edges held at the nearest value)."""
    finite = np.isfinite(x)
    for k in np.flatnonzero(finite & (np.abs(x) > magnitude)):
        problems.append(Problem(name, lines[k], f"{label} {x[k]:g} outside ±{magnitude:g}"))
    if not finite.any():
        problems.append(Problem(name, None, f"{label}: no values"))
        return x
    for start, stop in _nan_runs(~finite):
        if (stop - start) * bin_s > max_gap_s:
            problems.append(Problem(name, lines[start], f"{label}: gap of {(stop - start) * bin_s:g} s "
                                                        f"(> {max_gap_s:g} s) of empty bins"))
    idx = np.arange(len(x))
    return np.interp(idx, idx[finite], x[finite])


def _nan_runs(isnan: np.ndarray) -> list[tuple[int, int]]:
    runs, start = [], None
    for i, flag in enumerate(isnan):
        if flag and start is None:
            start = i
        elif not flag and start is not None:
            runs.append((start, i))
            start = None
    if start is not None:
        runs.append((start, len(isnan)))
    return runs


# --------------------------------------------------------------------------------------- context
def read_context(path: Path, call_ids: set[str], problems: list[Problem]) -> tuple[dict[str, dict], list[str]]:
    """Read ``context.csv`` and consolidate per call: numbers -> mean, categories -> majority.

    Columns beyond the documented ones are kept (numeric ones become usable auxiliary tasks).
    Empty cells mean "not annotated" and are ignored.
    """
    name = str(path)
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        columns = [c.strip() for c in (reader.fieldnames or [])]
        if "call_id" not in columns:
            problems.append(Problem(name, 1, "missing column call_id"))
            return {}, columns
        per_call: dict[str, list[dict[str, str]]] = {}
        for lineno, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
            cid = row.get("call_id", "")
            if cid not in call_ids:
                problems.append(Problem(name, lineno, f"call_id {cid!r} has no audio"))
                continue
            g = row.get("gender", "")
            if g and g.upper() not in GENDERS:
                problems.append(Problem(name, lineno, f"unknown gender {g!r} (expected F, M or U)"))
            for col in INTERVAL_COLUMNS:
                v = row.get(col, "")
                if v and not (is_number(v) and 0 <= float(v) <= 10):
                    problems.append(Problem(name, lineno, f"{col} {v!r} is not a number in 0..10"))
            for col, allowed in ENUM_COLUMNS.items():
                v = row.get(col, "")
                if v and v not in allowed:
                    problems.append(Problem(name, lineno, f"{col} {v!r} not in {sorted(allowed)}"))
            per_call.setdefault(cid, []).append(row)
    consolidated = {}
    for cid, rows in per_call.items():
        out: dict[str, object] = {}
        for col in columns:
            if col in ("call_id", "annotator"):
                continue
            values = [r.get(col, "") for r in rows if r.get(col, "")]
            if not values:
                out[col] = None
            elif all(is_number(v) for v in values):
                out[col] = float(np.mean([float(v) for v in values]))
            else:
                if col == "gender":
                    values = [v.upper() for v in values]
                top = Counter(values).most_common()
                tie = len(top) > 1 and top[0][1] == top[1][1]
                out[col] = ("U" if col == "gender" else top[0][0]) if tie else top[0][0]
        out["n_context_rows"] = len(rows)
        consolidated[cid] = out
    return consolidated, columns



# ---------------------------------------------------------------------------------------- corpus
def read_corpus(root: str | Path, min_annotators: int = 2, magnitude: float = 1000.0,
                max_gap_s: float = 2.0, check_audio: bool = True) -> Corpus:
    """Read and validate a whole corpus; raise :class:`CorpusError` listing every problem."""
    root = Path(root)
    problems: list[Problem] = []
    warnings: list[Problem] = []
    if not root.is_dir():
        raise CorpusError([Problem(str(root), None, "corpus folder does not exist")])
    audio_dir, ann_dir = root / "audio", root / "annotations"
    for d in (audio_dir, ann_dir):
        if not d.is_dir():
            problems.append(Problem(str(d), None, "missing folder"))
    if problems:
        raise CorpusError(problems)

    audio = _audio_files(audio_dir, ann_dir, problems)
    calls = [c for c in (_read_call(cid, apath, ann_dir / cid, min_annotators, magnitude, max_gap_s, check_audio,
                                    problems, warnings) for cid, apath in audio.items()) if c is not None]

    context_columns: list[str] = []
    ctx_path = root / "context.csv"
    if ctx_path.is_file():
        ctx, context_columns = read_context(ctx_path, set(audio), problems)
        for c in calls:
            c.context = ctx.get(c.call_id, {})
    else:
        warnings.append(Problem(str(ctx_path), None, "no context.csv: auxiliary tasks (alpha/beta) unavailable"))
    if problems:
        raise CorpusError(problems)
    if not calls:
        raise CorpusError([Problem(str(audio_dir), None, "no calls (audio files with annotations) found")])
    return Corpus(root, calls, context_columns, warnings)


def _audio_files(audio_dir: Path, ann_dir: Path, problems: list[Problem]) -> dict[str, Path]:
    """Call id -> its audio file; a second file for one call or annotations without audio are problems."""
    audio: dict[str, Path] = {}
    for p in sorted(audio_dir.iterdir()):
        if p.suffix.lower() not in AUDIO_SUFFIXES:
            continue
        if p.stem in audio:
            problems.append(Problem(str(p), None, f"second audio file for call {p.stem!r} ({audio[p.stem].name})"))
            continue
        audio[p.stem] = p
    for d in sorted(ann_dir.iterdir()):
        if d.is_dir() and d.name not in audio:
            problems.append(Problem(str(d), None, f"annotations for call {d.name!r} which has no audio"))
    return audio


def _read_call(cid: str, apath: Path, track_dir: Path, min_annotators: int, magnitude: float, max_gap_s: float,
               check_audio: bool, problems: list[Problem], warnings: list[Problem]) -> CorpusCall | None:
    """One call's audio checks and annotation tracks; None (with the reasons in ``problems``) when unusable."""
    duration = math.nan
    if check_audio:
        try:
            info = audio_info(apath)
            duration = info.frames / info.samplerate
            if info.frames == 0:
                problems.append(Problem(str(apath), None, "audio has no samples"))
            if info.channels != 1:
                problems.append(Problem(str(apath), None, f"{info.channels} channels; one diarized speaker (mono) per file expected"))
        except AudioError as e:
            problems.append(Problem(str(apath), None, str(e).split(": ", 1)[-1]))
    files = sorted(track_dir.glob("*.csv")) if track_dir.is_dir() else []
    if len(files) < min_annotators:
        problems.append(Problem(str(track_dir), None, f"{len(files)} annotation track(s), at least {min_annotators} required"))
        return None
    tracks = [t for t in (read_track(f, magnitude, max_gap_s, problems) for f in files) if t is not None]
    if len(tracks) < len(files):
        return None
    widths = {round(t.bin_s, 4) for t in tracks}
    if len(widths) > 1:
        problems.append(Problem(str(track_dir), None, f"annotators use different bin widths {sorted(widths)}"))
        return None
    lengths = [len(t) for t in tracks]
    if max(lengths) - min(lengths) > 2:
        warnings.append(Problem(str(track_dir), None, f"track lengths differ ({min(lengths)}..{max(lengths)} bins); "
                                                      "the common part is used"))
    if check_audio and math.isfinite(duration):
        end = max(float(t.end_times[-1]) for t in tracks)
        if end > duration + tracks[0].bin_s + 1e-6:
            problems.append(Problem(str(track_dir), None, f"labels run to {end:g} s but the audio lasts {duration:.2f} s"))
    return CorpusCall(cid, apath, duration, tracks)
