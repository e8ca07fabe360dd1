"""Call metadata: the optional ``calls.csv`` / ``calls.parquet`` at the root of CALLS, validated.

Read before the nightly job touches OUT (a file that cannot be used as a whole stops the run with
its file and line); one bad value (a date that is not a calendar date) is that call's error row.
The rows are joined to the ``calls`` table by :func:`join_metadata`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import polars as pl

from .text import first_line, read_csv_rows


class MetadataError(ValueError):
    """``calls.csv`` / ``calls.parquet`` cannot be used as a whole (one line, with file and line)."""


@dataclass
class CallMetadata:
    """Rows of ``calls.csv`` / ``calls.parquet`` by call id, with where each came from."""

    source: Path
    columns: tuple[str, ...]
    rows: dict[str, dict[str, str]]
    lines: dict[str, int]  # call id -> line in the CSV (row number + 1 in a Parquet file)

    def date_problem(self, call_id: str) -> str | None:
        """A message when the call's ``date`` is given but not a calendar date (YYYY-MM-DD)."""
        from .store import valid_date

        value = (self.rows.get(call_id) or {}).get("date", "")
        if not value or not value.strip() or valid_date(value):
            return None
        return (f"{self.source.name}:{self.lines[call_id]}: date {value!r} is not a calendar date "
                f"(YYYY-MM-DD)")


# Columns calls.csv may not use: `call_date` is the name `date` gets in the calls table.
RESERVED_METADATA = ("call_date",)


def read_metadata(root: str | Path) -> CallMetadata | None:
    """Optional ``calls.csv`` / ``calls.parquet`` at the folder root: rows with a ``call_id`` column.

    None when there is neither. A file that cannot be used as a whole raises MetadataError with
    file and line -- before the nightly job touches OUT: silently scoring without metadata would
    move calls to other partitions and drop their columns. CSV text may be UTF-8 (with or without
    a BOM) or UTF-16 with a BOM (what spreadsheet programs write as "Unicode text").
    """
    root = Path(root)
    pq, cs = root / "calls.parquet", root / "calls.csv"
    if pq.is_file():
        import polars as pl

        try:
            df = pl.read_parquet(pq)
        except Exception as e:
            raise MetadataError(f"{pq}: cannot read ({first_line(e)})") from None
        header = list(df.columns)
        records = [(i + 2, ["" if v is None else str(v) for v in r]) for i, r in enumerate(df.iter_rows())]
        source = pq
    elif cs.is_file():
        table = read_csv_rows(cs, MetadataError)
        if not table:
            return None
        header = [h.strip() for h in table[0]]
        records = [(i + 2, r) for i, r in enumerate(table[1:]) if any(x.strip() for x in r)]
        source = cs
    else:
        return None
    name = source.name
    if "call_id" not in header:
        raise MetadataError(f"{source}:1: no call_id column (columns: {', '.join(header)[:200]})")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes or any(not h for h in header):
        raise MetadataError(f"{source}:1: column names must be non-empty and distinct "
                            f"({', '.join(map(repr, dupes)) or 'an empty name'})")
    reserved = [h for h in header if h in RESERVED_METADATA]
    if reserved:
        raise MetadataError(f"{source}:1: column {reserved[0]!r} is reserved (the calls table names the "
                            f"`date` column so); rename it")
    rows: dict[str, dict[str, str]] = {}
    lines: dict[str, int] = {}
    for line, values in records:
        if len(values) != len(header):
            raise MetadataError(f"{name}:{line}: {len(values)} fields, the header has {len(header)}")
        row = dict(zip(header, (v.strip() for v in values)))
        cid = row["call_id"]
        if not cid:
            raise MetadataError(f"{name}:{line}: empty call_id")
        if cid in rows:
            raise MetadataError(f"{name}:{line}: call_id {cid!r} is listed twice (first on line {lines[cid]})")
        rows[cid], lines[cid] = row, line
    return CallMetadata(source, tuple(header), rows, lines)


def join_metadata(calls_df: pl.DataFrame, rows: list[dict[str, str]]) -> pl.DataFrame:
    """Left-join ``calls.csv`` columns (as strings); names that clash with ours get a ``meta_`` prefix.

    ``date`` becomes ``call_date``: ``date`` is the hive partition key of every table.
    """
    meta = pl.DataFrame(rows).cast(pl.Utf8).unique("call_id", keep="first")
    rename = {c: f"meta_{c}" for c in meta.columns if c not in ("call_id", "date") and c in calls_df.columns}
    if "date" in meta.columns:
        rename["date"] = "call_date"
    meta = meta.rename(rename)
    if "call_date" in meta.columns:  # a DATE for SQL (`where call_date >= DATE '...'`); not a date -> null
        meta = meta.with_columns(pl.col("call_date").str.slice(0, 10).str.to_date("%Y-%m-%d", strict=False))
    return calls_df.drop([c for c in meta.columns if c != "call_id" and c in calls_df.columns]).join(
        meta, on="call_id", how="left")
