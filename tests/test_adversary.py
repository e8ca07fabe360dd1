"""Speaker-adversarial training: the reversal, the pooling, the head's place beside the network."""

import json

import numpy as np
import pytest
import torch

from cusemo_batch.training.adversary import (SpeakerAdversary, masked_time_mean, reverse_gradient,
                                             segment_speakers, speaker_ids)
from cusemo_batch.training.checkpoint import load_checkpoint
from cusemo_batch.training.config import Config, ConfigError
from cusemo_batch.training.data import batch_arrays, make_segments
from cusemo_batch.training.evaluation import Pooler
from cusemo_batch.training.loop import _SeedModel, batch_loss, prepare, train_seed
from cusemo_batch.training.model import CRNN

SMALL = {"conv_channels": [8, 16, 16], "lstm_hidden": 32, "mlp_sizes": [32, 16]}
# two of the tiny corpus's three speakers train (the adversary needs at least two), one is dev
TWO_TRAIN = {"segment_s": 10, "split": [2 / 3, 1 / 3, 0.0]}


def test_reverse_gradient_is_identity_forward_and_flips_backward():
    x = torch.tensor([1.0, -2.0, 3.0], requires_grad=True)
    c = torch.tensor([0.5, 2.0, -1.0])
    y = reverse_gradient(x, 0.3)
    assert torch.equal(y, x)
    (y * c).sum().backward()
    assert torch.allclose(x.grad, torch.tensor([-0.15, -0.6, 0.3]))


def test_masked_time_mean_skips_padding():
    seq = torch.arange(2 * 4 * 3, dtype=torch.float32).reshape(2, 4, 3)
    got = masked_time_mean(seq, torch.tensor([2, 4]))
    want = np.stack([seq[0, :2].numpy().mean(0), seq[1].numpy().mean(0)])
    np.testing.assert_allclose(got.numpy(), want)


def test_speaker_ids_number_training_speakers_in_sorted_order():
    groups = ["b", "a", "c", "b", "a"]
    ids = speaker_ids(groups, [0, 1, 3, 4])  # "c" is not a training call
    assert ids == {0: 1, 1: 0, 3: 1, 4: 0}
    assert segment_speakers([4, 0, 0], ids).tolist() == [0, 1, 1]
    assert segment_speakers([4], ids).dtype == np.int64


def test_adversary_needs_two_speakers_and_a_non_negative_weight():
    with pytest.raises(ValueError, match="at least 2"):
        SpeakerAdversary(32, 1, 0.1)
    with pytest.raises(ConfigError, match="speaker_adversary"):
        Config().with_overrides(loss={"speaker_adversary": -0.1})


def _batch(tiny_corpus, weight: float):
    cfg = Config().with_overrides(model=SMALL, data=TWO_TRAIN, loss={"speaker_adversary": weight})
    prep = prepare(tiny_corpus, cfg)
    train = prep.indices("train")
    ids = speaker_ids([c.group for c in prep.calls], train)
    segs = make_segments(prep.calls, train, prep.cfg)[:4]
    batch = batch_arrays(segs, prep.calls, prep.cfg)
    batch["speaker"] = segment_speakers([s.call for s in segs], ids)
    return prep, batch, len(set(ids.values()))


def test_speaker_loss_reaches_the_network_reversed_and_scaled(tiny_corpus):
    prep, batch, n = _batch(tiny_corpus, 0.25)
    assert n == 2 and set(batch["speaker"].tolist()) <= {0, 1}
    torch.manual_seed(0)
    model = CRNN(prep.cfg.model).eval()
    head = SpeakerAdversary(prep.cfg.model.lstm_hidden, n, 0.25, "reverse")
    audio, lengths = torch.from_numpy(batch["audio"]), torch.from_numpy(batch["lengths"])
    frames = lengths // prep.cfg.model.hop
    target = torch.from_numpy(batch["speaker"])

    def grads(weight: float) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        model.zero_grad(), head.zero_grad()
        head.weight = weight
        _, seq = model(audio, lengths, return_hidden=True)
        head.loss(seq, frames, target).backward()
        return ([p.grad.clone() for p in model.parameters() if p.grad is not None],
                [p.grad.clone() for p in head.parameters()])

    net_rev, head_rev = grads(0.25)
    net_plain, head_plain = grads(-1.0)  # reversing by -1 is the plain gradient
    assert net_rev and len(net_rev) == len(net_plain)
    for a, b in zip(net_rev, net_plain):
        torch.testing.assert_close(a, -0.25 * b)
    for a, b in zip(head_rev, head_plain):  # the head itself learns at the full rate
        torch.testing.assert_close(a, b)
    assert any(float(g.abs().max()) > 0 for g in net_rev)


