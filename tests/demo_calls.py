"""Test helpers: copies of the demo calls (examples/calls), and stores read back for comparison."""

import shutil
from pathlib import Path

import numpy as np
import polars as pl
import soundfile as sf

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "calls"
RUN_COLUMNS = {"run_id", "scored_at", "occurred_at"}  # differ between runs by design


def copy_demo_calls(dest: Path, names=("negative_end", "steady"), csv: bool = False) -> Path:
    """``dest`` holding the named demo calls (files or per-speaker folders), and calls.csv if ``csv``."""
    dest.mkdir(parents=True, exist_ok=True)
    for n in names:
        src = EXAMPLES / n
        if src.is_dir():
            shutil.copytree(src, dest / n)
        else:
            for f in EXAMPLES.glob(f"{n}.*"):
                shutil.copy(f, dest / f.name)
    if csv:
        shutil.copy(EXAMPLES / "calls.csv", dest / "calls.csv")
    return dest


def table(out: Path, name: str) -> pl.DataFrame:
    """A whole table of a store, without the columns that name the run, in a stable order."""
    files = sorted((out / name).glob("date=*/*.parquet"))
    if not files:
        return pl.DataFrame()
    df = pl.read_parquet(files, hive_partitioning=True, missing_columns="insert")
    df = df.drop([c for c in df.columns if c in RUN_COLUMNS])
    return df.sort([c for c in ("call_id", "speaker", "t_start_s", "kind") if c in df.columns])


def assert_same_tables(a: Path, b: Path) -> None:
    """Two stores hold the same rows in every call table (run metadata aside)."""
    for name in ("timeseries", "calls", "events", "errors"):
        ta, tb = table(a, name), table(b, name)
        assert ta.columns == tb.columns, name
        assert ta.equals(tb, null_equal=True), f"table {name} differs"


def speechlike(seconds: float, sr: int = 8000, seed: int = 0) -> np.ndarray:
    """Noise bursts with pauses: enough energy contrast for the VAD."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 0.1, int(seconds * sr)).astype(np.float32)
    env = (np.sin(np.arange(x.size) / sr * 2 * np.pi * 0.7) > -0.3).astype(np.float32)
    return x * env


def write_bad_inputs(root: Path) -> None:
    """The bad inputs every engine must turn into one error row each (see the tests' EXPECTED_ERRORS):
    empty, notaudio, nan_samples, too_short, all_silence, three_channels, rttm_past_end, twin (a/, b/)."""
    (root / "empty.wav").write_bytes(b"")
    (root / "notaudio.wav").write_text("this is a text file, not audio\n" * 20)
    nan = speechlike(3.0)
    nan[1000:1010] = np.nan
    sf.write(root / "nan_samples.wav", nan, 8000, subtype="FLOAT")
    sf.write(root / "too_short.wav", speechlike(0.01), 8000)
    sf.write(root / "all_silence.wav", np.zeros(8000 * 5, np.float32), 8000)
    sf.write(root / "three_channels.wav", np.stack([speechlike(2.0)] * 3, axis=1), 8000)
    sf.write(root / "rttm_past_end.wav", speechlike(4.0), 8000)
    (root / "rttm_past_end.rttm").write_text("SPEAKER x 1 0.0 2.0 <NA> <NA> client <NA> <NA>\n"
                                             "SPEAKER x 1 2.0 30.0 <NA> <NA> agent <NA> <NA>\n")
    (root / "a").mkdir()
    (root / "b").mkdir()
    sf.write(root / "a" / "twin.wav", speechlike(2.0), 8000)
    sf.write(root / "b" / "twin.flac", speechlike(2.0), 8000)

