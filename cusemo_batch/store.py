"""The output store: hive-partitioned Parquet tables, atomic files, a manifest and a lock.

``OUT/`` layout (the product's public contract; schema version in every ``runs`` row)::

    OUT/timeseries/date=YYYY-MM-DD/<call-key>.parquet   one file per call (all its speakers)
    OUT/calls/date=YYYY-MM-DD/<call-key>.parquet
    OUT/events/date=YYYY-MM-DD/<call-key>.parquet
    OUT/errors/date=YYYY-MM-DD/<call-key>.parquet       present while the call fails
    OUT/runs/date=YYYY-MM-DD/run-<run_id>.parquet       one row per run
    OUT/_state/manifest.parquet                         what is scored with which audio/model/config
    OUT/.lock                                           flock held by the running job

Why one file per call: rescoring a call replaces exactly its files (deterministic names), so a
re-run can never duplicate rows, a crash can only leave whole files (temp + fsync + rename), and
no file ever needs a read-modify-write. Readers glob ``OUT/calls/**/*.parquet`` with hive
partitioning (DuckDB, polars, Spark, Power BI's folder connector).
"""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import io
import os
import re
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from . import schema
from .files import TMP_PREFIX, atomic_path

TABLES = tuple(schema.TABLES)
EMPTY = "_empty"  # stem of the zero-row placeholder of a table that has no rows yet
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$")

# One row per call: ``status``/``key`` of the last attempt, ``files`` everything the call owns;
# ``ok_key``/``ok_files`` the good rows kept until a new success replaces them (see manifest.Manifest).
MANIFEST_SCHEMA = {
    "call_id": pl.Utf8, "status": pl.Utf8, "key": pl.Utf8, "date": pl.Utf8,
    "files": pl.List(pl.Utf8), "run_id": pl.Utf8, "ok_key": pl.Utf8, "ok_files": pl.List(pl.Utf8),
}


class LockedError(Exception):
    """Another run holds the lock on this output folder (exit code 3)."""


class StoreError(Exception):
    """The output folder cannot be used (exit code 2)."""


class StoreWriteError(StoreError):
    """Writing under OUT failed mid-run (disk full, I/O error, quota): exit code 5.

    Files already written stay whole (atomic renames); the next run on a healthy disk completes
    the night to the same rows.
    """


def _cause(e: BaseException) -> str:
    """The OS reason of a failed write ("No space left on device"). Files are written with plain
    file I/O (:func:`_parquet_bytes`), so a disk problem is an OSError with its errno."""
    if isinstance(e, OSError) and e.errno:
        return e.strerror or os.strerror(e.errno)
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def _parquet_bytes(df: pl.DataFrame, **options) -> bytes:
    """Serialise in memory, then write with plain file I/O: on a full disk the Parquet writer only
    says "Invalid thrift: transport error", a Python write says "No space left on device"."""
    buf = io.BytesIO()
    df.write_parquet(buf, **options)
    return buf.getvalue()


def call_key(call_id: str) -> str:
    """A file name for a call id that can never escape its folder (no separators, no dots-only).

    Readable prefix + hash of the exact id, so ``a/b`` and ``a_b`` do not collide.
    """
    safe = re.sub(r"[^A-Za-z0-9_-]+", "_", call_id).strip("_")[:80] or "call"
    return f"{safe}-{hashlib.sha256(call_id.encode('utf-8')).hexdigest()[:10]}"


def valid_date(text: str | None) -> str | None:
    """``YYYY-MM-DD`` prefix of an ISO date/datetime that is a calendar date, or None.

    ASCII digits only (``str.isdigit`` and ``\\d`` accept full-width digits) and a real day
    (``2026-02-30`` is not), so partitions stay parseable as DATE and paths cannot be injected.
    """
    if not text:
        return None
    head = str(text).strip()[:10]
    if not _DATE.match(head):
        return None
    try:
        dt.date.fromisoformat(head)
    except ValueError:
        return None
    return head


