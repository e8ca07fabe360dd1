"""`cusemo-batch score` end to end on real audio in every layout: real ONNX sessions, real Parquet."""

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import soundfile as sf
from click.testing import CliRunner

from cusemo_batch.cli import main
from cusemo_batch.model import Model
from cusemo_batch.scorer import ScoreOptions, Scorer
from cusemo_batch.silence import TimeMap

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "calls"
ROLES = "SPEAKER_00=agent,SPEAKER_01=client"


@pytest.fixture(scope="module")
def scored(tmp_path_factory, plumbing_onnx):
    out = tmp_path_factory.mktemp("scored") / "out"
    r = CliRunner().invoke(main, ["score", str(EXAMPLES), "--out", str(out), "--model", str(plumbing_onnx),
                                  "--roles", ROLES, "--device", "cpu"])
    assert r.exit_code == 0, r.output
    return out, r.output


def read(out: Path, table: str) -> pl.DataFrame:
    return pl.scan_parquet(str(out / table / "**" / "*.parquet"), hive_partitioning=True).collect()


def test_every_layout_scored_into_hive_partitioned_parquet(scored):
    out, output = scored
    assert "4 scored, 0 skipped, 0 failed" in output
    calls = read(out, "calls")
    got = {(r["call_id"], r["speaker"], r["layout"]) for r in calls.iter_rows(named=True)}
    assert got == {("anger_escalation", "agent", "stereo"), ("anger_escalation", "client", "stereo"),
                   ("recovery", "agent", "rttm"), ("recovery", "client", "rttm"),
                   ("steady", "agent", "per-speaker"), ("steady", "client", "per-speaker"),
                   ("negative_end", "client", "mono")}
    # partitions from calls.csv dates; metadata joined
    assert set(calls["date"].cast(pl.Utf8)) == {"2026-11-24", "2026-11-25"}
    assert calls.filter(pl.col("call_id") == "steady")["metadata"].str.json_path_match("$.queue").to_list() == ["sales"] * 2
    # metadata date, renamed from the partition key, typed DATE
    assert set(calls["call_date"].cast(pl.Utf8)) == {"2026-11-24", "2026-11-25"} and calls["call_date"].dtype == pl.Date
    for col in ("run_id", "model_id", "model_sha256", "audio_sha256", "valence_mean", "arousal_p10",
                "valence_drop", "arousal_spike", "negative_end", "sustained_negative", "recovery"):
        assert col in calls.columns, col
    ts = read(out, "timeseries")
    for col in ("call_id", "speaker", "t_start_s", "t_end_s", "valence", "arousal", "speech_ratio", "run_id",
                "model_sha256"):
        assert col in ts.columns, col
    assert ts["speech_ratio"].min() >= 0 and ts["speech_ratio"].max() <= 1
    runs = read(out, "runs")
    assert runs.height == 1 and runs["scored"][0] == 4 and runs["exit_code"][0] == 0
    assert runs["providers"][0] == "CPUExecutionProvider"


def test_duckdb_reads_the_tables(scored):
    duckdb = pytest.importorskip("duckdb")
    out, _ = scored
    n = duckdb.sql(f"select count(*) from '{out}/calls/**/*.parquet'").fetchall()[0][0]
    assert n == 7
    dates = duckdb.sql(f"select distinct date from read_parquet('{out}/timeseries/**/*.parquet', "
                       "hive_partitioning=true) order by 1").fetchall()
    assert [str(d[0]) for d in dates] == ["2026-11-24", "2026-11-25"]


def test_timestamps_are_in_original_call_time_after_silence_compression(scored):
    out, _ = scored
    info = sf.info(str(EXAMPLES / "negative_end.flac"))
    duration = info.frames / info.samplerate
    calls = read(out, "calls").filter(pl.col("call_id") == "negative_end")
    # the 6 s hold was compressed to 1 s for the model ...
    assert calls["compressed_s"][0] < duration - 4.0
    # ... but the timeseries covers the original call, window by window
    ts = read(out, "timeseries").filter(pl.col("call_id") == "negative_end").sort("t_start_s")
    assert ts.height == int(np.ceil(duration / 0.5))
    assert ts["t_end_s"].max() == pytest.approx(duration, abs=1e-6)
    np.testing.assert_allclose(np.diff(ts["t_start_s"].to_numpy()), 0.5)
    # the hold (no speech) sits where it is in the original file: after the 3rd utterance
    hold = ts.filter(pl.col("speech_ratio") == 0)
    assert hold.height >= 8  # >= 4 s of windows without speech
    # windows whose audio was cut have no model output, the kept second has
    assert ts["valence"].null_count() >= 6


