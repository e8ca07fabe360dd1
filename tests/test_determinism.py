"""Same audio, same model, same options -> the same stored numbers, whatever ran beside it.

Real runs of the embedded default model (int8: its dynamic LSTM quantization is per batch, the case
that used to move a call's numbers with its batch-mates) into real Parquet stores.
"""

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

from cusemo_batch.nightly import run_nightly
from cusemo_batch.model import Model
from cusemo_batch.scorer import DEFAULT_MODEL, ScoreOptions, Scorer

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "calls"
TARGET = "negative_end"
RUN_COLUMNS = ("run_id", "scored_at", "occurred_at")


def _cli(*args, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cusemo_batch", *map(str, args)], capture_output=True, text=True,
                          env=dict(os.environ, **(env or {})), timeout=600)


@pytest.fixture(scope="module")
def folders(tmp_path_factory) -> tuple[Path, Path]:
    """CALLS with the target call alone, and with seven other calls of varied level and length."""
    alone = tmp_path_factory.mktemp("alone") / "calls"
    alone.mkdir()
    shutil.copy(EXAMPLES / f"{TARGET}.flac", alone)
    crowd = tmp_path_factory.mktemp("crowd") / "calls"
    shutil.copytree(EXAMPLES, crowd, ignore=shutil.ignore_patterns("calls.csv", "LICENCE.md"))
    for i, (name, gain) in enumerate([("anger_escalation", 0.2), ("recovery", 3.0), ("negative_end", 0.05),
                                      ("anger_escalation", 1.7)]):
        x, sr = sf.read(EXAMPLES / f"{name}.flac", dtype="float32")
        sf.write(crowd / f"mate_{i}.flac", np.clip(x[: len(x) * (i + 2) // 6] * gain, -1, 1), sr)
    return alone, crowd


def rows(out: Path, call_id: str = TARGET) -> dict[str, pl.DataFrame]:
    """The stored rows of one call, without the columns that name the run."""
    got = {}
    for table in ("timeseries", "events", "calls"):
        files = sorted((out / table).glob("date=*/*.parquet"))
        df = pl.read_parquet(files, hive_partitioning=True, missing_columns="insert")
        df = df.filter(pl.col("call_id") == call_id).drop([c for c in RUN_COLUMNS if c in df.columns])
        got[table] = df.sort([c for c in ("speaker", "t_start_s", "kind") if c in df.columns])
    return got


def assert_identical(a: dict[str, pl.DataFrame], b: dict[str, pl.DataFrame], what: str) -> None:
    for table in a:
        assert a[table].height > 0 or table == "events", (what, table)
        assert a[table].equals(b[table], null_equal=True), f"{what}: table {table} differs"


@pytest.fixture(scope="module")
def reference(folders, tmp_path_factory) -> dict[str, pl.DataFrame]:
    alone, _ = folders
    out = tmp_path_factory.mktemp("ref") / "out"
    r = _cli("score", alone, "--out", out, "--threads", "1")
    assert r.returncode == 0, r.stderr
    return rows(out)


def test_default_model_rows_are_scored_independently():
    """The shipped model's dynamic int8 LSTM is not batch-invariant, so the scorer runs it row by row."""
    m = Model(DEFAULT_MODEL, device="cpu")
    assert m.quantized == "int8" and not m.batch_invariant


@pytest.mark.parametrize("max_batch", [1, 4, 8])
def test_batch_mates_and_batch_size_do_not_change_a_call(folders, reference, tmp_path, max_batch):
    _, crowd = folders
    scorer = Scorer(Model(DEFAULT_MODEL, device="cpu", threads=1), options=ScoreOptions(max_batch=max_batch))
    summary = run_nightly(crowd, tmp_path / "out", scorer)
    assert summary.scored == 8 and summary.failed == 0
    assert_identical(reference, rows(tmp_path / "out"), f"in a folder of 8, max_batch {max_batch}")


def test_threads_do_not_change_a_call(folders, reference, tmp_path):
    alone, _ = folders
    r = _cli("score", alone, "--out", tmp_path / "out", "--threads", "2")
    assert r.returncode == 0, r.stderr
    assert_identical(reference, rows(tmp_path / "out"), "2 threads")


def test_discovery_order_does_not_change_a_call(folders, reference, tmp_path):
    """Renaming the other calls changes the order (and the batch-mates) the target is scored in."""
    _, crowd = folders
    shuffled = tmp_path / "calls"
    shutil.copytree(crowd, shuffled)
    for p in sorted(shuffled.glob("mate_*.flac")):
        p.rename(p.with_name("a" + p.name))
    r = _cli("score", shuffled, "--out", tmp_path / "out", "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert_identical(reference, rows(tmp_path / "out"), "other discovery order")


def test_sigkill_and_resume_gives_the_same_rows(folders, reference, tmp_path):
    _, crowd = folders
    out = tmp_path / "out"
    r = _cli("score", crowd, "--out", out, "--threads", "1", env={"CUSEMO_CRASH_AT": "after_call:3"})
    assert r.returncode == -signal.SIGKILL, r.stderr
    r = _cli("score", crowd, "--out", out, "--threads", "1")
    assert r.returncode == 0, r.stderr
    assert_identical(reference, rows(out), "after SIGKILL and resume")
    r = _cli("score", crowd, "--out", out, "--threads", "2", "--force")
    assert r.returncode == 0, r.stderr
    assert_identical(reference, rows(out), "after --force")


def _all_rows(out: Path) -> dict[str, pl.DataFrame]:
    got = {}
    for table in ("timeseries", "events", "calls"):
        df = pl.read_parquet(sorted((out / table).glob("date=*/*.parquet")), hive_partitioning=True,
                             missing_columns="insert")
        df = df.drop([c for c in RUN_COLUMNS if c in df.columns])
        got[table] = df.sort([c for c in ("call_id", "speaker", "t_start_s", "kind") if c in df.columns])
    return got


def test_parallel_lanes_store_the_same_numbers_as_one_thread(folders, tmp_path):
    """With N threads the scorer runs calls on N single-threaded sessions at once (Scorer._lanes):
    every call of a crowded folder must store exactly what one thread stores."""
    _, crowd = folders
    one = Scorer(Model(DEFAULT_MODEL, device="cpu", threads=1))
    assert run_nightly(crowd, tmp_path / "one", one).scored == 8 and not one._lane_models
    expected = _all_rows(tmp_path / "one")
    for threads in (2, 3):
        lanes = Scorer(Model(DEFAULT_MODEL, device="cpu", threads=threads))
        assert run_nightly(crowd, tmp_path / f"t{threads}", lanes).scored == 8
        assert len(lanes._lane_models) == threads  # the lanes really ran
        assert_identical(expected, _all_rows(tmp_path / f"t{threads}"), f"{threads} lanes")
