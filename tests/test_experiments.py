"""Experiments: grid expansion, resumable grid runs, Wilcoxon vs scipy, report formatting, Optuna."""

import json
import os

import numpy as np
import pytest
import scipy.stats
from click.testing import CliRunner

from cusemo_batch.cli import main
from cusemo_batch.training import loop
from cusemo_batch.training.experiments import (
    GridError,
    format_markdown,
    grid_report,
    load_grid,
    make_report,
    run_grid,
    tune,
    wilcoxon_test,
)

# Small model, one short epoch, one thread (tests may share the CPU with a training job: two
# processes each asking for all cores slow torch down by orders of magnitude).
TINY_GRID = """
name = "tiny"
seeds = [1, 2]
[base.model]
conv_channels = [8, 16, 16]
lstm_hidden = 32
mlp_sizes = [32, 16]
[base.data]
segment_s = 10
split = [0.34, 0.33, 0.33]
[base.train]
epochs = 1
max_batches_per_epoch = 1
batch_size = 2
threads = 1
lr = 1e-3
[axes]
label_rate_ms = [500, 250]
"""


def _write(path, text):
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------------- expansion
def test_shipped_grids_expand_to_the_paper_rows():
    lr = load_grid("label_rate")
    assert [c.cfg.data.label_rate_ms for c in lr.cells] == [500, 200, 100, 40]
    assert lr.seeds == (42, 24, 12, 10, 100, 125) and lr.baseline == 0
    assert all(c.cfg.train.seeds == lr.seeds for c in lr.cells)
    sb = load_grid("grid_segment_batch")
    assert [(c.cfg.data.segment_s, c.cfg.train.batch_size) for c in sb.cells] == \
        [(300, 5), (150, 10), (100, 15), (75, 20), (50, 30)]
    ab = load_grid("alpha_beta")
    assert len(ab.cells) == 9 and ab.cells[0].name == "alpha=0,beta=0"
    assert (ab.cell("alpha=0.1,beta=0").cfg.loss.alpha, ab.cell("alpha=0,beta=1").cfg.loss.beta) == (0.1, 1.0)
    assert ab.reference["valence"][3] == 0.699
    # quick profile: applied where no axis sets the key; explicit options win over it
    q = load_grid("segment_batch", quick=True, overrides={"data.max_calls": 12})
    assert [c.cfg.data.segment_s for c in q.cells] == [300, 150, 100, 75, 50]  # the axis wins
    assert q.seeds == (42, 24) and all(c.cfg.train.epochs == 4 and c.cfg.data.max_calls == 12 for c in q.cells)
    q = load_grid("label_rate", quick=True, seeds=[7])
    assert q.seeds == (7,) and all(c.cfg.data.segment_s == 50 for c in q.cells)


def test_grid_spellings_product_and_errors(tmp_path):
    g = load_grid(_write(tmp_path / "g.toml", """
        seeds = [3]
        baseline = "label_rate_ms=200,alpha=0.5,beta=0"
        [base]
        config = "quick"
        [base.data]
        alpha_target = "intensity"
        [axes]
        data.label_rate_ms = [500, 200]
        [[axes.w]]
        alpha = 0.0
        beta = 0.0
        [[axes.w]]
        alpha = 0.5
        beta = 0.0
        """))
    assert g.name == "g" and len(g.cells) == 4
    assert [c.name for c in g.cells] == ["label_rate_ms=500,alpha=0,beta=0", "label_rate_ms=500,alpha=0.5,beta=0",
                                         "label_rate_ms=200,alpha=0,beta=0", "label_rate_ms=200,alpha=0.5,beta=0"]
    assert g.baseline == 3 and g.cells[3].cfg.data.alpha_target == "intensity"
    assert g.cells[1].cfg.train.lr == 1e-3  # from the base config "quick"
    pairs = load_grid(_write(tmp_path / "p.toml", '[axes]\n"segment_s,train.batch_size" = [[50, 5], [25, 10]]\n'))
    assert [(c.cfg.data.segment_s, c.cfg.train.batch_size) for c in pairs.cells] == [(50, 5), (25, 10)]
    assert pairs.seeds == (42, 24, 12, 10, 100, 125)  # the base config's (paper) seeds
    bad = {
        "unknown config key 'label_rate'": "[axes]\nlabel_rate = [1]\n",
        "2 items": '[axes]\n"segment_s,batch_size" = [[50, 5, 1]]\n',
        "multiple of the label bin": "[axes]\nsegment_s = [50, 0.3]\n",
        "cannot be an axis": "[axes]\nseeds = [[1], [2]]\n",
        "4 rows": "[axes]\nalpha = [0, 1, 2, 3]\n[reference]\nvalence = [1, 2]\n",
        "baseline": "baseline = 9\n[axes]\nalpha = [0, 1]\n",
        "is empty": "[axes]\n",
        "not a grid file": "[data]\nsegment_s = 50\n",
    }
    for msg, text in bad.items():
        with pytest.raises(GridError, match=msg):
            load_grid(_write(tmp_path / "bad.toml", text))
    with pytest.raises(GridError, match="the grid varies it"):
        load_grid("segment_batch", overrides={"segment_s": 50})
    with pytest.raises(GridError, match="not found"):
        load_grid("no_such_grid")


