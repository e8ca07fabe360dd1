"""Nightly-job guarantees with real subprocesses: bad-input zoo, SIGKILL + rerun, lock, incremental."""

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import soundfile as sf

from cusemo_batch.store import Store
from demo_calls import assert_same_tables, copy_demo_calls, speechlike, table, write_bad_inputs

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "calls"


def cli(*args, env=None, wrap=()) -> subprocess.CompletedProcess:
    e = dict(os.environ, **(env or {}))
    return subprocess.run([*wrap, sys.executable, "-m", "cusemo_batch", *map(str, args)],
                          capture_output=True, text=True, env=e, timeout=300)


def good_calls(dest: Path, names=("negative_end", "steady")) -> Path:
    return copy_demo_calls(dest, names)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory, ravdess_dir):
    """Good calls + one of every kind of bad input the nightly job must survive."""
    root = good_calls(tmp_path_factory.mktemp("zoo") / "calls")
    write_bad_inputs(root)
    wav = root / "truncated.wav"
    sf.write(wav, speechlike(2.0), 8000)
    wav.write_bytes(wav.read_bytes()[:30])
    sf.write(root / "rttm_garbage.wav", speechlike(4.0), 8000)
    (root / "rttm_garbage.rttm").write_text("SPEAKER x 1 0.0 oops <NA> <NA> client <NA> <NA>\n")
    sf.write(root / "rttm_agent_only.wav", speechlike(4.0), 8000)
    (root / "rttm_agent_only.rttm").write_text("SPEAKER x 1 0.0 2.0 <NA> <NA> agent <NA> <NA>\n")
    locked = root / "no_permission.wav"
    sf.write(locked, speechlike(2.0), 8000)
    locked.chmod(0)
    outside = tmp_path_factory.mktemp("outside")
    sf.write(outside / "elsewhere.wav", speechlike(2.0), 8000)
    os.symlink(outside / "elsewhere.wav", root / "link_outside.wav")
    # good but demanding: 48 kHz source, resampled to the model rate
    src = sorted((ravdess_dir / "audio").glob("03-01-05-02-*-01.flac"))[:3]
    x = np.concatenate([np.pad(sf.read(f, dtype="float32")[0], (0, 4000)) for f in src])
    from cusemo_batch.audio import resample

    sf.write(root / "hi_rate_48k.wav", resample(x, 8000, 48000), 48000)
    return root


EXPECTED_ERRORS = {
    "empty": "UnreadableAudio", "truncated": "UnreadableAudio", "notaudio": "UnreadableAudio",
    "nan_samples": "AudioError", "too_short": "TooShortError", "all_silence": "NoSpeechError",
    "three_channels": "ChannelMismatch", "rttm_past_end": "RTTMError", "rttm_garbage": "BadRTTM",
    "rttm_agent_only": "NoWantedSpeaker", "twin": "DuplicateCallId", "no_permission": "PermissionError",
    "link_outside": "SymlinkOutside",
}


def _unprivileged() -> tuple[str, ...]:
    """As root, file permissions do not apply; drop CAP_DAC_OVERRIDE so chmod 000 bites."""
    if os.geteuid() != 0:
        return ()
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.fail("running as root needs util-linux setpriv to test unreadable files")
    return (setpriv, "--bounding-set", "-dac_override,-dac_read_search")


def test_bad_input_zoo_one_error_row_each_and_good_calls_scored(zoo, plumbing_onnx, tmp_path):
    out = tmp_path / "out"
    r = cli("score", zoo, "--out", out, "--model", plumbing_onnx, "--speakers", "client", wrap=_unprivileged())
    assert r.returncode == 1, r.stdout + r.stderr
    assert "Traceback" not in r.stderr + r.stdout
    errors = table(out, "errors")
    got = dict(zip(errors["call_id"], errors["error"]))
    assert got == EXPECTED_ERRORS, errors.select("call_id", "error", "message")
    assert errors.height == len(EXPECTED_ERRORS)  # exactly one row each
    assert all(isinstance(m, str) and "\n" not in m and m for m in errors["message"])
    calls = table(out, "calls")
    assert set(calls["call_id"]) == {"negative_end", "steady", "hi_rate_48k"}
    for cid in EXPECTED_ERRORS:  # one log line per bad call
        assert sum(f"ERROR   {cid}: " in line for line in r.stderr.splitlines()) == 1, cid
    # a second run changes nothing: good calls skipped, each bad call still exactly one row
    r2 = cli("score", zoo, "--out", out, "--model", plumbing_onnx, "--speakers", "client", wrap=_unprivileged())
    assert r2.returncode == 1
    assert "0 scored, 3 skipped" in r2.stdout
    assert table(out, "errors").height == len(EXPECTED_ERRORS)


def test_exit_code_2_for_usage_errors(tmp_path, plumbing_onnx):
    r = cli("score", tmp_path / "missing", "--out", tmp_path / "o", "--model", plumbing_onnx)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    calls = good_calls(tmp_path / "calls", ("negative_end",))
    r = cli("score", calls, "--out", tmp_path / "o", "--model", tmp_path / "nope.onnx")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = cli("score", calls, "--out", blocker / "out", "--model", plumbing_onnx)
    assert r.returncode == 2 and "not writable" in r.stderr, r.stderr


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory, plumbing_onnx):
    root = good_calls(tmp_path_factory.mktemp("calls3") / "calls", ("negative_end", "steady", "anger_escalation"))
    out = tmp_path_factory.mktemp("clean") / "out"
    r = cli("score", root, "--out", out, "--model", plumbing_onnx)
    assert r.returncode == 0, r.stderr
    return root, out


