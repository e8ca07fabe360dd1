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
from cusemo_batch.training.evaluation import Pooler
from cusemo_batch.training.loop import batch_loss, prepare
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


def test_cli_train_evaluate_and_resume(tiny_corpus, tmp_path, tiny_train_config):
    cfg = tiny_train_config(epochs=2, seeds=(7, 8))
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


def test_segment_jitter_moves_cut_points_and_keeps_the_rest(tiny_corpus):
    cfg = Config().with_overrides(data={"segment_s": 10, "segment_jitter": True, "min_segment_s": 3})
    prep = prepare(tiny_corpus, cfg)
    idx = prep.indices("train")
    fixed = make_segments(prep.calls, idx, prep.cfg)  # no rng: the paper's consecutive windows
    assert all(s.bin0 % 20 == 0 for s in fixed)
    starts = set()
    for seed in range(5):
        segs = make_segments(prep.calls, idx, prep.cfg, np.random.default_rng(seed))
        assert all(6 <= s.bin1 - s.bin0 <= 20 for s in segs)  # 3 s .. 10 s at 0.5 s bins
        for s in segs:  # consecutive pieces of one call never overlap
            assert all(o.bin1 <= s.bin0 or o.bin0 >= s.bin1 for o in segs if o.call == s.call and o is not s)
        starts |= {s.bin0 % 20 for s in segs}
    assert len(starts) > 3  # the cut points really move between epochs


