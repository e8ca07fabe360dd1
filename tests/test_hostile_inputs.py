"""Hostile and unlucky inputs: the night never hangs, no call spoils another, history is never rewritten.

Real files (a FIFO, a chmod 000 folder under setpriv, a full tmpfs in a user namespace), real runs.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest
import soundfile as sf
from demo_calls import copy_demo_calls

from cusemo_batch.schema import SCHEMA_VERSION

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "calls"
RUN_COLUMNS = ("run_id", "scored_at", "occurred_at")


def cli(*args, wrap=(), timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run([*wrap, sys.executable, "-m", "cusemo_batch", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def read(out: Path, table: str) -> pl.DataFrame:
    files = sorted((out / table).glob("date=*/*.parquet"))
    return pl.read_parquet(files, hive_partitioning=True) if files else pl.DataFrame()


def values(out: Path) -> dict[str, pl.DataFrame]:
    got = {}
    for t in ("timeseries", "events", "calls"):
        df = read(out, t)
        got[t] = df.drop([c for c in RUN_COLUMNS if c in df.columns]).sort(
            [c for c in ("call_id", "speaker", "t_start_s", "kind") if c in df.columns])
    return got


def snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name != ".lock"}


def demo(dest: Path, names=("negative_end", "anger_escalation", "steady"), csv: bool = True) -> Path:
    return copy_demo_calls(dest, names, csv)


def unprivileged() -> tuple[str, ...]:
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root needs util-linux setpriv to drop CAP_DAC_OVERRIDE")
    return (setpriv, "--bounding-set", "-dac_override,-dac_read_search")


# -- one call never changes another ---------------------------------------------------------------

def test_mis_scaled_float_wav_is_an_error_and_spoils_nothing(tmp_path):
    clean = demo(tmp_path / "clean", csv=False)
    dirty = demo(tmp_path / "dirty", csv=False)
    x, sr = sf.read(EXAMPLES / "negative_end.flac", dtype="float32")
    sf.write(dirty / "misscaled.wav", x * 32767.0, sr, subtype="FLOAT")  # integer PCM values as floats
    assert cli("score", clean, "--out", tmp_path / "a", "--threads", "1").returncode == 0
    r = cli("score", dirty, "--out", tmp_path / "b", "--threads", "1")
    assert r.returncode == 1
    err = read(tmp_path / "b", "errors")
    assert err["call_id"].to_list() == ["misscaled"] and "x full scale" in err["message"][0]
    a, b = values(tmp_path / "a"), values(tmp_path / "b")
    for t in a:
        assert a[t].equals(b[t], null_equal=True), t


# -- metadata ----------------------------------------------------------------------------------

def test_calls_csv_resaved_as_utf16_changes_nothing(tmp_path, plumbing_onnx):
    calls, out = demo(tmp_path / "calls"), tmp_path / "out"
    assert cli("score", calls, "--out", out, "--model", plumbing_onnx).returncode == 0
    before = {k: v for k, v in snapshot(out).items() if not k.startswith(("runs/", "_state/"))}
    text = (calls / "calls.csv").read_text(encoding="utf-8")
    (calls / "calls.csv").write_bytes(text.encode("utf-16"))  # "Unicode text" from a spreadsheet
    r = cli("score", calls, "--out", out, "--model", plumbing_onnx)
    assert r.returncode == 0 and "0 scored, 3 skipped" in r.stdout, r.stdout + r.stderr
    after = {k: v for k, v in snapshot(out).items() if not k.startswith(("runs/", "_state/"))}
    assert after == before


@pytest.mark.parametrize("content, where", [
    ("call_id,date,queue\nsteady,2026-11-24,sales\nnegative_end,2026-11-25,care,extra\n", "calls.csv:3"),
    ("call_id,date,call_date\nsteady,2026-11-24,2026-11-24\n", "calls.csv:1"),
    ("call_id,queue,queue\nsteady,a,b\n", "calls.csv:1"),
    ("id,date\nsteady,2026-11-24\n", "calls.csv:1"),
    ("call_id,date\nsteady,2026-11-24\nsteady,2026-11-25\n", "calls.csv:3"),
])
def test_malformed_calls_csv_exits_2_with_file_and_line_and_out_unchanged(tmp_path, plumbing_onnx, content, where):
    calls, out = demo(tmp_path / "calls"), tmp_path / "out"
    assert cli("score", calls, "--out", out, "--model", plumbing_onnx).returncode == 0
    before = snapshot(out)
    (calls / "calls.csv").write_text(content)
    r = cli("score", calls, "--out", out, "--model", plumbing_onnx)
    assert r.returncode == 2, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip() and "CUDA" not in x]
    assert len(lines) == 1 and where in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert snapshot(out) == before


def test_bad_dates_are_error_rows_and_the_date_column_stays_a_date(tmp_path, plumbing_onnx):
    calls, out = demo(tmp_path / "calls"), tmp_path / "out"
    (calls / "calls.csv").write_text("call_id,date\nsteady,2026-13-45\nnegative_end,2026-02-30\n"
                                     "anger_escalation,２０２６-１１-２４\n", encoding="utf-8")
    (calls / "extra.flac").write_bytes((EXAMPLES / "negative_end.flac").read_bytes())
    r = cli("score", calls, "--out", out, "--model", plumbing_onnx)
    assert r.returncode == 1
    errors = read(out, "errors").sort("call_id")
    assert errors["call_id"].to_list() == ["anger_escalation", "negative_end", "steady"]
    assert set(errors["error"]) == {"BadMetadata"} and errors["message"].str.contains("calls.csv:").all()
    assert read(out, "calls")["call_id"].unique().to_list() == ["extra"]
    kinds = {r[0]: r[1] for r in duckdb.sql(f"describe select * from read_parquet('{out}/calls/**/*.parquet')").fetchall()}
    assert kinds["date"] == "DATE" and kinds["call_date"] == "DATE"


def test_a_call_keeps_its_partition_when_its_metadata_goes_missing(tmp_path, plumbing_onnx):
    calls, out = demo(tmp_path / "calls"), tmp_path / "out"
    assert cli("score", calls, "--out", out, "--model", plumbing_onnx).returncode == 0
    dates = dict(read(out, "calls").select("call_id", pl.col("date").cast(pl.Utf8)).unique().iter_rows())
    (calls / "calls.csv").unlink()
    assert cli("score", calls, "--out", out, "--model", plumbing_onnx, "--force").returncode == 0
    assert dict(read(out, "calls").select("call_id", pl.col("date").cast(pl.Utf8)).unique().iter_rows()) == dates


# -- the store reconciles ---------------------------------------------------------------------

def test_deleted_partition_is_rescored_not_trusted(tmp_path, plumbing_onnx):
    calls, out = demo(tmp_path / "calls"), tmp_path / "out"
    assert cli("score", calls, "--out", out, "--model", plumbing_onnx).returncode == 0
    full = values(out)
    victim = sorted((out / "timeseries").glob("date=*"))[0]
    shutil.rmtree(victim)
    r = cli("score", calls, "--out", out, "--model", plumbing_onnx)
    assert r.returncode == 0 and "0 scored" not in r.stdout, r.stdout
    got = values(out)
    for t in full:
        assert full[t].equals(got[t], null_equal=True), t


def test_date_change_crash_and_lost_manifest_leave_one_partition(tmp_path, plumbing_onnx):
    calls, out = demo(tmp_path / "calls", names=("negative_end",)), tmp_path / "out"
    (calls / "calls.csv").write_text("call_id,date\nnegative_end,2026-11-20\n")
    assert cli("score", calls, "--out", out, "--model", plumbing_onnx).returncode == 0
    (calls / "calls.csv").write_text("call_id,date\nnegative_end,2026-11-21\n")
    env = dict(os.environ, CUSEMO_CRASH_AT="before_manifest:1")
    p = subprocess.run([sys.executable, "-m", "cusemo_batch", "score", str(calls), "--out", str(out), "--model",
                        str(plumbing_onnx)], env=env, capture_output=True, timeout=300)
    assert p.returncode == -signal.SIGKILL
    (out / "_state" / "manifest.parquet").unlink()
    for _ in range(2):
        assert cli("score", calls, "--out", out, "--model", plumbing_onnx).returncode == 0
        for table in ("timeseries", "calls", "events"):
            assert [p.parent.name for p in (out / table).rglob("negative_end-*.parquet")] == ["date=2026-11-21"]


def test_calls_csv_columns_changing_between_nights_keep_one_schema(tmp_path, plumbing_onnx):
    """Night 1 lists ``queue``, night 2 ``agent_id`` and a call calls.csv does not list: every
    ``calls`` file has one schema, so DuckDB's ``select *`` over the glob works and the metadata
    is queryable from the JSON column."""
    calls, out = demo(tmp_path / "calls", names=("negative_end",), csv=False), tmp_path / "out"
    (calls / "calls.csv").write_text("call_id,date,queue\nnegative_end,2026-11-20,billing\n")
    assert cli("score", calls, "--out", out, "--model", plumbing_onnx).returncode == 0
    copy_demo_calls(calls, ("steady", "recovery"))
    (calls / "calls.csv").write_text("call_id,date,agent_id\nsteady,2026-11-21,A042\n")
    assert cli("score", calls, "--out", out, "--model", plumbing_onnx).returncode == 0
    schemas = {tuple(pl.read_parquet_schema(f).items()) for f in (out / "calls").rglob("*.parquet")}
    assert len(schemas) == 1
    rows = duckdb.sql(
        f"select distinct call_id, date, call_date, metadata, metadata->>'queue' as queue, "
        f"metadata->>'agent_id' as agent from read_parquet('{out}/calls/**/*.parquet', hive_partitioning = true) "
        f"order by call_id").fetchall()
    assert [(r[0], str(r[1]), r[4], r[5]) for r in rows] == [
        ("negative_end", "2026-11-20", "billing", None),  # kept its partition and night-1 metadata
        ("recovery", str(rows[1][1]), None, None), ("steady", "2026-11-21", None, "A042")]
    assert rows[1][3] == "{}" and rows[1][2] is None


def test_a_store_of_schema_3_gets_the_line_columns_as_nulls(tmp_path, plumbing_onnx):
    """Schema 4 added calls.input_level_dbfs / clipped_fraction: rows scored before have no such
    measurement, so the upgrade adds the columns as nulls (not zeros), touches no number, and rows
    scored afterwards carry them."""
    calls, out = demo(tmp_path / "calls", names=("negative_end", "steady")), tmp_path / "out"
    assert cli("score", calls, "--out", out, "--model", plumbing_onnx).returncode == 0
    current = values(out)["calls"]
    assert current["input_level_dbfs"].null_count() == 0 and current["clipped_fraction"].null_count() == 0
    for f in (out / "calls").rglob("*.parquet"):  # what schema 3 wrote
        pl.read_parquet(f).drop("input_level_dbfs", "clipped_fraction").with_columns(
            pl.lit(3, pl.Int32).alias("schema_version")).write_parquet(f)
    (out / "_state" / "schema_version").write_text("3\n")
    r = cli("score", calls, "--out", out, "--model", plumbing_onnx)
    assert r.returncode == 0 and "0 scored, 2 skipped" in r.stdout, r.stdout
    assert "upgraded 2 file(s)" in r.stderr, r.stderr
    after = values(out)["calls"]
    assert after["input_level_dbfs"].null_count() == after.height == after["clipped_fraction"].null_count()
    old = current.drop("input_level_dbfs", "clipped_fraction", "schema_version")
    assert after.drop("input_level_dbfs", "clipped_fraction", "schema_version").equals(old, null_equal=True)
    assert duckdb.sql(f"select count(clipped_fraction), count(*) from read_parquet('{out}/calls/**/*.parquet')"
                      ).fetchall() == [(0, after.height)]
    r = cli("score", calls, "--out", out, "--model", plumbing_onnx, "--force")
    assert r.returncode == 0, r.stderr
    assert values(out)["calls"].equals(current, null_equal=True)  # rescored: the measurement is back


def test_a_store_of_schema_2_is_upgraded_in_place(tmp_path, plumbing_onnx):
    """Files written before schema 3 (calls.csv columns as columns of their own, clashing names
    prefixed ``meta_``) are rewritten once, numbers untouched, then the glob reads as one table."""
    calls, out = demo(tmp_path / "calls", names=("negative_end", "steady"), csv=False), tmp_path / "out"
    (calls / "calls.csv").write_text("call_id,date,queue,speaker\nnegative_end,2026-11-20,billing,Ann\n")
    assert cli("score", calls, "--out", out, "--model", plumbing_onnx).returncode == 0
    current = values(out)["calls"]
    for f in (out / "calls").rglob("*.parquet"):  # what schema 2 wrote: one column per calls.csv column
        df = pl.read_parquet(f).with_columns(pl.lit(2, pl.Int32).alias("schema_version"))
        wide = df["metadata"].str.json_decode(pl.Struct({"queue": pl.Utf8, "speaker": pl.Utf8}))
        df = df.drop("metadata")
        if f.name.startswith("negative_end"):  # steady: scored on an earlier night, without calls.csv
            df = df.with_columns(wide.struct.field("queue"), wide.struct.field("speaker").alias("meta_speaker"))
        df.write_parquet(f)
    (out / "_state" / "schema_version").unlink()
    with pytest.raises(duckdb.Error):  # the failure schema 3 removes
        duckdb.sql(f"select * from read_parquet('{out}/calls/**/*.parquet')").fetchall()
    r = cli("score", calls, "--out", out, "--model", plumbing_onnx)
    assert r.returncode == 0 and "0 scored, 2 skipped" in r.stdout, r.stdout
    assert "upgraded 2 file(s)" in r.stderr, r.stderr
    assert (out / "_state" / "schema_version").read_text().strip() == str(SCHEMA_VERSION)
    after = values(out)["calls"]
    assert after.equals(current, null_equal=True)
    assert set(pl.read_parquet(next((out / "calls").rglob("steady-*.parquet")))["metadata"]) == {"{}"}
    n = duckdb.sql(f"select count(*) from read_parquet('{out}/calls/**/*.parquet') "
                   f"where metadata->>'speaker' = 'Ann'").fetchall()
    assert n == [(current.filter(pl.col("call_id") == "negative_end").height,)]


# -- discovery never hangs ---------------------------------------------------------------------

def test_fifo_and_dev_zero_are_never_opened(tmp_path, plumbing_onnx):
    calls = demo(tmp_path / "calls", names=("negative_end",), csv=False)
    os.mkfifo(calls / "y.wav")
    os.symlink("/dev/zero", calls / "zero.wav")
    sock = socket.socket(socket.AF_UNIX)  # a listening socket: open() would fail, not hang, but never try
    sock.bind(str(calls / "s.flac"))
    sock.listen()
    try:
        r = cli("score", calls, "--out", tmp_path / "out", "--model", plumbing_onnx, timeout=120)
        assert r.returncode == 1, r.stderr
        errors = read(tmp_path / "out", "errors").sort("call_id")
        assert errors["call_id"].to_list() == ["s", "y", "zero"]
        assert errors["error"].to_list() == ["NotARegularFile", "NotARegularFile", "SymlinkOutside"]
        r = cli("score", calls, "--out", tmp_path / "out2", "--model", plumbing_onnx, "--follow-symlinks",
                timeout=120)
    finally:
        sock.close()
    assert r.returncode == 1, r.stderr
    errors = read(tmp_path / "out2", "errors")
    assert set(errors["error"]) == {"NotARegularFile"} and errors.height == 3
    assert read(tmp_path / "out2", "calls")["call_id"].unique().to_list() == ["negative_end"]


def test_unreadable_folder_is_an_error_row(tmp_path, plumbing_onnx):
    calls = demo(tmp_path / "calls", names=("negative_end",), csv=False)
    locked = calls / "site_b"
    locked.mkdir()
    shutil.copy(EXAMPLES / "negative_end.flac", locked / "other.flac")
    locked.chmod(0)
    try:
        r = cli("score", calls, "--out", tmp_path / "out", "--model", plumbing_onnx, wrap=unprivileged())
    finally:
        locked.chmod(0o755)
    assert r.returncode == 1, r.stderr
    errors = read(tmp_path / "out", "errors")
    assert errors["error"].to_list() == ["UnreadableFolder"] and errors["call_id"].to_list() == ["site_b"]


def test_symlink_loop_to_a_parent_is_reported_once(tmp_path, plumbing_onnx):
    calls = demo(tmp_path / "calls", csv=False)
    (calls / "sub").mkdir()
    os.symlink("..", calls / "sub" / "up")
    r = cli("score", calls, "--out", tmp_path / "out", "--model", plumbing_onnx, "--follow-symlinks")
    assert r.returncode == 1
    assert "3 scored, 0 skipped, 1 failed of 4 calls" in r.stdout, r.stdout
    assert read(tmp_path / "out", "errors")["error"].to_list() == ["SymlinkLoop"]


# -- truncated audio, malformed RTTM -------------------------------------------------------------

def test_truncated_wav_and_rttm_names_with_spaces_are_error_rows(tmp_path, plumbing_onnx):
    calls = demo(tmp_path / "calls", names=("negative_end",), csv=False)
    x, sr = sf.read(EXAMPLES / "negative_end.flac", dtype="float32")
    sf.write(calls / "cut.wav", x, sr, subtype="PCM_16")
    data = (calls / "cut.wav").read_bytes()
    (calls / "cut.wav").write_bytes(data[: len(data) // 2])
    sf.write(calls / "spaces.wav", x, sr)
    (calls / "spaces.rttm").write_text("SPEAKER spaces 1 0.0 5.0 <NA> <NA> Agent Smith <NA> <NA>\n"
                                       "SPEAKER spaces 1 5.0 5.0 <NA> <NA> Agent Jones <NA> <NA>\n")
    sf.write(calls / "nan.wav", x, sr)
    (calls / "nan.rttm").write_text("SPEAKER nan 1 0.0 5.0 <NA> <NA> client <NA> <NA>\n"
                                    "SPEAKER nan 1 nan 5.0 <NA> <NA> agent <NA> <NA>\n")
    out = tmp_path / "out"
    assert cli("score", calls, "--out", out, "--model", plumbing_onnx).returncode == 1
    errors = {r["call_id"]: r for r in read(out, "errors").iter_rows(named=True)}
    assert set(errors) == {"cut", "spaces", "nan"}
    assert "truncated" in errors["cut"]["message"]
    assert "spaces.rttm:1" in errors["spaces"]["message"] and "Agent Smith" in errors["spaces"]["message"]
    assert "nan.rttm:2" in errors["nan"]["message"]


# -- disk full ---------------------------------------------------------------------------------

def _can_mount_tmpfs() -> bool:
    if not shutil.which("unshare"):
        return False
    r = subprocess.run(["unshare", "-rm", "sh", "-c", "d=$(mktemp -d) && mount -t tmpfs -o size=64k tmpfs $d"],
                       capture_output=True)
    return r.returncode == 0


def test_full_disk_stops_with_one_line_exit_5_and_recovers(tmp_path, plumbing_onnx):
    if not _can_mount_tmpfs():
        pytest.skip("this machine does not allow a tmpfs in a user namespace (unshare -rm)")
    calls = demo(tmp_path / "calls", names=("negative_end", "anger_escalation", "steady", "recovery"), csv=False)
    out = tmp_path / "small"
    out.mkdir()
    cmd = (f"mount -t tmpfs -o size=96k tmpfs {out} && {sys.executable} -m cusemo_batch score {calls} "
           f"--out {out} --model {plumbing_onnx}; rc=$?; cp -a {out}/. {tmp_path}/copy/; exit $rc")
    (tmp_path / "copy").mkdir()
    r = subprocess.run(["unshare", "-rm", "sh", "-c", cmd], capture_output=True, text=True, timeout=300)
    assert r.returncode == 5, (r.returncode, r.stderr)
    errors = [x for x in r.stderr.splitlines() if x.startswith("error:")]
    assert len(errors) == 1 and str(out) in errors[0] and "No space left on device" in errors[0], r.stderr
    assert "Traceback" not in r.stderr
    for f in (tmp_path / "copy").rglob("*.parquet"):  # whatever was written is whole
        pl.read_parquet(f)
    # the same OUT on a disk with room: the night completes to the rows of a clean run
    big = tmp_path / "copy"
    assert cli("score", calls, "--out", big, "--model", plumbing_onnx).returncode == 0
    assert cli("score", calls, "--out", tmp_path / "clean", "--model", plumbing_onnx).returncode == 0
    a, b = values(big), values(tmp_path / "clean")
    for t in a:
        assert a[t].equals(b[t], null_equal=True), t


def test_score_writes_nothing_outside_out(tmp_path, plumbing_onnx):
    """onnxruntime's device-id files go to a private temp folder, not ~/.cache (the home of the job)."""
    home, tmp = tmp_path / "home", tmp_path / "tmp"
    home.mkdir(), tmp.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "XDG_CACHE_HOME"} | {"HOME": str(home), "TMPDIR": str(tmp)}
    r = subprocess.run([sys.executable, "-m", "cusemo_batch", "score", str(EXAMPLES), "--out", str(tmp_path / "out"),
                        "--model", str(plumbing_onnx)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert not list(home.rglob("*")), list(home.rglob("*"))
    assert not list(tmp.iterdir())  # the private cache is removed at exit
    # a run killed with SIGKILL cannot clean up; the next run removes what it left (and only that)
    other = tmp / f"cusemo-ort-{os.getpid()}-alive"  # a live process's folder stays
    other.mkdir()
    r = subprocess.run([sys.executable, "-m", "cusemo_batch", "score", str(EXAMPLES), "--out", str(tmp_path / "o2"),
                        "--model", str(plumbing_onnx)], capture_output=True, env=env | {"CUSEMO_CRASH_AT": "after_call:1"},
                       timeout=300)
    assert r.returncode == -signal.SIGKILL
    assert len(list(tmp.glob("cusemo-ort-*"))) == 2
    r = subprocess.run([sys.executable, "-m", "cusemo_batch", "score", str(EXAMPLES), "--out", str(tmp_path / "o2"),
                        "--model", str(plumbing_onnx)], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 0, r.stderr
    assert list(tmp.iterdir()) == [other] and not list(home.rglob("*"))