def test_batch_loss_adds_the_speaker_term(tiny_corpus):
    prep, batch, n = _batch(tiny_corpus, 0.1)
    torch.manual_seed(0)
    model = CRNN(prep.cfg.model).eval()
    head = SpeakerAdversary(prep.cfg.model.lstm_hidden, n, 0.1, "reverse")
    pool = Pooler(1 / 32, 0.5)
    loss, parts = batch_loss(model, pool, batch, prep.cfg, head)
    plain, plain_parts = batch_loss(model, pool, batch, prep.cfg)
    assert parts["speaker"] > 0 and "speaker" not in plain_parts
    assert float(loss.detach()) == pytest.approx(float(plain.detach()) + parts["speaker"], rel=1e-6)


def test_a_run_with_the_adversary_stores_a_plain_network(tiny_corpus, tmp_path):
    torch.set_num_threads(1)
    cfg = Config().with_overrides(model=SMALL, data=TWO_TRAIN, loss={"speaker_adversary": 0.1},
                                  train={"lr": 1e-3, "epochs": 1, "seeds": [0], "max_batches_per_epoch": 2})
    prep = prepare(tiny_corpus, cfg)
    result = train_seed(prep, 0, tmp_path / "adv", log=lambda m: None)
    assert result["epochs_run"] == 1
    model, meta = load_checkpoint(tmp_path / "adv" / "best.pt")
    assert set(model.state_dict()) == set(CRNN(prep.cfg.model).state_dict())  # no head in the checkpoint
    assert meta["config"]["loss"]["speaker_adversary"] == 0.1
    record = json.loads((tmp_path / "adv" / "metrics.jsonl").read_text().splitlines()[0])
    assert 0 < record["speaker_loss"] < record["train_loss"]  # the head's cross-entropy is logged
    # the head changed the training: same seed without it ends elsewhere
    plain = cfg.with_overrides(loss={"speaker_adversary": 0.0})
    train_seed(prepare(tiny_corpus, plain), 0, tmp_path / "plain", log=lambda m: None)
    other = load_checkpoint(tmp_path / "plain" / "best.pt")[0]
    assert any(not torch.equal(a, b) for a, b in zip(model.state_dict().values(), other.state_dict().values()))


def test_the_head_learns_at_its_own_rate_and_follows_warm_up(tiny_corpus):
    cfg = Config().with_overrides(model=SMALL, data=TWO_TRAIN, train={"lr": 1e-4, "warmup_steps": 4},
                                  loss={"speaker_adversary": 0.3, "speaker_adversary_lr_factor": 50.0})
    prep = prepare(tiny_corpus, cfg)
    sm = _SeedModel(prep.cfg, speakers=speaker_ids([c.group for c in prep.calls], prep.indices("train")))
    head_group = sm.opt.param_groups[-1]
    assert {id(p) for p in head_group["params"]} == {id(p) for p in sm.adversary.parameters()}
    assert head_group["lr"] == pytest.approx(5e-3)
    sm.train_step(sum(p.sum() for p in sm.model.parameters()) * 0 + sum(p.sum() for p in sm.adversary.parameters()))
    assert head_group["lr"] == pytest.approx(5e-3 / 4)  # step 1 of 4 warm-up steps
    assert sm.opt.param_groups[0]["lr"] == pytest.approx(1e-4 / 4)
    with pytest.raises(ConfigError, match="speaker_adversary_lr_factor"):
        Config().with_overrides(loss={"speaker_adversary_lr_factor": 0.0})