def test_collapse_guard_restarts_a_diverged_run(tiny_corpus, tmp_path):
    from cusemo_batch.training.evaluation import collapsed
    from cusemo_batch.training.loop import train_seed

    assert collapsed({"valence": 0.0, "arousal": 0.0, "valence_pred_sd": 0.0, "arousal_pred_sd": 0.0})
    assert collapsed({"valence": float("nan"), "arousal": 2e-4, "valence_pred_sd": 1.0, "arousal_pred_sd": 1.0})
    assert not collapsed({"valence": 0.0, "arousal": 0.05, "valence_pred_sd": 0.1, "arousal_pred_sd": 0.1})
    torch.set_num_threads(1)
    # lr 1 makes the first epoch blow up (dev CCC ~1e-6): the guard restarts from fresh weights twice,
    # halving the learning rate each time, and says so.
    cfg = Config().with_overrides(model=SMALL, data={"segment_s": 10, "split": [1 / 3, 1 / 3, 1 / 3]},
                                  train={"lr": 1.0, "epochs": 3, "seeds": [0], "collapse_restarts": 2})
    logs: list[str] = []
    result = train_seed(prepare(tiny_corpus, cfg), 0, tmp_path / "run", log=logs.append)
    assert result["collapse_restarts"] == 2
    restarts = [m for m in logs if "restart" in m]
    assert len(restarts) == 2 and "lr 0.5" in restarts[0] and "lr 0.25" in restarts[1]
    lrs = [json.loads(line)["lr"] for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert lrs == [1.0, 0.5, 0.25]
    assert load_checkpoint(tmp_path / "run" / "best.pt")[0] is not None


def test_warmup_scales_the_first_steps(tiny_corpus, tmp_path):
    from cusemo_batch.training.loop import train_seed

    torch.set_num_threads(1)

    def drift(warmup: int) -> float:
        cfg = Config().with_overrides(model=SMALL, data={"segment_s": 10, "split": [1 / 3, 1 / 3, 1 / 3]},
                                      train={"lr": 1e-3, "epochs": 1, "seeds": [0], "warmup_steps": warmup,
                                             "max_batches_per_epoch": 2})
        trained = load_checkpoint(train_seed(prepare(tiny_corpus, cfg), 0, tmp_path / f"w{warmup}",
                                             log=lambda m: None) and tmp_path / f"w{warmup}" / "best.pt")[0]
        torch.manual_seed(0)
        init = CRNN(trained.config)
        with torch.no_grad():
            return max(float((a - b).abs().max()) for a, b in zip(trained.parameters(), init.parameters()))

    full, warm = drift(0), drift(10**6)
    assert full > 1e-4  # two Adam steps at lr 1e-3 move weights by ~2e-3
    assert warm < full * 1e-3  # the same two steps at lr 1e-3 * (1..2)/1e6


def test_lstm_lr_factor_slows_only_the_lstm(tiny_corpus, tmp_path):
    from cusemo_batch.training.loop import train_seed

    torch.set_num_threads(1)

    def drifts(factor: float) -> tuple[float, float]:
        cfg = Config().with_overrides(model=SMALL, data={"segment_s": 10, "split": [1 / 3, 1 / 3, 1 / 3]},
                                      train={"lr": 1e-3, "epochs": 1, "seeds": [0], "lstm_lr_factor": factor,
                                             "max_batches_per_epoch": 2})
        run = tmp_path / f"f{factor}"
        train_seed(prepare(tiny_corpus, cfg), 0, run, log=lambda m: None)
        trained = load_checkpoint(run / "best.pt")[0]
        torch.manual_seed(0)
        init = CRNN(trained.config)
        with torch.no_grad():
            def d(a, b):
                return max(float((x - y).abs().max()) for x, y in zip(a.parameters(), b.parameters()))
            return d(trained.lstm, init.lstm), d(trained.cnn, init.cnn)

    lstm_full, cnn_full = drifts(1.0)
    lstm_slow, cnn_slow = drifts(1e-4)
    assert lstm_full > 1e-4 and lstm_slow < lstm_full * 1e-2  # Adam steps scale with the lr
    assert cnn_slow > 0.5 * cnn_full  # the rest of the network trains as before


def test_lstm_lr_factor_is_validated():
    with pytest.raises(ConfigError, match="lstm_lr_factor"):
        Config().with_overrides(train={"lstm_lr_factor": 0.0}).resolved()


def test_augmented_calls_are_normalised_as_whole_tracks(tiny_corpus):
    from cusemo_batch.level import TARGET_DBFS, active_level_db
    from cusemo_batch.training.data import augment_calls

    cfg = Config().with_overrides(model=SMALL, data={"segment_s": 10, "normalisation": "speech_rms"},
                                  augment={"enabled": True, "p_codec": 1.0, "codecs": ["gsm"]})
    prep = prepare(tiny_corpus, cfg)
    assert all(c.raw is not None for c in prep.calls)
    # whole calls (dev/test, what the scorer feeds) sit at the target level
    assert active_level_db(prep.calls[0].audio, 8000) == pytest.approx(TARGET_DBFS, abs=1e-3)
    idx = prep.indices("train")
    lines = augment_calls(prep.calls, idx, prep.cfg, np.random.default_rng(0))
    again = augment_calls(prep.calls, idx, prep.cfg, np.random.default_rng(0))
    assert sorted(lines) == idx and all(np.array_equal(lines[i], again[i]) for i in idx)  # seeded
    for i in idx:  # a whole augmented call is normalised as one track, like a scored one
        assert not np.array_equal(lines[i], prep.calls[i].audio)
        assert active_level_db(lines[i], 8000) == pytest.approx(TARGET_DBFS, abs=1e-3)
    segs = make_segments(prep.calls, idx, prep.cfg)[:4]
    a = batch_arrays(segs, prep.calls, prep.cfg, np.random.default_rng(0), lines)
    plain = batch_arrays(segs, prep.calls, prep.cfg)  # evaluation: the clean normalised calls
    for j, (s, n) in enumerate(zip(segs, a["lengths"])):
        a0 = s.bin0 * 4000
        assert n > 0 and np.all(a["audio"][j, n:] == 0)
        np.testing.assert_array_equal(a["audio"][j, :n], lines[s.call][a0:a0 + n])  # a cut, not re-normalised
        np.testing.assert_array_equal(plain["audio"][j, :n], prep.calls[s.call].audio[a0:a0 + n])
    assert augment_calls(prep.calls, idx, Config().with_overrides(model=SMALL), np.random.default_rng(0)) == {}


def test_speed_perturbed_batches_stretch_audio_and_labels_together(tiny_corpus):
    from cusemo_batch.training.augment import speed_perturb
    from cusemo_batch.training.data import stretch_labels

    base = {"model": SMALL, "data": {"segment_s": 10, "normalisation": "speech_rms"}}
    prep = prepare(tiny_corpus, Config().with_overrides(**base))
    segs = make_segments(prep.calls, prep.indices("train"), prep.cfg)[:4]
    plain = batch_arrays(segs, prep.calls, prep.cfg, np.random.default_rng(0))
    # speed 1 (or augmentation off): the same batch as without speed perturbation
    for speeds in ([1.0], [0.9, 1.1]):
        cfg = Config().with_overrides(**base, augment={"enabled": True, "speeds": speeds})
        same = batch_arrays(segs, prep.calls, cfg) if speeds != [1.0] else \
            batch_arrays(segs, prep.calls, cfg, np.random.default_rng(0))
        for key in ("audio", "valence", "mask", "lengths"):
            np.testing.assert_array_equal(same[key], plain[key])
    fast = Config().with_overrides(**base, augment={"enabled": True, "speeds": [1.25]})
    a = batch_arrays(segs, prep.calls, fast, np.random.default_rng(0))
    for j, s in enumerate(segs):
        k = int(a["mask"][j].sum())
        assert k == (s.bin1 - s.bin0) * 4 // 5  # 1.25x faster: 4/5 of the bins
        a0 = s.bin0 * 4000
        expect = speed_perturb(prep.calls[s.call].audio[a0:a0 + 4000 * (s.bin1 - s.bin0) + 4000], 1.25)
        n = min(a["lengths"][j], len(expect)) - 200  # away from the filter's edge at the cut
        np.testing.assert_allclose(a["audio"][j, :n], expect[:n], atol=1e-5)
        assert a["lengths"][j] >= k * 4000  # every labelled bin has its audio
        # output bin i spans source bins [1.25 i, 1.25 (i + 1)): the gold at its centre
        np.testing.assert_allclose(a["arousal"][j, :k], stretch_labels(prep.calls[s.call].arousal, s.bin0, k, 1.25))
        np.testing.assert_allclose(a["arousal"][j, 3], np.interp(s.bin0 + 4.375 - 0.5, np.arange(len(prep.calls[s.call].arousal)), prep.calls[s.call].arousal), rtol=1e-6)
    slow = Config().with_overrides(**base, augment={"enabled": True, "speeds": [0.8]})
    b = batch_arrays(segs, prep.calls, slow, np.random.default_rng(0))
    assert [int(m.sum()) for m in b["mask"]] == [(s.bin1 - s.bin0) * 5 // 4 for s in segs]  # longer rows
    assert b["audio"].shape[1] > plain["audio"].shape[1]


def test_stretch_labels_matches_hand_values():
    from cusemo_batch.training.data import speed_bins, stretch_labels

    gold = np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0], np.float32)
    # factor 2: output bins span source [0, 2), [2, 4), [4, 6) -> centres 0.5, 2.5, 4.5
    np.testing.assert_allclose(stretch_labels(gold, 0, 3, 2.0), [0.5, 2.5, 4.5])
    # factor 0.5, from bin 2: centres 2.25, 2.75, 3.25, 3.75
    np.testing.assert_allclose(stretch_labels(gold, 2, 4, 0.5), [1.75, 2.25, 2.75, 3.25])
    assert (speed_bins(100, 1.0), speed_bins(100, 1.1), speed_bins(100, 0.9), speed_bins(99, 1.1)) == (100, 90, 111, 90)


