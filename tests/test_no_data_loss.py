"""A mistake or a failure never destroys good rows already stored (real runs, real Parquet)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "calls"


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cusemo_batch", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def snapshot(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file() and p.name != ".lock"}


@pytest.fixture
def scored(tmp_path, plumbing_onnx) -> tuple[Path, Path]:
    calls = tmp_path / "calls"
    shutil.copytree(EXAMPLES, calls, ignore=shutil.ignore_patterns("LICENCE.md"))
    out = tmp_path / "out"
    r = cli("score", calls, "--out", out, "--model", plumbing_onnx)
    assert r.returncode == 0, r.stderr
    return calls, out


@pytest.mark.parametrize("flags", [("--speakers", "custmer"), ("--speakers", "client,agnet"),
                                   ("--channels", "agent,agent")])
def test_bad_options_exit_2_and_leave_out_unchanged(scored, plumbing_onnx, flags):
    calls, out = scored
    before = snapshot(out)
    r = cli("score", calls, "--out", out, "--model", plumbing_onnx, *flags)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert snapshot(out) == before


def test_model_without_stream_graph_exits_2_and_leaves_out_unchanged(scored, plumbing_onnx, tmp_path):
    calls, out = scored
    lone = tmp_path / "lone" / "plumbing.onnx"
    lone.parent.mkdir()
    shutil.copy(plumbing_onnx, lone)  # the whole graph without its .stream.onnx
    before = snapshot(out)
    r = cli("score", calls, "--out", out, "--model", lone, "--force")
    assert r.returncode == 2, (r.returncode, r.stderr)
    assert "streaming graph missing" in r.stderr and "Traceback" not in r.stderr
    assert snapshot(out) == before


def read(out: Path, table: str) -> pl.DataFrame:
    return pl.read_parquet(sorted((out / table).glob("date=*/*.parquet")), hive_partitioning=True,
                           missing_columns="insert")


def test_a_failing_call_keeps_its_good_rows_marked_and_recovers(scored, plumbing_onnx):
    calls, out = scored
    kept = {k: v for k, v in snapshot(out).items() if "steady" in k and not k.startswith("calls/")}
    assert len(kept) == 2  # timeseries and events of the call in folder steady/
    client = calls / "steady" / "client.flac"
    good_audio = client.read_bytes()
    client.write_bytes(b"not audio any more")  # a damaged re-upload, then --force
    r = cli("score", calls, "--out", out, "--model", plumbing_onnx, "--force")
    assert r.returncode == 1, r.stderr
    assert "previous rows are kept" in r.stderr
    after = snapshot(out)
    assert {k: after.get(k) for k in kept} == kept  # bit-identical
    c = read(out, "calls").filter(pl.col("call_id") == "steady")
    assert c.height == 2 and c["last_error_at"].is_not_null().all()
    assert c["last_error"].str.contains("decode").all()
    others = read(out, "calls").filter(pl.col("call_id") != "steady")
    assert others["last_error_at"].is_null().all()
    errors = read(out, "errors")
    assert errors["call_id"].to_list() == ["steady"]
    # the same failure again: still kept, one error row
    r = cli("score", calls, "--out", out, "--model", plumbing_onnx)
    assert r.returncode == 1 and "1 failed" in r.stdout, r.stdout
    assert {k: snapshot(out).get(k) for k in kept} == kept
    assert read(out, "errors").height == 1
    # the manifest lost: rebuilt from the tables, good rows still count as the call's
    (out / "_state" / "manifest.parquet").unlink()
    client.write_bytes(good_audio)
    r = cli("score", calls, "--out", out, "--model", plumbing_onnx)
    assert r.returncode == 0, r.stderr
    assert "1 scored, 3 skipped" in r.stdout, r.stdout  # the failed call is retried, the rest skipped
    assert not list((out / "errors").rglob("*.parquet")) or read(out, "errors").height == 0
    c = read(out, "calls").filter(pl.col("call_id") == "steady")
    assert c.height == 2 and c["last_error_at"].is_null().all()


def test_a_call_that_only_ever_failed_has_no_good_rows(tmp_path, plumbing_onnx):
    calls = tmp_path / "calls"
    calls.mkdir()
    shutil.copy(EXAMPLES / "negative_end.flac", calls)
    (calls / "broken.wav").write_bytes(b"RIFF....garbage")
    out = tmp_path / "out"
    r = cli("score", calls, "--out", out, "--model", plumbing_onnx)
    assert r.returncode == 1
    assert read(out, "errors")["call_id"].to_list() == ["broken"]
    assert read(out, "calls")["call_id"].unique().to_list() == ["negative_end"]
    os.remove(calls / "broken.wav")
