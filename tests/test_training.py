"""Training on real speech (pseudo-calls from RAVDESS): loss goes down, runs resume, CLI works."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from cusemo_batch.cli import main
from cusemo_batch.training.checkpoint import CheckpointError, load_checkpoint
from cusemo_batch.training.config import Config, ConfigError, load_config
from cusemo_batch.training.corpus import read_corpus
from cusemo_batch.training.data import batch_arrays, make_segments, split_groups
from cusemo_batch.training.loop import Pooler, batch_loss, prepare
from cusemo_batch.training.model import CRNN

SMALL = {"conv_channels": [8, 16, 16], "lstm_hidden": 32, "mlp_sizes": [32, 16]}


def test_bootstrapped_corpus_is_valid_and_split_by_speaker(tiny_corpus):
    corpus = read_corpus(tiny_corpus)
    assert len(corpus.calls) == 9
    speakers = {c.context["speaker"] for c in corpus.calls}
    assert speakers == {"ravdess_01", "ravdess_02", "ravdess_03"}
    assert all(15 <= c.duration_s <= 45 for c in corpus.calls)
    assert {c.context["gender"] for c in corpus.calls} == {"M", "F"}
    prep = prepare(tiny_corpus, Config().with_overrides(data={"split": [1 / 3, 1 / 3, 1 / 3]}))
    by_speaker = {}
    for c in prep.calls:
        by_speaker.setdefault(c.group, set()).add(prep.split[c.call_id])
    assert all(len(s) == 1 for s in by_speaker.values())  # no speaker in two splits
    assert sorted(s.pop() for s in by_speaker.values()) == ["dev", "test", "train"]


def test_split_groups_is_deterministic_and_proportional():
    groups = [f"g{i % 20}" for i in range(100)]
    a = split_groups(groups, (0.6, 0.2, 0.2), seed=1)
    assert a == split_groups(groups, (0.6, 0.2, 0.2), seed=1)
    per_group = {g: s for g, s in zip(groups, a)}
    assert sorted(per_group.values()).count("train") == 12
    assert sorted(per_group.values()).count("dev") == 4


def test_two_training_steps_decrease_loss_on_real_audio(tiny_corpus):
    cfg = Config().with_overrides(data={"segment_s": 10}, train={"lr": 1e-3})
    prep = prepare(tiny_corpus, cfg)
    torch.manual_seed(0)
    model = CRNN(prep.cfg.model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    pool = Pooler(1 / 32, 0.5)
    segs = make_segments(prep.calls, prep.indices("train"), prep.cfg)[:5]
    batch = batch_arrays(segs, prep.calls, prep.cfg)
    assert batch["mask"].sum() > 0 and batch["audio"].shape[1] % 4000 == 0
    model.eval()  # no dropout, so the before/after comparison is deterministic
    with torch.no_grad():
        before = float(batch_loss(model, pool, batch, prep.cfg)[0])
    for _ in range(2):
        loss, _ = batch_loss(model, pool, batch, prep.cfg)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(batch_loss(model, pool, batch, prep.cfg)[0])
    assert after < before


def test_aux_heads_and_eq3_in_batch_loss(tiny_corpus):
    cfg = Config().with_overrides(model=SMALL, data={"segment_s": 10, "alpha_target": "intensity"},
                                  loss={"alpha": 0.1, "beta": 0.01})
    prep = prepare(tiny_corpus, cfg)
    assert prep.cfg.model.outputs == ("valence", "arousal", "intensity", "gender")
    model = CRNN(prep.cfg.model).eval()
    segs = make_segments(prep.calls, prep.indices("train"), prep.cfg)[:4]
    batch = batch_arrays(segs, prep.calls, prep.cfg)
    assert np.isfinite(batch["alpha"]).all() and set(batch["beta"]) <= {0.0, 1.0}
    loss, parts = batch_loss(model, Pooler(1 / 32, 0.5), batch, prep.cfg)
    expected = (parts["valence"] + parts["arousal"] + 0.1 * parts["alpha"] + 0.01 * parts["beta"]) / 2.11
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)


def test_cli_train_evaluate_and_resume(tiny_corpus, tmp_path):
    cfg = tmp_path / "tiny.toml"
    cfg.write_text("""
[model]
conv_channels = [8, 16, 16]
lstm_hidden = 32
mlp_sizes = [32, 16]
[data]
segment_s = 20
split = [0.34, 0.33, 0.33]
[train]
epochs = 2
seeds = [7, 8]
lr = 1e-3
""")
    run = tmp_path / "run"
    runner = CliRunner()
    r = runner.invoke(main, ["train", str(tiny_corpus), "--out", str(run), "--config", str(cfg)])
    assert r.exit_code == 0, r.output
    summary = json.loads((run / "summary.json").read_text())
    assert summary["seeds"] == [7, 8]
    assert len(summary["test_valence"]["values"]) == 2
    lines = (run / "seed_7" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(x)["epoch"] for x in lines] == [1, 2]
    model, meta = load_checkpoint(run / "seed_7" / "best.pt")
    assert meta["label_rate_ms"] == 500 and meta["heads"] == ["valence", "arousal"]
    assert set(meta["test_ccc"]) >= {"valence", "arousal"} and len(meta["train_data"]["sha256"]) == 64
    # resume: a finished seed is not retrained
    stamp = (run / "seed_7" / "best.pt").stat().st_mtime_ns
    r = runner.invoke(main, ["train", str(tiny_corpus), "--out", str(run), "--config", str(cfg)])
    assert r.exit_code == 0 and "seed 7: already finished" in r.output
    assert (run / "seed_7" / "best.pt").stat().st_mtime_ns == stamp
    # evaluate the run dir: same test numbers as training reported
    r = runner.invoke(main, ["evaluate", str(run), str(tiny_corpus)])
    assert r.exit_code == 0, r.output
    ev = json.loads((run / "evaluate_test.json").read_text())
    assert ev["test_valence"]["values"] == pytest.approx(summary["test_valence"]["values"], abs=1e-5)


def test_configs_shipped_for_every_paper_table_load():
    from cusemo_batch.training.config import CONFIG_DIR

    names = sorted(p.stem for p in CONFIG_DIR.glob("*.toml") if not p.stem.startswith("grid_"))  # grids: experiments
    for expected in ("default", "quick", "label_rate_200", "segment_50_batch_30", "alpha_0.1", "beta_0.01"):
        assert expected in names
    for name in names:
        load_config(CONFIG_DIR / f"{name}.toml")
    assert load_config("label_rate_200").data.label_rate_ms == 200
    assert load_config("default").train.seeds == (42, 24, 12, 10, 100, 125)


def test_bad_config_and_checkpoint_errors(tmp_path, tiny_corpus):
    bad = tmp_path / "bad.toml"
    bad.write_text("[train]\nepoch = 3\n")
    with pytest.raises(ConfigError, match="unknown key"):
        load_config(bad)
    r = CliRunner().invoke(main, ["train", str(tiny_corpus), "--out", str(tmp_path / "r"), "--config", str(bad)])
    assert r.exit_code == 2 and "unknown key" in r.output and "Traceback" not in r.output
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint"):
        load_checkpoint(junk)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a cusemo-batch checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    r = CliRunner().invoke(main, ["evaluate", str(junk), str(tiny_corpus)])
    assert r.exit_code == 2 and "not a readable torch checkpoint" in r.output
