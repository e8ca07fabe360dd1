"""Bring a store written by an older version to the current schema, once, under the run's lock.

Schema 4 added ``calls.input_level_dbfs`` and ``calls.clipped_fraction``: older files get them as
nulls (the measurement was not made), like any declared column a file lacks.

Schema 3 moved the ``calls.csv`` columns of the ``calls`` table into one JSON column
``metadata``: before, each file carried the columns its night's ``calls.csv`` had, and DuckDB's
``select * from read_parquet('OUT/calls/**/*.parquet')`` failed with a schema mismatch as soon
as two nights differed; schema 2 added columns to ``calls`` and ``runs`` and typed dates. The
numbers are untouched: a file whose columns are not the declared ones is rewritten in the declared
schema (a missing column null), the extra columns of a ``calls`` file folded into ``metadata`` (a
name the old writer had prefixed with ``meta_`` because it clashed with ours gets its own name
back). Each file is rewritten atomically and the version is recorded
last (``OUT/_state/schema_version``), so a run killed halfway simply finishes the job next time.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl

from .files import atomic_write_text
from .metadata import metadata_json
from .schema import SCHEMA_VERSION, columns
from .store import TABLES, Store, StoreWriteError


def version_path(store: Store) -> Path:
    return store.root / "_state" / "schema_version"


def stored_version(store: Store) -> int | None:
    """The schema version OUT was last brought to; None for a store older than the marker."""
    try:
        return int(version_path(store).read_text().strip())
    except (OSError, ValueError):
        return None


def upgrade_store(store: Store) -> int:
    """Upgrade OUT to :data:`SCHEMA_VERSION` if needed; returns the number of files rewritten.

    Cheap when current (one small file read). A store without the marker is checked file by file
    (a Parquet footer each, well under a millisecond, paid once per store): every file of every
    table whose leading columns are not the declared ones is rewritten in the declared schema;
    columns a table does not declare are kept after them (auxiliary model heads of ``timeseries``)
    except in ``calls``, where they are ``calls.csv`` columns and go into ``metadata``.
    """
    if (stored_version(store) or 0) >= SCHEMA_VERSION:
        return 0
    n = 0
    for table in TABLES:
        declared = columns(table)
        for path in sorted((store.root / table).glob("date=*/*.parquet")):
            have = pl.read_parquet_schema(path)
            if list(have.items())[: len(declared)] == list(declared.items()) and (
                    table != "calls" or len(have) == len(declared)):
                continue
            df = pl.read_parquet(path)
            if table == "calls":
                df = _fold_metadata(df, declared)
            store.write(table, path.parent.name.removeprefix("date="), path.stem, df)
            n += 1
    try:
        version_path(store).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(version_path(store), f"{SCHEMA_VERSION}\n")
    except OSError as e:
        raise StoreWriteError(f"{store.root}: cannot record the schema version ({e.strerror or e})") from None
    return n


def _fold_metadata(df: pl.DataFrame, declared: dict[str, pl.DataType]) -> pl.DataFrame:
    """A ``calls`` frame of schema 1/2 with its ``calls.csv`` columns in ``metadata`` (JSON)."""
    extra = [c for c in df.columns if c not in declared]
    names = {c: (c[5:] if c.startswith("meta_") and c[5:] in declared else c) for c in extra}
    if extra:
        meta = [metadata_json({names[c]: (None if r[c] is None else str(r[c])) for c in extra})
                for r in df.select(extra).iter_rows(named=True)]
    elif "metadata" in df.columns:
        meta = df["metadata"].fill_null(metadata_json(None)).to_list()
    else:
        meta = [metadata_json(None)] * df.height
    return df.drop(extra).with_columns(pl.Series("metadata", meta, pl.Utf8),
                                       pl.lit(SCHEMA_VERSION, pl.Int32).alias("schema_version"))