@pytest.mark.parametrize("point", ["discovered", "before_rename:2", "between_tables:2", "before_manifest:1",
                                   "after_call:2", "after_manifest:1"])
def test_sigkill_then_rerun_equals_clean_run(clean_run, plumbing_onnx, tmp_path, point):
    root, clean = clean_run
    out = tmp_path / "out"
    r = cli("score", root, "--out", out, "--model", plumbing_onnx, env={"CUSEMO_CRASH_AT": point})
    assert r.returncode == -signal.SIGKILL, (point, r.returncode, r.stderr)
    # whatever is there is readable: no reader ever sees a half-written file
    for f in out.rglob("*.parquet"):
        pl.read_parquet(f)
    r = cli("score", root, "--out", out, "--model", plumbing_onnx)
    assert r.returncode == 0, r.stderr
    assert not list(out.rglob(".cusemo-tmp-*")), "orphaned temp files left"
    assert_same_tables(out, clean)


def test_lock_refuses_second_run_and_stale_lock_is_ignored(clean_run, plumbing_onnx, tmp_path):
    root, _ = clean_run
    out = tmp_path / "out"
    with Store(out):
        r = cli("score", root, "--out", out, "--model", plumbing_onnx)
    assert r.returncode == 3, r.stderr
    assert "locked by another cusemo-batch run" in r.stderr and "Traceback" not in r.stderr
    # a run killed while holding the lock: the OS released it, the next run goes through
    p = subprocess.Popen([sys.executable, "-m", "cusemo_batch", "score", str(root), "--out", str(out),
                          "--model", str(plumbing_onnx)], env=dict(os.environ, CUSEMO_CRASH_AT="discovered:1"))
    assert p.wait(timeout=120) == -signal.SIGKILL
    assert (out / ".lock").exists()
    r = cli("score", root, "--out", out, "--model", plumbing_onnx)
    assert r.returncode == 0, r.stderr


def test_incremental_skip_force_and_changed_file(clean_run, plumbing_onnx, tmp_path):
    src, _ = clean_run
    root = tmp_path / "calls"
    shutil.copytree(src, root)
    out = tmp_path / "out"
    assert cli("score", root, "--out", out, "--model", plumbing_onnx).returncode == 0
    before = {p: p.read_bytes() for p in out.rglob("*.parquet") if "runs" not in p.parts and "_state" not in p.parts}
    r = cli("score", root, "--out", out, "--model", plumbing_onnx)
    assert r.returncode == 0 and "0 scored, 3 skipped" in r.stdout, r.stdout
    after = {p: p.read_bytes() for p in out.rglob("*.parquet") if "runs" not in p.parts and "_state" not in p.parts}
    assert before == after  # untouched, byte for byte
    # one changed file: only that call is rescored
    x, sr = sf.read(root / "negative_end.flac", dtype="float32")
    sf.write(root / "negative_end.flac", x * 0.5, sr)
    r = cli("score", root, "--out", out, "--model", plumbing_onnx)
    assert "1 scored, 2 skipped" in r.stdout, r.stdout
    # --force rescores all with identical values (only run metadata differs)
    snapshot = tmp_path / "snapshot"
    shutil.copytree(out, snapshot)
    r = cli("score", root, "--out", out, "--model", plumbing_onnx, "--force")
    assert "3 scored, 0 skipped" in r.stdout, r.stdout
    assert_same_tables(out, snapshot)
    # the manifest can be rebuilt from the tables
    (out / "_state" / "manifest.parquet").unlink()
    r = cli("score", root, "--out", out, "--model", plumbing_onnx)
    assert "0 scored, 3 skipped" in r.stdout, r.stdout
    assert len(list((out / "runs").rglob("*.parquet"))) == 5


def test_call_ids_cannot_escape_out(plumbing_onnx, tmp_path):
    root = tmp_path / "calls"
    root.mkdir()
    x = sf.read(EXAMPLES / "negative_end.flac", dtype="float32")[0]
    sf.write(root / "ev il;$(x)..flac", x, 8000)
    (root / "calls.csv").write_text("call_id,date\n\"ev il;$(x).\",../../../../tmp/escape\n")
    out = tmp_path / "out"
    r = cli("score", root, "--out", out, "--model", plumbing_onnx)
    assert r.returncode == 1, r.stderr  # the date is not a calendar date: that call's error row
    assert table(out, "errors")["error"].to_list() == ["BadMetadata"]
    written = [p for p in tmp_path.rglob("*.parquet")]
    assert written and all(out in p.parents for p in written)
    (root / "calls.csv").write_text("call_id,date\n\"ev il;$(x).\",\n")  # no date: scored, still inside OUT
    r = cli("score", root, "--out", out, "--model", plumbing_onnx)
    assert r.returncode == 0, r.stderr
    assert all(out in p.parents for p in tmp_path.rglob("*.parquet"))