# ------------------------------------------------------------------------------------ wilcoxon
def test_wilcoxon_matches_scipy_on_known_numbers():
    a = [0.699, 0.71, 0.64, 0.69, 0.72, 0.735]  # six seeds, two rows
    b = [0.667, 0.62, 0.70, 0.61, 0.67, 0.69]  # d = .032 .09 -.06 .08 .05 .045: W- = rank 4
    w = wilcoxon_test(a, b)
    ref = scipy.stats.wilcoxon(a, b)
    assert w["p"] == pytest.approx(ref.pvalue) and w["statistic"] == pytest.approx(ref.statistic)
    assert (w["n"], w["method"], w["statistic"]) == (6, "exact", 4.0)
    assert w["p"] == pytest.approx(14 / 64)  # 7 of 64 sign patterns have W <= 4, times two tails
    assert w["min_p"] == pytest.approx(2 / 64)
    assert wilcoxon_test([1, 2, 3, 4, 5, 6], [0] * 6)["p"] == pytest.approx(0.03125)  # all one sign
    two = wilcoxon_test([0.3, 0.4], [0.1, 0.2])
    assert two["p"] == pytest.approx(0.5) and two["min_p"] == 0.5 and "smallest possible p is 0.5" in two["note"]
    assert wilcoxon_test([0.5, 0.4], [0.5, 0.4])["p"] is None  # nothing to test
    assert wilcoxon_test([0.1, np.nan, 0.3, 0.2], [0.0, 0.1, 0.1, 0.3])["n"] == 3  # NaN pairs dropped
    with pytest.raises(ValueError):
        wilcoxon_test([1, 2], [1])


# -------------------------------------------------------------------------------------- report
def _fake_run(root, values, per_call=None, seeds=(42, 24), reference=True):
    """A grid run directory with known results (no training)."""
    gdir = root / "fake"
    cells = [{"name": f"alpha={a:g}", "values": {"loss.alpha": a},
              "config": {"train": {"epochs": 4, "lr": 0.003, "batch_size": 5},
                         "data": {"segment_s": 50, "max_calls": 30, "label_rate_ms": 500}}} for a in values]
    rec = {"name": "fake", "title": "Fake table", "axes": [{"name": "alpha", "keys": ["loss.alpha"],
                                                            "values": [[a] for a in values]}],
           "cells": cells, "baseline": 0, "seeds": list(seeds), "notes": "a note",
           "reference": {"source": "the paper", "valence": [0.6] * len(values),
                         "arousal": [0.5] * len(values)} if reference else None,
           "settings": {"quick": True}, "corpus": "/c",
           "context": {"text": "Corpus bootstrapped from categorical (acted) speech", "bootstrapped": True}}
    (gdir).mkdir(parents=True)
    (gdir / "grid.json").write_text(json.dumps(rec))
    for c, (vals_v, vals_a) in zip(cells, values.values()):
        for s, v, a in zip(seeds, vals_v, vals_a):
            d = gdir / c["name"] / f"seed_{s}"
            d.mkdir(parents=True)
            d.joinpath("result.json").write_text(json.dumps(
                {"seed": s, "test": {"valence": v, "arousal": a}, "dev": {"valence": v, "arousal": a}}))
        if per_call:
            pc = per_call[c["name"]]
            (gdir / c["name"] / "test_per_call.json").write_text(json.dumps(
                {"calls": list(pc), "seeds": {str(s): {"valence": pc, "arousal": pc} for s in seeds}}))
    return gdir


