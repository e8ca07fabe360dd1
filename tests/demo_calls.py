"""Test helpers: copies of the demo calls (examples/calls), and stores read back for comparison."""

import shutil
from pathlib import Path

import polars as pl

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

