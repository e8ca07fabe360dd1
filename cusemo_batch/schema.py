"""The output tables' columns: name, type, unit and meaning -- one definition for the writer and the docs.

Every file the store writes goes through :func:`conform`, so every file of a table has the declared
columns in the declared order with the declared types (the only extra columns: auxiliary model
heads in ``timeseries``; ``calls.csv`` metadata is one JSON column of ``calls``), and ``docs/schema.md`` is
generated from :data:`TABLES` by :func:`markdown` (a test checks the checked-in file is current), so
the reference cannot drift from what is written.

Times ending in ``_s`` are seconds of *original call time* (from the start of the recording,
before silence compression) unless the description says otherwise. Valence and arousal are on the
annotation scale [-1, 1] (Darma's +-1000 divided by 1000).
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

SCHEMA_VERSION = 4  # 2: calls.last_error_at / last_error / call_date (Date), runs.device_note;
# 3: calls.csv columns in one JSON column `metadata` (one schema for every file of `calls`);
# 4: calls.input_level_dbfs / clipped_fraction (null in rows scored before)


@dataclass(frozen=True)
class Column:
    name: str
    dtype: pl.DataType
    unit: str
    doc: str


_UTC = pl.Datetime("us", "UTC")
_RUN = (
    Column("run_id", pl.Utf8, "", "the run that wrote the row (`runs.run_id`)"),
    Column("model_id", pl.Utf8, "", "model `name@version`"),
    Column("model_sha256", pl.Utf8, "", "sha256 of the model file (NAME.onnx)"),
)
_DIM = {"valence": "valence (negative -1 ... positive +1)", "arousal": "arousal (calm -1 ... agitated +1)"}


def _summary(dim: str) -> tuple[Column, ...]:
    what = _DIM[dim]
    return (
        Column(f"{dim}_mean", pl.Float64, "[-1, 1]", f"mean {what} over the speaker's speech windows"),
        Column(f"{dim}_std", pl.Float64, "[-1, 1]", "sample standard deviation (ddof 1) over speech windows"),
        Column(f"{dim}_min", pl.Float64, "[-1, 1]", "minimum over speech windows"),
        Column(f"{dim}_max", pl.Float64, "[-1, 1]", "maximum over speech windows"),
        Column(f"{dim}_p10", pl.Float64, "[-1, 1]", "10th percentile over speech windows"),
        Column(f"{dim}_p90", pl.Float64, "[-1, 1]", "90th percentile over speech windows"),
        Column(f"{dim}_start", pl.Float64, "[-1, 1]", "mean over the first `edge_s` (10) seconds of speech"),
        Column(f"{dim}_end", pl.Float64, "[-1, 1]", "mean over the last `edge_s` (10) seconds of speech"),
        Column(f"{dim}_slope_per_min", pl.Float64, "per minute",
               "least-squares slope of the smoothed values against call time"),
    )


TABLES: dict[str, tuple[Column, ...]] = {
    "timeseries": (
        Column("call_id", pl.Utf8, "", "call id (file or folder name, or `calls.csv`)"),
        Column("speaker", pl.Utf8, "", "role (`client`, `agent`, or an RTTM label no `--roles` entry maps)"),
        Column("t_start_s", pl.Float64, "s", "window start, call time"),
        Column("t_end_s", pl.Float64, "s", "window end, call time (the last window ends with the audio)"),
        Column("valence", pl.Float64, "[-1, 1]",
               "model valence averaged over the window's frames; null where the audio was cut as long silence"),
        Column("arousal", pl.Float64, "[-1, 1]", "model arousal, as valence"),
        Column("speech_ratio", pl.Float64, "0..1", "fraction of the window in which the speaker speaks (VAD)"),
        Column("valence_smooth", pl.Float64, "[-1, 1]",
               "speech-weighted mean over `smooth_s` seconds of the speaker's speech; null below the speech floor"),
        Column("arousal_smooth", pl.Float64, "[-1, 1]", "as valence_smooth"),
        *_RUN,
    ),
    "calls": (
        Column("call_id", pl.Utf8, "", "call id"),
        Column("speaker", pl.Utf8, "", "role"),
        Column("duration_s", pl.Float64, "s", "last window end - first window start (the recording's length)"),
        Column("speech_s", pl.Float64, "s", "talk time: sum of speech_ratio x window length"),
        *_summary("valence"),
        *_summary("arousal"),
        Column("longest_negative_s", pl.Float64, "s of speech",
               "longest run of speech windows with smoothed valence below `negative_level` (-0.2)"),
        Column("n_valence_drop", pl.Int64, "count", "change events of kind valence_drop"),
        Column("n_valence_rise", pl.Int64, "count", "change events of kind valence_rise"),
        Column("n_arousal_spike", pl.Int64, "count", "change events of kind arousal_spike"),
        Column("n_arousal_drop", pl.Int64, "count", "change events of kind arousal_drop"),
        Column("valence_drop", pl.Boolean, "flag", "at least one valence_drop event"),
        Column("arousal_spike", pl.Boolean, "flag", "at least one arousal_spike event"),
        Column("negative_end", pl.Boolean, "flag", "valence_end < `negative_level`"),
        Column("sustained_negative", pl.Boolean, "flag", "longest_negative_s >= `sustained_s` (10 s)"),
        Column("recovery", pl.Boolean, "flag",
               "a valence drop later undone, or a sustained negative stretch followed by a non-negative end"),
        Column("layout", pl.Utf8, "", "how the call was found: stereo, per-speaker, rttm or mono"),
        Column("compressed_s", pl.Float64, "s",
               "audio the model saw for this speaker: the recording after silences > 3 s became 1 s"),
        Column("input_level_dbfs", pl.Float64, "dBFS",
               "active-speech RMS level of that audio as it arrived, before the model's level normalisation "
               "(a line's loudness; the `speech_rms` models do not see it)"),
        Column("clipped_fraction", pl.Float64, "0..1",
               "share of that audio's samples at full scale (|x| >= 0.99): clipping reads as agitation "
               "(MODEL_CARD.md)"),
        Column("audio_sha256", pl.Utf8, "", "sha256 over the call's input files (audio and RTTM)"),
        Column("score_key", pl.Utf8, "", "audio hash : model hash : options hash (what the skip logic compares)"),
        Column("scored_at", _UTC, "UTC", "when the result was computed"),
        Column("schema_version", pl.Int32, "", "version of these table definitions"),
        *_RUN,
        Column("last_error_at", _UTC, "UTC",
               "null, or when a later run failed on this call: these rows are its last good result"),
        Column("last_error", pl.Utf8, "", "that failure: `stage: error: message` (details in `errors`)"),
        Column("call_date", pl.Date, "date", "the `date` column of calls.csv (null when absent or not a date)"),
        Column("metadata", pl.Utf8, "JSON",
               "the call's other calls.csv / --manifest columns as a JSON object of text values, keys sorted; "
               "`{}` when not listed. DuckDB: `metadata->>'queue'`; polars: "
               "`pl.col('metadata').str.json_path_match('$.queue')`"),
    ),
    "events": (
        Column("call_id", pl.Utf8, "", "call id"),
        Column("speaker", pl.Utf8, "", "role"),
        Column("dimension", pl.Utf8, "", "valence or arousal"),
        Column("kind", pl.Utf8, "", "valence_drop, valence_rise, arousal_spike or arousal_drop"),
        Column("t_start_s", pl.Float64, "s", "start of the change (half-maximum span), call time"),
        Column("t_end_s", pl.Float64, "s", "end of the change, call time"),
        Column("t_change_s", pl.Float64, "s", "where the smoothed trajectory crosses the midpoint of the two levels"),
        Column("level_before", pl.Float64, "[-1, 1]", "mean over the `context_s` (5) seconds of speech before"),
        Column("level_after", pl.Float64, "[-1, 1]", "mean over the `context_s` seconds of speech after"),
        Column("magnitude", pl.Float64, "[-2, 2]", "level_after - level_before"),
        Column("held_s", pl.Float64, "s of speech", "how long the new level held (>= `min_duration_s`, 2)"),
        *_RUN,
    ),
    "errors": (
        Column("call_id", pl.Utf8, "", "call id (for discovery errors: the file name)"),
        Column("file", pl.Utf8, "", "the file at fault"),
        Column("stage", pl.Utf8, "", "discover, read, decode, infer or analyse"),
        Column("error", pl.Utf8, "", "error class, e.g. UnreadableAudio, NoSpeechError, TooShortError"),
        Column("message", pl.Utf8, "", "one line for a human"),
        Column("score_key", pl.Utf8, "", "key of the attempt (empty when the audio could not be hashed)"),
        Column("occurred_at", _UTC, "UTC", "when the run that failed started"),
        *_RUN,
    ),
    "runs": (
        Column("run_id", pl.Utf8, "", "`YYYYMMDDTHHMMSSZ-xxxxxx`"),
        Column("started_at", _UTC, "UTC", "run start"),
        Column("finished_at", _UTC, "UTC", "run end"),
        Column("calls_dir", pl.Utf8, "", "CALLS, absolute"),
        Column("calls_found", pl.Int64, "count", "calls discovered (including the ones that failed discovery)"),
        Column("scored", pl.Int64, "count", "calls scored this run"),
        Column("skipped", pl.Int64, "count", "calls unchanged since their last good result"),
        Column("failed", pl.Int64, "count", "calls with an error row from this run"),
        Column("audio_s", pl.Float64, "s", "audio scored this run (longest speaker per call)"),
        Column("wall_s", pl.Float64, "s", "run time"),
        Column("x_real_time", pl.Float64, "x", "audio_s / wall_s"),
        Column("model_id", pl.Utf8, "", "model `name@version`"),
        Column("model_sha256", pl.Utf8, "", "sha256 of the model file"),
        Column("providers", pl.Utf8, "", "onnxruntime execution providers in use"),
        Column("device_note", pl.Utf8, "", "why the device differs from the one asked for (empty: it does not)"),
        Column("options_hash", pl.Utf8, "", "hash of the options that change the numbers"),
        Column("exit_code", pl.Int64, "", "the run's exit code (0 ok, 1 calls failed, 4 no calls)"),
        Column("unmapped_rttm_labels", pl.Utf8, "",
               "`LABEL:calls,...`: RTTM labels no `--roles` entry mapped (stored as speaker names); empty: none"),
        Column("cusemo_batch_version", pl.Utf8, "", "package version"),
        Column("schema_version", pl.Int64, "", "version of these table definitions"),
        Column("host", pl.Utf8, "", "host name"),
        Column("pid", pl.Int64, "", "process id"),
    ),
}
# The columns a CallError fills (scorer, curation): the head of the errors table.
CALL_ERROR_SCHEMA: dict[str, pl.DataType] = {c.name: c.dtype for c in TABLES["errors"][:5]}
PARTITION = Column("date", pl.Date, "date",
                   "hive partition (`date=YYYY-MM-DD` folder): the call's date from calls.csv, else the run date "
                   "(runs: the run date)")


def columns(table: str, heads: tuple[str, ...] = ()) -> dict[str, pl.DataType]:
    """Declared columns of ``table``; ``heads`` adds auxiliary model heads after arousal (timeseries)."""
    cols = {c.name: c.dtype for c in TABLES[table]}
    if table == "timeseries" and heads:
        names = list(cols)
        at = names.index("arousal") + 1
        extra = {h: pl.Float64 for h in heads if h not in cols}
        cols = {**{n: cols[n] for n in names[:at]}, **extra, **{n: cols[n] for n in names[at:]}}
    return cols


def empty(table: str, heads: tuple[str, ...] = ()) -> pl.DataFrame:
    """A zero-row frame with the table's full schema (what an empty table's placeholder file holds)."""
    return pl.DataFrame(schema=columns(table, heads))


def conform(table: str, df: pl.DataFrame) -> pl.DataFrame:
    """Declared columns first, in order, with their types (missing ones null); extra columns after.

    Raises ValueError when a declared column cannot take its type -- a writer bug, caught in tests,
    never a silent string column in the warehouse.
    """
    declared = columns(table)
    have = df.schema  # one schema resolution: it is not free in polars (measured ~35 us a call)
    if list(have.items())[: len(declared)] == list(declared.items()):
        return df  # already in shape (most writes): no copy
    extra = [c for c in have if c not in declared]
    exprs = []
    for name, dtype in declared.items():
        if name in have and have[name] == pl.Utf8 and dtype == pl.Date:  # schema 1 stored dates as text
            exprs.append(pl.col(name).str.slice(0, 10).str.to_date("%Y-%m-%d", strict=False))
        elif name in have:
            exprs.append(pl.col(name).cast(dtype, strict=have[name] != pl.Utf8 or dtype == pl.Utf8))
        else:
            exprs.append(pl.lit(None, dtype).alias(name))
    try:
        return df.select(*exprs, *extra)
    except pl.exceptions.PolarsError as e:
        raise ValueError(f"{table}: rows do not fit the table schema ({str(e).splitlines()[0]})") from None


def markdown() -> str:
    """``docs/schema.md``: every column of every table, its type, unit and meaning."""
    out = ["# Output tables", "",
           "Generated from `cusemo_batch/schema.py` by `python -m cusemo_batch.schema > docs/schema.md`;",
           "a test fails when this file and the code disagree.", "",
           f"Schema version {SCHEMA_VERSION}. Layout: `OUT/<table>/date=YYYY-MM-DD/<call>.parquet`, one file per",
           "call per table (runs: one per run). Read a table with its glob and hive partitioning, e.g.",
           "`read_parquet('OUT/calls/**/*.parquet', hive_partitioning = true)` in DuckDB or",
           "`pl.scan_parquet('OUT/calls/**/*.parquet', hive_partitioning=True)`. A table with no rows yet",
           "holds one zero-row `_empty.parquet` with the full schema, so these queries never fail.", "",
           "Times ending in `_s` are seconds of original call time (from the start of the recording,",
           "before silence compression) unless noted. Valence and arousal are on the annotation scale",
           "[-1, 1]. Every file of a table has the table's columns; the one exception is a model with",
           "auxiliary heads, whose outputs follow `arousal` in `timeseries`. `calls.csv` columns live in",
           "`calls.metadata` (JSON) because they differ between nights. Stores written before schema",
           "version 3 are upgraded by the next `score` run.", ""]
    for table, cols in TABLES.items():
        out += [f"## `{table}`", "", "| column | type | unit | meaning |", "|---|---|---|---|"]
        for c in (*cols, PARTITION):
            out.append(f"| `{c.name}` | {_sql_type(c.dtype)} | {c.unit} | {c.doc} |")
        out.append("")
    return "\n".join(out)


def _sql_type(dtype: pl.DataType) -> str:
    return {pl.Utf8: "VARCHAR", pl.Float64: "DOUBLE", pl.Int64: "BIGINT", pl.Int32: "INTEGER",
            pl.Boolean: "BOOLEAN", pl.Date: "DATE"}.get(dtype, "TIMESTAMP WITH TIME ZONE" if dtype == _UTC else str(dtype))


if __name__ == "__main__":
    print(markdown())