def test_report_formatting_best_marks_and_pairing(tmp_path):
    vals = {0.0: ([0.50, 0.60], [0.30, 0.20]), 0.1: ([0.70, 0.64], [0.10, 0.25]), 1.0: ([0.2, 0.1], [0.4, 0.36])}
    per_call = {"alpha=0": {f"c{i}": 0.1 * i for i in range(7)},
                "alpha=0.1": {f"c{i}": 0.1 * i + 0.05 + 0.01 * i for i in range(7)},
                "alpha=1": {f"c{i}": 0.1 * i for i in range(7)}}
    _fake_run(tmp_path, vals, per_call)
    rep = make_report(tmp_path, tmp_path / "out")
    g = rep["grids"][0]
    row = {r["cell"]: r for r in g["rows"]}
    assert row["alpha=0.1"]["test_valence"]["mean"] == pytest.approx(0.67)
    assert row["alpha=0.1"]["test_valence"]["sd"] == pytest.approx(np.std([0.70, 0.64], ddof=1))
    assert g["best"] == {"valence": "alpha=0.1", "arousal": "alpha=1"}
    w = row["alpha=1"]["wilcoxon"]["arousal"]
    assert w["p"] == pytest.approx(scipy.stats.wilcoxon([0.4, 0.36], [0.3, 0.2]).pvalue) and w["n"] == 2
    md = (tmp_path / "out" / "report.md").read_text()
    assert "| alpha | valence | arousal | p valence | p arousal | seeds | paper valence | paper arousal |" in md
    assert "| 0 (baseline) | 0.550 (0.071) | 0.250 (0.071) | baseline | baseline | 2/2 | 0.600 | 0.500 |" in md
    assert "| 0.1 | **0.670 (0.042)** |" in md and "| 1 | 0.150 (0.071) | **0.380 (0.028)** | 0.500 | 0.500 |" in md
    assert "paired by **seed**" in md and "smallest two-sided p the exact test can give is 0.5" in md
    assert "Protocol: 4 epochs, lr 0.003, 500 ms labels, 50 s segments, batch 5, a subset of 30 calls" in md
    assert "acted" in md and "quick profile" in md and "a note" in md and "![fake](fake.png)" in md
    assert (tmp_path / "out" / "fake.png").stat().st_size > 5000
    assert json.loads((tmp_path / "out" / "report.json").read_text())["grids"][0]["best"]["valence"] == "alpha=0.1"
    by_call = grid_report(tmp_path / "fake", pairing="calls")
    wc = {r["cell"]: r["wilcoxon"]["valence"] for r in by_call["rows"]}
    x = [per_call["alpha=0.1"][f"c{i}"] for i in range(7)]
    y = [per_call["alpha=0"][f"c{i}"] for i in range(7)]
    assert wc["alpha=0.1"]["p"] == pytest.approx(scipy.stats.wilcoxon(x, y).pvalue) and wc["alpha=0.1"]["n"] == 7
    assert wc["alpha=1"]["p"] is None  # identical per-call values
    assert "paired by **test call**" in format_markdown({"grids": [by_call]})
    res = CliRunner().invoke(main, ["experiment", "report", str(tmp_path), "--no-plots", "--pairing", "calls"])
    assert res.exit_code == 0, res.output
    assert "paired by test call" in res.output and "acted" in res.output


def test_report_marks_unfinished_cells(tmp_path):
    _fake_run(tmp_path, {0.0: ([0.5, 0.6], [0.3, 0.2]), 0.1: ([0.7], [0.1])}, reference=False)
    g = grid_report(tmp_path / "fake")
    assert g["rows"][1]["wilcoxon"]["valence"]["n"] == 1  # paired on the common seed only
    md = format_markdown({"grids": [g]})
    assert "1/2" in md and "Unfinished cells (fewer seeds than planned): alpha=0.1." in md
    assert "paper valence" not in md
    assert CliRunner().invoke(main, ["experiment", "report", str(tmp_path / "nothing")]).exit_code == 2


