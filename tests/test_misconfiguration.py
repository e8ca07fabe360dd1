"""Misconfiguration is loud, logs are for operators (real runs of the CLI, real Parquet)."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import soundfile as sf

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "calls"
STAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z (DEBUG|INFO|WARNING|ERROR) ")


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cusemo_batch", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def read(out: Path, table: str) -> pl.DataFrame:
    return pl.read_parquet(sorted((out / table).glob("date=*/*.parquet")), hive_partitioning=True)


def rttm_calls(tmp_path: Path) -> Path:
    calls = tmp_path / "calls"
    calls.mkdir()
    for f in EXAMPLES.glob("recovery.*"):  # mono + RTTM with labels SPEAKER_00 / SPEAKER_01
        shutil.copy(f, calls / f.name)
    shutil.copy(EXAMPLES / "negative_end.flac", calls)
    return calls


def test_unmapped_rttm_labels_are_reported_once_and_recorded(tmp_path, plumbing_onnx):
    calls, out = rttm_calls(tmp_path), tmp_path / "out"
    r = cli("score", calls, "--out", out, "--model", plumbing_onnx, "--roles", "bogus=agent")
    assert r.returncode == 0, r.stderr
    warnings = [x for x in r.stderr.splitlines() if "no --roles entry maps" in x]
    assert len(warnings) == 1 and "SPEAKER_00 (1 call)" in warnings[0] and "SPEAKER_01" in warnings[0]
    assert read(out, "runs")["unmapped_rttm_labels"].to_list() == ["SPEAKER_00:1,SPEAKER_01:1"]
    assert set(read(out, "calls").filter(pl.col("call_id") == "recovery")["speaker"]) == {"SPEAKER_00", "SPEAKER_01"}
    # mapped: no warning, roles as names
    r = cli("score", calls, "--out", tmp_path / "out2", "--model", plumbing_onnx,
            "--roles", "SPEAKER_00=agent,SPEAKER_01=client")
    assert r.returncode == 0 and "no --roles entry maps" not in r.stderr
    assert read(tmp_path / "out2", "runs")["unmapped_rttm_labels"].to_list() == [""]


def test_strict_roles_makes_unmapped_labels_errors(tmp_path, plumbing_onnx):
    calls, out = rttm_calls(tmp_path), tmp_path / "out"
    r = cli("score", calls, "--out", out, "--model", plumbing_onnx, "--roles", "bogus=agent", "--strict-roles")
    assert r.returncode == 1, r.stderr
    errors = read(out, "errors")
    assert errors["call_id"].to_list() == ["recovery"] and errors["error"].to_list() == ["UnmappedRTTMLabel"]
    assert read(out, "calls")["call_id"].unique().to_list() == ["negative_end"]


def test_too_little_speech_is_an_error_row(tmp_path, plumbing_onnx):
    calls = tmp_path / "calls"
    calls.mkdir()
    x, sr = sf.read(EXAMPLES / "negative_end.flac", dtype="float32")
    loud = np.flatnonzero(np.abs(x) > 0.05)[0]
    sf.write(calls / "blip.wav", x[loud: loud + int(0.2 * sr)], sr)  # 0.2 s: a dropped line
    sf.write(calls / "call.wav", x, sr)
    out = tmp_path / "out"
    r = cli("score", calls, "--out", out, "--model", plumbing_onnx)
    assert r.returncode == 1
    errors = read(out, "errors")
    assert errors["call_id"].to_list() == ["blip"] and errors["error"].to_list() == ["TooShortError"]
    assert "less than the minimum of 1 s" in errors["message"][0]
    r = cli("score", calls, "--out", tmp_path / "lenient", "--model", plumbing_onnx, "--min-speech", "0.1")
    assert r.returncode == 0, r.stderr


def test_text_logs_are_timestamped_and_file_names_cannot_forge_lines(tmp_path, plumbing_onnx):
    calls = tmp_path / "calls"
    calls.mkdir()
    shutil.copy(EXAMPLES / "negative_end.flac", calls)
    (calls / "evil\n2026-01-01T00:00:00.000Z ERROR \x1b[31mforged.wav").write_bytes(b"not audio")
    r = cli("score", calls, "--out", tmp_path / "out", "--model", plumbing_onnx, "--verbose")
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    assert lines and all(STAMP.match(x) for x in lines), r.stderr
    assert "\x1b" not in r.stderr and "\\x0a" in r.stderr and "\\x1b" in r.stderr
    assert any("negative_end: scored" in x for x in lines)  # the per-call line of --verbose
    quiet = cli("score", calls, "--out", tmp_path / "out2", "--model", plumbing_onnx)
    assert not any("negative_end: scored" in x for x in quiet.stderr.splitlines())


def test_json_logs_one_object_per_line(tmp_path, plumbing_onnx):
    calls = tmp_path / "calls"
    calls.mkdir()
    shutil.copy(EXAMPLES / "negative_end.flac", calls)
    (calls / "broken.wav").write_bytes(b"not audio")
    out = tmp_path / "out"
    r = cli("score", calls, "--out", out, "--model", plumbing_onnx, "--log-format", "json", "-v")
    assert r.returncode == 1
    records = [json.loads(x) for x in r.stderr.splitlines()]
    assert records and all(list(o) == ["time", "level", "run_id", "call_id", "stage", "message"] for o in records)
    run_id = read(out, "runs")["run_id"][0]
    err = next(o for o in records if o["level"] == "error")
    assert err["call_id"] == "broken" and err["stage"] == "discover" and err["run_id"] == run_id
    assert any(o["call_id"] == "negative_end" and o["level"] == "debug" for o in records)