def test_batches_group_segments_by_length_for_batch_norm():
    from cusemo_batch.training.data import Segment
    from cusemo_batch.training.loop import _batches

    segs = [Segment(i, 0, 100) for i in range(12)] + [Segment(20 + i, 0, 10 + i) for i in range(4)]
    rng = np.random.default_rng(0)
    batches = _batches(segs, 4, rng, by_length=True)
    assert sorted(int(i) for b in batches for i in b) == list(range(16))
    for b in batches:  # full windows together, the short tails together
        assert len({segs[i].bin1 == 100 for i in b}) == 1
    plain = _batches(segs, 4, np.random.default_rng(0), by_length=False)
    assert sorted(int(i) for b in plain for i in b) == list(range(16))


def test_augment_and_loss_sections_are_read_and_validated(tmp_path):
    cfg = load_config("ravdess_default")
    assert cfg.augment.enabled and cfg.data.normalisation == "speech_rms" and cfg.model.conv_norm == "batch"
    assert cfg.model.lstm_init == "orthogonal" and cfg.train.lr == 1e-4  # v5
    assert cfg.model.frontend == "logmel" and cfg.model.hop == 250 and cfg.train.epochs == 45  # v10: 30, v17: 45
    assert cfg.augment.noise_colours == ("white", "pink") and cfg.train.patience == 8  # v14
    assert cfg.model.spec_freq_masks == 0 and cfg.augment.snr_db == (15.0, 35.0)  # v15
    assert cfg.train.ema_decay == 0.99 and cfg.train.plateau_patience == 4  # v21
    assert cfg.loss.speaker_adversary == 0.3 and cfg.loss.speaker_adversary_mode == "confusion"  # v28
    v21 = load_config("ravdess_v21")  # the recipe v28 replaced stays loadable, without the adversary
    assert v21.loss.speaker_adversary == 0 and v21.train.ema_decay == 0.99
    assert {k: v for k, v in v21.to_dict().items() if k not in ("name", "loss")} == \
        {k: v for k, v in cfg.to_dict().items() if k not in ("name", "loss")}
    v17 = load_config("ravdess_v17")  # the recipe v21 replaced stays loadable, without the average
    assert (v17.train.ema_decay, v17.train.plateau_patience, v17.train.epochs) == (0.0, 2, 45)
    v14 = load_config("ravdess_v14")  # the recipe v15 replaced stays loadable with its masking
    assert (v14.model.spec_freq_masks, v14.model.spec_freq_width, v14.model.spec_freq_fill) == (2, 6, "mean")
    assert cfg.loss.mse_weight == 0.1 and cfg.train.seeds == (42, 24, 12, 10, 100, 125)
    assert not load_config("default").augment.enabled  # the paper's protocol stays plain
    bad = tmp_path / "bad.toml"
    for text, msg in (("[augment]\np_noise = 2\n", "probability"), ("[augment]\nsnr = 3\n", "unknown key"),
                      ("[data]\nnormalisation = 'peak'\n", "normalisation"),
                      ("[train]\nplateau_factor = 1.5\n", "plateau_factor"), ("[loss]\nmse_weight = -1\n", "mse_weight"),
                      ("[train]\nema_decay = 1.0\n", "ema_decay"),
                      ("[data]\nnormalisation = 'speech_rms'\ngain_db = 6\n", "level_dbfs"),
                      ("[model]\nsample_rate = 16000\n[augment]\nenabled = true\n", "gsm")):
        bad.write_text(text)
        with pytest.raises(ConfigError, match=msg):
            load_config(bad)