@dataclass
class Store:
    root: Path

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------------------ lifecycle
    def open(self) -> "Store":
        """Create OUT if needed, take the lock, remove temp files left by a killed run."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            probe = self.root / f"{TMP_PREFIX}probe"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            raise StoreError(f"{self.root}: output folder not writable ({e.strerror or e})") from None
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip()
            os.close(fd)
            raise LockedError(f"{self.root} is locked by another cusemo-batch run ({holder or 'unknown pid'})") from None
        # The OS releases a flock when its process dies, so a killed run never leaves a stale lock.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        self._lock_fd = fd
        self.clean_temp_files()
        return self

    def close(self) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> "Store":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def clean_temp_files(self) -> int:
        n = 0
        for p in self.root.rglob(f"{TMP_PREFIX}*"):
            if p.is_file():
                p.unlink(missing_ok=True)
                n += 1
        return n

    # --------------------------------------------------------------------------------- tables
    def table_path(self, table: str, date: str, name: str) -> Path:
        if table not in TABLES:
            raise ValueError(f"unknown table {table!r}")
        if not _DATE.match(date):
            raise ValueError(f"bad partition date {date!r}")
        path = self.root / table / f"date={date}" / f"{name}.parquet"
        # Defence in depth: names come from call_key()/run ids, but never write outside OUT.
        if self.root.resolve() not in path.resolve().parents:
            raise ValueError(f"refusing to write outside {self.root}: {path}")
        return path

    def write(self, table: str, date: str, name: str, df: pl.DataFrame) -> str:
        """Write one file atomically, in the table's declared schema; returns its path relative to OUT."""
        path = self.table_path(table, date, name)
        df = schema.conform(table, df)
        try:
            data = _parquet_bytes(df, compression="zstd", statistics=True)
            with atomic_path(path) as tmp:
                tmp.write_bytes(data)
        except (OSError, pl.exceptions.PolarsError) as e:
            raise StoreWriteError(f"{self.root}: cannot write {table} ({_cause(e)})") from None
        return str(path.relative_to(self.root))

    def ensure_queryable(self, date: str, heads: tuple[str, ...] = ()) -> None:
        """Leave every table readable by its glob: a table without rows gets a zero-row placeholder.

        ``read_parquet('OUT/errors/**/*.parquet')`` fails on "no files" after a clean night; the
        placeholder carries the full schema. It is removed once the table has real files (its
        schema could otherwise lag behind theirs).
        """
        for table in TABLES:
            # the first real file ends the search: a big store is not listed in full every night
            has_rows = any(f.stem != EMPTY for f in (self.root / table).glob("date=*/*.parquet"))
            placeholders = list((self.root / table).glob(f"date=*/{EMPTY}.parquet"))
            if has_rows:
                for f in placeholders:
                    f.unlink(missing_ok=True)
            elif not placeholders:
                self.write(table, date, EMPTY, schema.empty(table, heads))

    def remove(self, relpaths: list[str]) -> None:
        for rel in relpaths:
            p = (self.root / rel)
            if self.root.resolve() in p.resolve().parents:
                p.unlink(missing_ok=True)

    def scan(self, table: str) -> pl.DataFrame | None:
        """Read a whole table back (hive partitioning adds the ``date`` column)."""
        files = sorted((self.root / table).glob("date=*/*.parquet"))
        if not files:
            return None
        return pl.read_parquet(files, hive_partitioning=True, missing_columns="insert")

    # ------------------------------------------------------------------------------- manifest
    @property
    def manifest_path(self) -> Path:
        return self.root / "_state" / "manifest.parquet"

    def read_manifest(self) -> pl.DataFrame:
        """The manifest; rebuilt from the tables when it is missing or unreadable."""
        p = self.manifest_path
        if p.is_file():
            try:
                df = pl.read_parquet(p)
            except Exception:
                return self.rebuild_manifest()
            if "ok_files" not in df.columns:  # written before failures kept good rows: ok = its files
                ok = pl.col("status") == "ok"
                df = df.with_columns(pl.when(ok).then(pl.col("key")).otherwise(pl.lit("")).alias("ok_key"),
                                     pl.when(ok).then(pl.col("files")).otherwise(pl.lit([], pl.List(pl.Utf8)))
                                     .alias("ok_files"))
            return df.select(list(MANIFEST_SCHEMA)).cast(MANIFEST_SCHEMA)
        return self.rebuild_manifest()

    def write_manifest(self, df: pl.DataFrame) -> None:
        try:
            data = _parquet_bytes(df.select(list(MANIFEST_SCHEMA)).cast(MANIFEST_SCHEMA).sort("call_id"))
            with atomic_path(self.manifest_path) as tmp:
                tmp.write_bytes(data)
        except (OSError, pl.exceptions.PolarsError) as e:
            raise StoreWriteError(f"{self.root}: cannot write the manifest ({_cause(e)})") from None

    def rebuild_manifest(self) -> pl.DataFrame:
        """Reconstruct the manifest from the tables: ``calls``/``errors`` rows carry call id and key.

        Files are tied to a call by their name (:func:`call_key`), shared by all tables. A call with
        both good rows and an error row failed after an earlier success: status ``error``, the good
        rows kept as ``ok_files``. A call found in several date partitions (its date changed and
        the run that moved it died before its manifest write) keeps the partition of its newest
        result (``scored_at``); the other copies are deleted, so no row is ever counted twice.
        """
        found: dict[str, dict[str, dict]] = {}  # stem -> date -> what that partition holds
        for table in ("calls", "errors"):
            for f in sorted((self.root / table).glob("date=*/*.parquet")):
                if f.stem == EMPTY:
                    continue
                try:
                    df = pl.read_parquet(f)
                except Exception:
                    continue
                if not df.height or "call_id" not in df.columns:
                    continue
                date = f.parent.name.removeprefix("date=")
                part = found.setdefault(f.stem, {}).setdefault(date, {"call_id": df["call_id"][0]})
                stamp = "scored_at" if table == "calls" else "occurred_at"
                part[table] = {"key": df["score_key"][0] if "score_key" in df.columns else "",
                               "run_id": df["run_id"][0] if "run_id" in df.columns else "",
                               "at": df[stamp].max() if stamp in df.columns else None}
        files: dict[str, dict[str, list[str]]] = {}  # stem -> date -> files (every table)
        for table in TABLES:
            for f in sorted((self.root / table).glob("date=*/*.parquet")):
                if f.stem in found:
                    date = f.parent.name.removeprefix("date=")
                    files.setdefault(f.stem, {}).setdefault(date, []).append(str(f.relative_to(self.root)))
        rows = []
        for stem, parts in found.items():
            def newest(table: str) -> str | None:
                have = [d for d, p in parts.items() if table in p]
                return max(have, key=lambda d: (parts[d][table]["at"] is not None, parts[d][table]["at"] or 0, d)) \
                    if have else None

            ok_date, err_date = newest("calls"), newest("errors")
            ok = parts[ok_date]["calls"] if ok_date else None
            err = parts[err_date]["errors"] if err_date else None
            if ok and err and ok["at"] is not None and err["at"] is not None and err["at"] < ok["at"]:
                err_date, err = None, None  # an error row older than the good result is stale
            keep: list[str] = []
            for date, fs in files.get(stem, {}).items():
                for f in fs:
                    is_err = f.startswith("errors/")
                    if (is_err and date == err_date) or (not is_err and date == ok_date):
                        keep.append(f)
                    else:
                        self.remove([f])
            ok_files = [f for f in keep if not f.startswith("errors/")]
            last = err or ok
            rows.append({"call_id": parts[err_date or ok_date]["call_id"], "status": "error" if err else "ok",
                         "key": last["key"], "date": ok_date or err_date, "files": keep, "run_id": last["run_id"],
                         "ok_key": ok["key"] if ok else "", "ok_files": ok_files})
        if not rows:
            return pl.DataFrame(schema=MANIFEST_SCHEMA)
        return pl.DataFrame(rows, schema=MANIFEST_SCHEMA)