def test_rttm_regions_of_other_speaker_are_silenced(scored):
    out, _ = scored
    ts = read(out, "timeseries").filter(pl.col("call_id") == "recovery")
    agent = ts.filter(pl.col("speaker") == "agent").sort("t_start_s")["speech_ratio"].to_numpy()
    client = ts.filter(pl.col("speaker") == "client").sort("t_start_s")["speech_ratio"].to_numpy()
    both = (agent > 0.5) & (client > 0.5)
    assert both.mean() < 0.05  # turns alternate; the mix is split by the RTTM


def test_library_api_matches_cli(plumbing_onnx, scored):
    out, _ = scored
    scorer = Scorer(plumbing_onnx, device="cpu", options=ScoreOptions(
        discovery=ScoreOptions().discovery.__class__(roles={"SPEAKER_00": "agent", "SPEAKER_01": "client"})))
    res = scorer.score_folder(EXAMPLES)
    assert res.errors.height == 0
    cli_ts = read(out, "timeseries").sort("call_id", "speaker", "t_start_s")
    lib_ts = res.timeseries.sort("call_id", "speaker", "t_start_s")
    np.testing.assert_allclose(lib_ts["valence"].to_numpy(), cli_ts["valence"].to_numpy(), atol=1e-6)


def test_batched_streaming_equals_one_by_one(plumbing_onnx):
    """Batching speakers of different lengths and chunking must not change any frame."""
    model = Model(plumbing_onnx, device="cpu")
    rng = np.random.default_rng(0)
    from cusemo_batch.scorer import SpeakerAudio

    items = [SpeakerAudio(f"s{i}", rng.normal(0, 0.1, n).astype(np.float32), TimeMap.identity(n / 8000),
                          np.ones(n // 160, bool), n / 8000) for i, n in enumerate([8000 * 7 + 123, 4000, 8000 * 40])]
    # the default (3 s chunks, up to 4 rows); 4 s chunks; batches of 2 with 1 s chunks
    for opts in (ScoreOptions(), ScoreOptions(chunk_s=4.0), ScoreOptions(max_batch=2, chunk_s=1.0)):
        batched = Scorer(model, options=opts).infer(items)
        for it, got in zip(items, batched):
            alone = model.infer(it.audio)
            assert got["valence"].shape == alone["valence"].shape
            np.testing.assert_allclose(got["valence"], alone["valence"], atol=1e-5)


def test_cuda_request_without_cuda_exits_2_before_touching_out(plumbing_onnx, tmp_path):
    import onnxruntime as ort

    shutil.copytree(EXAMPLES, tmp_path / "calls", ignore=shutil.ignore_patterns("recovery*", "steady", "anger*"))
    r = subprocess.run([sys.executable, "-m", "cusemo_batch", "score", str(tmp_path / "calls"), "--out",
                        str(tmp_path / "out"), "--model", str(plumbing_onnx), "--device", "cuda"],
                       capture_output=True, text=True, timeout=300)
    if "CUDAExecutionProvider" in ort.get_available_providers() and r.returncode == 0:
        return  # a machine with a working GPU
    assert r.returncode == 2, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "device cuda" in lines[0] and "Traceback" not in r.stderr, r.stderr
    assert "\x1b[" not in r.stderr  # none of onnxruntime's coloured console errors
    assert not (tmp_path / "out").exists()


def test_scoring_does_not_import_torch(plumbing_onnx, tmp_path):
    code = (
        "import sys\n"
        "from cusemo_batch.scorer import Scorer\n"
        f"res = Scorer({str(plumbing_onnx)!r}, device='cpu').score_folder({str(EXAMPLES / 'steady')!r})\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "print(res.calls.height)\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