def test_confusion_is_zero_for_a_uniform_head_and_matches_hand_values():
    from cusemo_batch.training.adversary import confusion

    assert float(confusion(torch.zeros(3, 5))) == pytest.approx(0.0, abs=1e-7)
    two = torch.log(torch.tensor([[0.8, 0.2]]))
    # -(ln 0.8 + ln 0.2) / 2 - ln 2
    assert float(confusion(two)) == pytest.approx((0.22314355 + 1.60943791) / 2 - 0.69314718, abs=1e-6)


def test_confusion_mode_trains_the_head_on_stopped_features_and_the_network_on_confusion(tiny_corpus):
    prep, batch, n = _batch(tiny_corpus, 0.3)
    torch.manual_seed(0)
    model = CRNN(prep.cfg.model).eval()
    head = SpeakerAdversary(prep.cfg.model.lstm_hidden, n, 0.3, mode="confusion")
    audio, lengths = torch.from_numpy(batch["audio"]), torch.from_numpy(batch["lengths"])
    _, seq = model(audio, lengths, return_hidden=True)
    head_ce, push = head.parts(seq, lengths // prep.cfg.model.hop, torch.from_numpy(batch["speaker"]))
    assert float(push.detach()) >= 0
    head_ce.backward(retain_graph=True)  # the head's loss never reaches the network
    assert all(p.grad is None for p in model.parameters())
    assert any(p.grad is not None and float(p.grad.abs().max()) > 0 for p in head.parameters())
    head.zero_grad(set_to_none=True)
    push.backward()  # the network's confusion term never moves the head
    assert all(p.grad is None for p in head.parameters())
    assert any(p.grad is not None and float(p.grad.abs().max()) > 0 for p in model.parameters())
    with pytest.raises(ValueError, match="mode"):
        SpeakerAdversary(32, 2, 0.3, mode="flip")
    with pytest.raises(ConfigError, match="speaker_adversary_mode"):
        Config().with_overrides(loss={"speaker_adversary_mode": "flip"})


def test_batch_loss_adds_head_and_weighted_confusion(tiny_corpus):
    prep, batch, n = _batch(tiny_corpus, 0.3)
    torch.manual_seed(0)
    model = CRNN(prep.cfg.model).eval()
    head = SpeakerAdversary(prep.cfg.model.lstm_hidden, n, 0.3, mode="confusion")
    pool = Pooler(1 / 32, 0.5)
    loss, parts = batch_loss(model, pool, batch, prep.cfg, head)
    plain, _ = batch_loss(model, pool, batch, prep.cfg)
    expected = float(plain.detach()) + parts["speaker"] + 0.3 * parts["speaker_confusion"]
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-6)


def test_one_training_speaker_is_a_clear_error_before_any_seed_starts(tiny_corpus, tmp_path):
    """A call center's corpus may have one voice in training (or no `speaker` column and one call):
    the default recipe's adversary then has nothing to tell apart. `train` says so, as a user
    error naming the setting, before any seed (or worker process) starts."""
    from click.testing import CliRunner

    from cusemo_batch.cli import main

    cfg = tmp_path / "one.toml"
    cfg.write_text('[model]\nconv_channels = [8, 16, 16]\nlstm_hidden = 32\nmlp_sizes = [32, 16]\n'
                   '[data]\nsegment_s = 10\nsplit = [0.34, 0.66, 0.0]\n'
                   '[train]\nepochs = 1\nseeds = [0, 1]\n[loss]\nspeaker_adversary = 0.3\n')
    r = CliRunner().invoke(main, ["train", str(tiny_corpus), "--out", str(tmp_path / "run"),
                                  "--config", str(cfg), "--jobs", "2"])
    assert r.exit_code != 0 and isinstance(r.exception, SystemExit), r.output
    assert "needs at least 2 training speakers" in r.output and "speaker_adversary = 0" in r.output
    assert "Traceback" not in r.output
    assert not list((tmp_path / "run").glob("seed_*"))
