"""Writing one call's tables: its good rows (timeseries, events, calls) or its error row.

Every row of a run carries the run's columns (``run_id``, ``model_id``, ``model_sha256``); the
``calls`` rows also the key, the time, the schema version and the call's metadata. The ``calls``
file is written last: its presence marks the call complete.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

import polars as pl

from .calls import CallError
from .files import crash_point
from .manifest import score_key
from .metadata import join_metadata
from .schema import SCHEMA_VERSION
from .scorer import CallOutcome, errors_frame
from .store import Store, call_key


@dataclass
class CallWriter:
    """Writes one call's tables (or its error row) with the columns every row of a run shares.

    Picklable without its lock (:meth:`for_worker`): the Ray engine's workers write through it.
    """

    store: Store
    run_id: str
    model_id: str
    model_sha256: str
    now: dt.datetime
    options_hash: str

    def key(self, audio_sha256: str) -> str:
        return score_key(audio_sha256, self.model_sha256, self.options_hash)

    def for_worker(self) -> "CallWriter":
        """A copy for another process: OUT as an absolute path, no lock (the driver holds it)."""
        return CallWriter(Store(self.store.root.absolute()), self.run_id, self.model_id, self.model_sha256,
                          self.now, self.options_hash)

    def _run_columns(self) -> list[pl.Expr]:
        return [pl.lit(self.run_id).alias("run_id"), pl.lit(self.model_id).alias("model_id"),
                pl.lit(self.model_sha256).alias("model_sha256")]

    def write_ok(self, out: CallOutcome, key: str, date: str, meta: dict[str, str] | None = None) -> list[str]:
        """timeseries, events, then calls (written last: its presence marks the call complete)."""
        cid, name, lit = out.call.call_id, call_key(out.call.call_id), self._run_columns()
        calls_df = out.summary.with_columns(
            pl.lit(out.audio_sha256).alias("audio_sha256"), pl.lit(key).alias("score_key"),
            pl.lit(self.now).alias("scored_at"), pl.lit(SCHEMA_VERSION).alias("schema_version"), *lit,
            pl.lit(None, pl.Datetime("us", "UTC")).alias("last_error_at"), pl.lit(None, pl.Utf8).alias("last_error"))
        calls_df = join_metadata(calls_df, [(meta or {}) | {"call_id": cid}])
        files = [self.store.write("timeseries", date, name, out.timeseries.with_columns(*lit))]
        crash_point("between_tables")
        files.append(self.store.write("events", date, name, out.events.with_columns(*lit)))
        files.append(self.store.write("calls", date, name, calls_df))
        # an error row of this call left by a run killed before its manifest write would outlive
        # the success otherwise (the manifest never listed it)
        self.store.remove([str(self.store.table_path("errors", date, name).relative_to(self.store.root))])
        return files

    def write_error(self, err: CallError, key: str, date: str) -> str:
        df = errors_frame([err]).with_columns(
            pl.lit(key).alias("score_key"), pl.lit(self.now).alias("occurred_at"), *self._run_columns())
        return self.store.write("errors", date, call_key(err.call_id), df)

    def mark_failed(self, ok_files: list[str], err: CallError) -> None:
        """Stamp the kept good rows of a call that failed this run (an analyst can tell them apart)."""
        for rel in ok_files:
            parts = Path(rel).parts
            if parts[0] != "calls":
                continue
            path = self.store.root / rel
            try:
                df = pl.read_parquet(path)
            except Exception:  # gone or unreadable: nothing to stamp, the error row still tells
                continue
            df = df.with_columns(pl.lit(self.now).alias("last_error_at"),
                                 pl.lit(f"{err.stage}: {err.error}: {err.message}").alias("last_error"))
            self.store.write("calls", parts[1].removeprefix("date="), path.stem, df)