def test_parallel_seeds_train_the_same_models(tiny_corpus, tmp_path, tiny_train_config):
    """--jobs 2 (two one-thread processes) gives each seed exactly what --jobs 1 with one thread gives."""
    cfg = tiny_train_config(epochs=1, seeds=(3, 4))
    text = cfg.read_text().replace("[model]", "[model]\nconv_norm = \"batch\"").replace(
        "[data]", "[data]\nnormalisation = \"speech_rms\"") + "threads = 2\nplateau_factor = 0.5\n[loss]\nmse_weight = 0.1\n[augment]\nenabled = true\n"
    cfg.write_text(text)
    runner = CliRunner()
    r = runner.invoke(main, ["train", str(tiny_corpus), "--out", str(tmp_path / "par"), "--config", str(cfg), "--jobs", "2"])
    assert r.exit_code == 0, r.output
    assert "2 processes (1 thread(s) each)" in r.output
    r = runner.invoke(main, ["train", str(tiny_corpus), "--out", str(tmp_path / "seq"), "--config", str(cfg), "--threads", "1"])
    assert r.exit_code == 0, r.output
    for seed in (3, 4):
        par = json.loads((tmp_path / "par" / f"seed_{seed}" / "result.json").read_text())
        seq = json.loads((tmp_path / "seq" / f"seed_{seed}" / "result.json").read_text())
        assert par["dev"]["valence"] == seq["dev"]["valence"] and par["test"]["arousal"] == seq["test"]["arousal"]
    assert json.loads((tmp_path / "par" / "summary.json").read_text())["seeds"] == [3, 4]


