"""The commercial path, end to end through the CLI: a call center's own annotated calls ->
agreement and selection (the paper's ICC rule) -> training on the selected calls only -> int8
export calibrated on its own audio -> the nightly job scoring with that model.

The corpus is bootstrapped from real RAVDESS speech with two simulated Darma annotators; every
step runs for real (torch training, ONNX export, onnxruntime, Parquet)."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
from click.testing import CliRunner

from cusemo_batch.cli import main
from cusemo_batch.model import Model


def _ok(result) -> str:
    assert result.exit_code == 0, result.output
    return result.output


def test_own_annotations_select_train_export_score(tiny_corpus: Path, tmp_path: Path, tiny_train_config):
    runner = CliRunner()
    _ok(runner.invoke(main, ["corpus", "check", str(tiny_corpus)]))
    _ok(runner.invoke(main, ["prepare", "agreement", str(tiny_corpus), "--out", str(tmp_path / "agr"), "--no-plots"]))
    # A stricter ICC threshold than the paper's 0.7, chosen so that every speaker keeps its best call
    # (a split by speaker needs all three) while weaker calls drop out.
    icc = (pl.read_parquet(tmp_path / "agr" / "agreement_calls.parquet")
           .filter(pl.col("dimension") == "valence").select("call_id", "icc_3_1"))
    speaker = pl.read_csv(tiny_corpus / "context.csv").select("call_id", "speaker")
    best = icc.join(speaker, on="call_id").group_by("speaker").agg(pl.col("icc_3_1").max())["icc_3_1"].min()
    threshold = best - 1e-6
    _ok(runner.invoke(main, ["prepare", "select", str(tiny_corpus), "--out", str(tmp_path / "sel"),
                             "--min-icc", f"{threshold:.9f}", "--dimension", "valence"]))
    selected = pl.read_csv(tmp_path / "sel" / "selected.csv")["call_id"].to_list()
    assert 3 <= len(selected) < 9

    cfg = tiny_train_config(epochs=1, seeds=(5,))
    run = tmp_path / "run"
    out = _ok(runner.invoke(main, ["train", str(tiny_corpus), "--out", str(run), "--config", str(cfg),
                                   "--calls", str(tmp_path / "sel" / "selected.csv")]))
    assert f"{len(selected)} call(s)" in out
    assert sorted(json.loads((run / "split.json").read_text())) == sorted(selected)  # only the selection
    assert json.loads((run / "config.json").read_text())["selected_calls"] == len(selected)

    model = tmp_path / "models" / "acme.onnx"
    out = _ok(runner.invoke(main, ["export", str(run / "seed_5" / "best.pt"), "-o", str(model), "--quantize", "int8",
                                   "--calibration-audio", str(tiny_corpus / "audio")]))
    assert "parity ok" in out and "row-scaled" in out

    calls = tmp_path / "calls"
    calls.mkdir()
    for cid in selected[:2]:  # one diarized client per file: the mono layout
        (calls / f"{cid}.flac").symlink_to(tiny_corpus / "audio" / f"{cid}.flac")
    _ok(runner.invoke(main, ["score", str(calls), "--out", str(tmp_path / "out"), "--model", str(model),
                             "--follow-symlinks"]))
    m = Model(model, device="cpu")
    table = pl.read_parquet(tmp_path / "out" / "calls" / "**" / "*.parquet", hive_partitioning=True)
    assert sorted(table["call_id"].to_list()) == sorted(selected[:2])
    assert set(table["model_sha256"]) == {m.sha256} and set(table["model_id"]) == {f"{m.name}@{m.version}"}
    ts = pl.read_parquet(tmp_path / "out" / "timeseries" / "**" / "*.parquet", hive_partitioning=True)
    assert ts.height > 0 and ts["valence"].drop_nulls().len() > 0


def test_train_call_list_must_name_corpus_calls(tiny_corpus: Path, tmp_path: Path, tiny_train_config):
    ids = tmp_path / "ids.txt"
    ids.write_text("# calls to keep\nnot_a_call\n")
    cfg = tiny_train_config(epochs=1, seeds=(5,))
    r = CliRunner().invoke(main, ["train", str(tiny_corpus), "--out", str(tmp_path / "run"), "--config", str(cfg),
                                  "--calls", str(ids)])
    assert r.exit_code == 2
    assert "1 listed call(s) not in the corpus" in r.stderr and "not_a_call" in r.stderr
    assert not (tmp_path / "run" / "split.json").exists()
