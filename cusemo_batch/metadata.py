"""Call metadata: the optional ``calls.csv`` / ``calls.parquet`` at the root of CALLS, validated.

Read before the nightly job touches OUT (a file that cannot be used as a whole stops the run with
its file and line); one bad value (a date that is not a calendar date) is that call's error row.
The rows are joined to the ``calls`` table by :func:`join_metadata` as two columns every file has,
whatever ``calls.csv`` listed that night: ``call_date`` (a DATE) and ``metadata`` (a JSON object of
the other columns). Columns of their own per file would differ between nights (a new column in
``calls.csv``, a call not listed), and DuckDB's ``select *`` over the table's glob then fails with
a schema mismatch; :func:`expand_metadata` turns the JSON back into columns for one frame.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

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


# Keys of the metadata JSON that are not metadata: the call id is a column, ``date`` is ``call_date``.
_NOT_METADATA = ("call_id", "date")


def metadata_json(row: Mapping[str, str | None] | None) -> str:
    """The ``metadata`` cell of a call: its ``calls.csv`` columns but ``call_id``/``date`` as JSON text.

    Keys sorted, so the same metadata is the same bytes whatever the column order that night;
    ``{}`` for a call ``calls.csv`` does not list (a SQL ``metadata->>'queue'`` is then NULL).

    >>> metadata_json({"call_id": "c1", "date": "2026-11-24", "queue": "billing", "agent": "A7"})
    '{"agent": "A7", "queue": "billing"}'
    """
    items = {k: v for k, v in (row or {}).items() if k not in _NOT_METADATA and v is not None}
    return json.dumps(dict(sorted(items.items())), ensure_ascii=False)


def join_metadata(calls_df: pl.DataFrame, rows: Sequence[Mapping[str, str | None]]) -> pl.DataFrame:
    """Add ``call_date`` (DATE; null when absent or not a date) and ``metadata`` (JSON) by ``call_id``.

    Every call gets both columns, listed or not, so every file of the table has the same schema.

    >>> calls = pl.DataFrame({"call_id": ["c1", "c2"], "speaker": ["client", "client"]})
    >>> join_metadata(calls, [{"call_id": "c1", "date": "2026-11-24", "queue": "billing"}]).row(0)
    ('c1', 'client', datetime.date(2026, 11, 24), '{"queue": "billing"}')
    """
    from .store import valid_date  # the partition's own date rule: ASCII digits, a calendar day

    by_id: dict[str, Mapping[str, str | None]] = {}
    for r in rows:
        by_id.setdefault(str(r["call_id"]), r)
    ids = set(calls_df["call_id"].to_list()) if calls_df.height else set()
    dates = {c: dt.date.fromisoformat(d) for c in ids if (d := valid_date((by_id.get(c) or {}).get("date")))}
    meta = {c: metadata_json(by_id.get(c)) for c in ids}
    cid = pl.col("call_id")
    return calls_df.with_columns(cid.replace_strict(dates, default=None, return_dtype=pl.Date).alias("call_date"),
                                 cid.replace_strict(meta, default="{}", return_dtype=pl.Utf8).alias("metadata"))


def expand_metadata(calls: pl.DataFrame, reserved: Sequence[str] = ()) -> tuple[pl.DataFrame, list[str]]:
    """The ``metadata`` JSON of a calls frame as text columns (for a report or a CSV export).

    Returns the frame with one column per key found in any row (null where a call lacks it) and
    those column names in the order of the sorted keys. A key that clashes with a column of
    ``calls`` or with ``reserved`` gets the prefix ``meta_``.

    >>> df = pl.DataFrame({"call_id": ["a", "b"], "metadata": ['{"queue": "x"}', "{}"]})
    >>> wide, names = expand_metadata(df)
    >>> names, wide["queue"].to_list()
    (['queue'], ['x', None])
    """
    if "metadata" not in calls.columns:
        return calls, []
    decoded = [json.loads(m) if m else {} for m in calls["metadata"].to_list()]
    keys = sorted({k for d in decoded for k in d})
    taken = set(calls.columns) | set(reserved)
    names = {k: (f"meta_{k}" if k in taken else k) for k in keys}
    extra = pl.DataFrame({names[k]: [None if d.get(k) is None else str(d[k]) for d in decoded] for k in keys},
                         schema={names[k]: pl.Utf8 for k in keys})
    return pl.concat([calls, extra], how="horizontal"), [names[k] for k in keys]