def test_ema_warms_up_and_the_checkpoint_holds_the_average(tiny_corpus, tmp_path):
    """Weight EMA: rate min(decay, (1+n)/(10+n)) per update (hand-computed), buffers averaged too;
    dev evaluation and best.pt see the average, not the last step."""
    from cusemo_batch.training.loop import _ema, train_seed

    torch.manual_seed(0)
    model = CRNN(Config().with_overrides(model=SMALL).model)
    ema = _ema(model, 0.97)
    p0 = [p.detach().clone() for p in model.parameters()]
    expected = None
    for k in range(1, 4):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
        ema.update_parameters(model)
        n = k - 1  # updates before this one
        d = min(0.97, (1 + n) / (10 + n))
        expected = float(k) if expected is None else expected * d + k * (1 - d)
    got = float((next(ema.module.parameters()).detach() - p0[0]).mean())
    assert abs(got - expected) < 1e-5, (got, expected)
    assert _ema(model, 0.0) is None

    torch.set_num_threads(1)
    cfg = Config().with_overrides(model=SMALL, data={"segment_s": 10, "split": [1 / 3, 1 / 3, 1 / 3]},
                                  train={"lr": 1e-3, "epochs": 1, "seeds": [0], "ema_decay": 0.5,
                                         "max_batches_per_epoch": 3})
    train_seed(prepare(tiny_corpus, cfg), 0, tmp_path / "ema", log=lambda m: None)
    averaged = load_checkpoint(tmp_path / "ema" / "best.pt")[0]
    plain = cfg.with_overrides(train={"ema_decay": 0.0})
    train_seed(prepare(tiny_corpus, plain), 0, tmp_path / "plain", log=lambda m: None)
    last = load_checkpoint(tmp_path / "plain" / "best.pt")[0]
    diff = max(float((a - b).detach().abs().max()) for a, b in zip(averaged.parameters(), last.parameters()))
    assert diff > 1e-5  # the same three steps, stored as their average instead of the last weights


