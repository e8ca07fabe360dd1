"""Every table is always queryable, with the declared schema; docs/schema.md is generated from it."""

import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest
import soundfile as sf

from cusemo_batch import schema

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "calls"


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cusemo_batch", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def query_every_table(out: Path) -> dict[str, int]:
    """Row counts per table through DuckDB and polars, as an analyst's morning queries would."""
    counts = {}
    for table in schema.TABLES:
        glob = f"{out}/{table}/**/*.parquet"
        n = duckdb.sql(f"select count(*) from read_parquet('{glob}', hive_partitioning = true)").fetchall()[0][0]
        assert pl.scan_parquet(glob, hive_partitioning=True).select(pl.len()).collect().item() == n, table
        described = duckdb.sql(f"describe select * from read_parquet('{glob}', hive_partitioning = true)")
        types = {r[0]: r[1] for r in described.fetchall()}
        assert types["date"] == "DATE", (table, types["date"])
        counts[table] = n
    return counts


def test_docs_schema_md_is_generated_from_the_code():
    assert (REPO / "docs" / "schema.md").read_text() == schema.markdown() + "\n", \
        "run: python -m cusemo_batch.schema > docs/schema.md"


def test_clean_night_without_errors_or_events_is_queryable(tmp_path):
    calls = tmp_path / "calls"
    calls.mkdir()
    x, sr = sf.read(EXAMPLES / "negative_end.flac", dtype="float32")
    sf.write(calls / "short.flac", x[: 6 * sr], sr)  # 6 s: too short for a change event (5 s each side)
    out = tmp_path / "out"
    r = cli("score", calls, "--out", out)
    assert r.returncode == 0, r.stderr
    counts = query_every_table(out)
    assert counts["errors"] == 0 and counts["events"] == 0 and counts["calls"] == 1 and counts["runs"] == 1
    assert list((out / "errors").rglob("_empty.parquet"))
    # the monitoring query of the README works on a clean night
    assert duckdb.sql(f"select call_id, stage, error from '{out}/errors/**/*.parquet'").fetchall() == []
    # a later failure: the placeholder goes, the table holds the real row
    (calls / "broken.wav").write_bytes(b"RIFF not really")
    r = cli("score", calls, "--out", out)
    assert r.returncode == 1
    assert not list((out / "errors").rglob("_empty.parquet"))
    assert query_every_table(out)["errors"] == 1


def test_every_file_has_the_declared_columns_in_order(tmp_path):
    calls = tmp_path / "calls"
    shutil.copytree(EXAMPLES, calls, ignore=shutil.ignore_patterns("LICENCE.md"))
    (calls / "bad.wav").write_bytes(b"")
    out = tmp_path / "out"
    assert cli("score", calls, "--out", out).returncode == 1
    for table, cols in schema.TABLES.items():
        declared = [c.name for c in cols]
        seen_values: dict[str, bool] = dict.fromkeys(declared, False)
        for f in sorted((out / table).rglob("*.parquet")):
            df = pl.read_parquet(f)
            assert df.columns[: len(declared)] == declared, f
            assert [df.schema[c] for c in declared] == [c.dtype for c in cols], f
            for c in declared:
                seen_values[c] |= df[c].null_count() < df.height
        # every declared column is really produced (not a null filled in by the schema)
        never = {c for c, seen in seen_values.items() if not seen} - {"last_error_at", "last_error"}
        assert not never, (table, never)
    # calls.csv lists only some calls: every calls file still has the same columns
    columns = {tuple(pl.read_parquet(f).columns) for f in (out / "calls").rglob("*.parquet")}
    assert len(columns) == 1, columns
    dates = duckdb.sql(f"select distinct call_date from '{out}/calls/**/*.parquet' where call_date is not null").fetchall()
    assert dates and all(type(d[0]).__name__ == "date" for d in dates)


def test_empty_calls_folder_exits_4_with_a_warning(tmp_path):
    calls = tmp_path / "calls"
    calls.mkdir()
    out = tmp_path / "out"
    r = cli("score", calls, "--out", out)
    assert r.returncode == 4, (r.returncode, r.stderr)
    assert "no calls found" in r.stderr
    counts = query_every_table(out)
    assert counts["runs"] == 1 and counts["calls"] == 0
    assert duckdb.sql(f"select exit_code from '{out}/runs/**/*.parquet'").fetchall()[0][0] == 4


@pytest.mark.parametrize("table", list(schema.TABLES))
def test_conform_orders_casts_and_rejects(table):
    cols = schema.columns(table)
    empty = schema.empty(table)
    assert dict(empty.schema) == cols
    shuffled = empty.select(list(reversed(empty.columns))).with_columns(pl.lit("x").alias("extra"))
    assert schema.conform(table, shuffled).columns == [*cols, "extra"]
    typed = next(c.name for c in schema.TABLES[table] if c.dtype != pl.Utf8)
    bad = pl.DataFrame({typed: [[1, 2]]})  # a list can never become a number, flag or time
    with pytest.raises(ValueError, match="schema"):
        schema.conform(table, bad)