# ----------------------------------------------------------------------------- run and resume
def test_grid_run_resumes_after_an_interrupted_cell(tmp_path, tiny_corpus, monkeypatch):
    grid_file = _write(tmp_path / "tiny.toml", TINY_GRID)
    out = tmp_path / "exp"
    real = loop.train_seed
    calls = []

    def interrupted(prep, seed, out_dir, *a, **k):
        calls.append((out_dir.parent.name, seed))
        if len(calls) == 4:  # second cell, second seed
            raise KeyboardInterrupt
        return real(prep, seed, out_dir, *a, **k)

    monkeypatch.setattr(loop, "train_seed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_grid(load_grid(grid_file), tiny_corpus, out, log=lambda s: None)
    first = out / "tiny" / "label_rate_ms=500"
    assert (first / "summary.json").is_file() and (first / "test_per_call.json").is_file()
    assert not (out / "tiny" / "label_rate_ms=250" / "summary.json").exists()
    stamp = (first / "seed_1" / "result.json").stat().st_mtime_ns

    calls.clear()
    monkeypatch.setattr(loop, "train_seed", lambda prep, seed, out_dir, *a, **k:
                        calls.append((out_dir.parent.name, seed)) or real(prep, seed, out_dir, *a, **k))
    res = CliRunner().invoke(main, ["experiment", "run", str(grid_file), str(tiny_corpus), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert calls == [("label_rate_ms=250", 2)]  # only the unfinished seed of the interrupted cell
    assert "label_rate_ms=500: already finished, skipped" in res.output
    assert (first / "seed_1" / "result.json").stat().st_mtime_ns == stamp
    pc = json.loads((out / "tiny" / "label_rate_ms=250" / "test_per_call.json").read_text())
    assert set(pc["seeds"]) == {"1", "2"} and pc["calls"]
    rep = make_report(out, plots=False, pairing="calls")
    row = rep["grids"][0]["rows"][1]
    assert row["n_seeds"] == 2 and row["wilcoxon"]["valence"]["n"] == len(pc["calls"])
    # a changed grid in the same directory is refused
    res = CliRunner().invoke(main, ["experiment", "run", str(grid_file), str(tiny_corpus), "--out", str(out),
                                    "--epochs", "2"])
    assert res.exit_code == 2 and "use a new --out" in res.output


def test_cli_run_checks_context_columns_and_dry_run(tmp_path, tiny_corpus):
    r = CliRunner().invoke(main, ["experiment", "run", "alpha_beta", str(tiny_corpus), "--out", str(tmp_path / "x"),
                                  "--quick", "--dry-run"])
    assert r.exit_code == 2 and "--alpha-target intensity" in r.output
    r = CliRunner().invoke(main, ["experiment", "run", "alpha_beta", "label_rate", str(tiny_corpus), "--out",
                                  str(tmp_path / "x"), "--quick", "--dry-run", "--alpha-target", "intensity"])
    assert r.exit_code == 0, r.output
    assert "9 cells x 2 seeds [42, 24]" in r.output and "alpha=0.1,beta=0" in r.output
    assert "label_rate_ms=40" in r.output and not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------- optuna
def test_optuna_study_of_three_trials_writes_sqlite(tmp_path, tiny_corpus):
    import optuna

    from cusemo_batch.training.config import Config

    base = Config().with_overrides(
        model={"conv_channels": [8, 16, 16], "lstm_hidden": 32, "mlp_sizes": [32, 16]},
        data={"segment_s": 10, "split": [0.34, 0.33, 0.33], "alpha_target": "intensity"},
        train={"epochs": 1, "max_batches_per_epoch": 1, "batch_size": 2, "threads": 1, "seeds": [12]})
    res = tune(tiny_corpus, tmp_path / "tune", base, params=["alpha"], trials=3, seed=12, log=lambda s: None)
    db = tmp_path / "tune" / "study.db"
    assert db.is_file() and res["n_complete"] == 3
    study = optuna.load_study(study_name=res["study"], storage=f"sqlite:///{db}")
    trials = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(trials) == 3 and all(0 <= t.params["alpha"] <= 1 for t in trials)
    assert res["best"]["params"] == study.best_params and "test_valence" in res["best"]
    assert len(list((tmp_path / "tune" / "trials").glob("alpha=*/summary.json"))) == 3
    assert res["context"]["bootstrapped"] and "intensity" in res["context"]["text"]
    again = tune(tiny_corpus, tmp_path / "tune", base, params=["alpha"], trials=3, seed=12, log=lambda s: None)
    assert again["n_complete"] == 3  # resumed: nothing left to run
    killed = study.ask()  # a trial left RUNNING by an interrupted process
    killed.suggest_float("alpha", 0.0, 1.0)
    again = tune(tiny_corpus, tmp_path / "tune", base, params=["alpha"], trials=4, seed=12, log=lambda s: None)
    assert again["n_complete"] == 4 and again["trials"][-1]["params"] == killed.params  # re-queued, then run
    with pytest.raises(ValueError, match="other settings"):
        tune(tiny_corpus, tmp_path / "tune", base, params=["alpha"], trials=3, seed=12, high=0.5, log=lambda s: None)
    assert os.path.getsize(db) > 0


def test_cli_tune_prints_best_value_and_its_test_ccc(tmp_path, tiny_corpus):
    small = ["--set", "model.conv_channels=[8, 16, 16]", "--set", "model.lstm_hidden=32",
             "--set", "model.mlp_sizes=[32, 16]", "--set", "data.segment_s=10",
             "--set", "data.split=[0.34, 0.33, 0.33]", "--set", "train.max_batches_per_epoch=1"]
    args = ["experiment", "tune", str(tiny_corpus), "--param", "alpha", "--trials", "1", "--seed", "12",
            "--epochs", "1", "--threads", "1", "--out", str(tmp_path / "t"), *small]
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and "--alpha-target intensity" in r.output  # no empathy in a bootstrapped corpus
    r = CliRunner().invoke(main, args + ["--alpha-target", "intensity"])
    assert r.exit_code == 0, r.output
    assert "best: alpha = " in r.output and "test CCC valence" in r.output and "paper: " in r.output
    assert "intensity" in r.output and (tmp_path / "t" / "study.db").is_file()
    summary = json.loads((tmp_path / "t" / "tune.json").read_text())
    assert summary["settings"]["base_config"]["train"]["epochs"] == 1 and summary["n_complete"] == 1