def test_refit_replays_dev_choices_on_train_plus_dev(tiny_corpus, tmp_path, tiny_train_config):
    """``train --refit-from``: each seed retrains on train + dev for its dev-chosen epochs at the
    rates it had there; test stays held out; the shipped seed is the source's; numbers do not
    depend on --jobs; misuse is a one-line error."""
    cfg = tiny_train_config(epochs=5, seeds=(5, 6))
    cfg.write_text(cfg.read_text().replace("[model]", "[model]\nconv_norm = \"batch\"\nfrontend = \"logmel\"\n"
                                           "n_fft = 256\nfrontend_stride = 50\nn_mels = 40\npool_sizes = [1, 5, 1]")
                   .replace("[data]", "[data]\nnormalisation = \"speech_rms\"").replace("segment_s = 20", "segment_s = 5")
                   .replace("lr = 1e-3", "lr = 3e-3") + "plateau_factor = 0.5\nplateau_patience = 1\n[loss]\nmse_weight = 0.1\n")
    runner = CliRunner()
    src = tmp_path / "src"
    r = runner.invoke(main, ["train", str(tiny_corpus), "--out", str(src), "--config", str(cfg), "--threads", "1"])
    assert r.exit_code == 0, r.output
    source_split = json.loads((src / "split.json").read_text())
    source_summary = json.loads((src / "summary.json").read_text())
    dev = {c for c, s in source_split.items() if s == "dev"}
    assert dev

    par, seq = tmp_path / "refit_par", tmp_path / "refit_seq"
    r = runner.invoke(main, ["train", str(tiny_corpus), "--out", str(par), "--refit-from", str(src), "--jobs", "2"])
    assert r.exit_code == 0, r.output
    assert "epochs as dev chose" in r.output
    r = runner.invoke(main, ["train", str(tiny_corpus), "--out", str(seq), "--refit-from", str(src), "--threads", "1"])
    assert r.exit_code == 0, r.output
    split = json.loads((seq / "split.json").read_text())
    assert {c for c, s in split.items() if s == "test"} == {c for c, s in source_split.items() if s == "test"}
    assert all(split[c] == "train" for c in dev) and "dev" not in split.values()
    summary = json.loads((seq / "summary.json").read_text())
    assert summary["best_seed"] == source_summary["best_seed"] and summary["refit_from"]["source"] == str(src)
    assert "dev_valence" not in summary and len(summary["test_arousal"]["values"]) == 2
    for seed in (5, 6):
        result = json.loads((src / f"seed_{seed}" / "result.json").read_text())
        source_lrs = [json.loads(x)["lr"] for x in (src / f"seed_{seed}" / "metrics.jsonl").read_text().splitlines()]
        lines = [json.loads(x) for x in (seq / f"seed_{seed}" / "metrics.jsonl").read_text().splitlines()]
        kept = result["best_epoch"] or result["epochs_run"]  # all epochs when every dev epoch collapsed
        assert [x["lr"] for x in lines] == source_lrs[:kept]
        assert all("dev" not in x for x in lines)
        refit = json.loads((seq / f"seed_{seed}" / "result.json").read_text())
        assert refit["dev"] == {} and refit["best_epoch"] == kept
        assert refit["test"]["arousal"] != result["test"]["arousal"]  # more data, other weights
        assert json.loads((par / f"seed_{seed}" / "result.json").read_text())["test"] == refit["test"]
        _, meta = load_checkpoint(seq / f"seed_{seed}" / "best.pt")
        assert meta["refit_from"]["source"] == str(src) and meta["dev_ccc"] == {}
        assert meta["epoch"] == kept
    from cusemo_batch.export.onnx import export_checkpoint
    from cusemo_batch.model import Model

    export_checkpoint(seq / "seed_5" / "best.pt", tmp_path / "refit.onnx", check=False)
    shown = Model(tmp_path / "refit.onnx", device="cpu").metadata
    n_test = sum(1 for s in split.values() if s == "test")
    assert shown["refit_from"]["best_seed"] == source_summary["best_seed"]
    assert shown["train_data"]["description"].endswith(f"{len(split) - n_test}/0/{n_test} calls by auto")

    bad = [(["--config", str(cfg)], "replays its run's own config"),
           (["--seeds", str(11 - source_summary["best_seed"])], "must be among the refit's seeds")]
    for extra, message in bad:
        r = runner.invoke(main, ["train", str(tiny_corpus), "--out", str(tmp_path / "bad"), "--refit-from", str(src), *extra])
        assert r.exit_code != 0 and message in r.output, r.output
    r = runner.invoke(main, ["train", str(tiny_corpus), "--out", str(tmp_path / "bad2"), "--refit-from", str(seq)])
    assert r.exit_code != 0 and "is itself a refit" in r.output, r.output
