"""The transfer benchmark's same-data eGEMAPS baseline: its training audio is the CRNN's.

The baseline is only fair if its TRAIN audio is drawn like the trainer's (the run's own
``[augment]``, then the model's normalisation) and the same on every run; these tests check that on
real speech (a demo call) without running openSMILE.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from cusemo_batch.audio import load_audio, normalise
from cusemo_batch.level import active_level_db
from cusemo_batch.training.augment import AugmentConfig
from cusemo_batch.training.config import Config

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
sdb = pytest.importorskip("same_data_baseline")

SR = 8000


@pytest.fixture(scope="module")
def calls() -> list[SimpleNamespace]:
    x = load_audio(REPO / "examples" / "calls" / "recovery.flac", SR)[: 12 * SR]
    gold = {"valence": np.linspace(-1, 1, 24), "arousal": np.linspace(0, 1, 24)}
    return [SimpleNamespace(call_id="a", x=x, n=24, split="train", gold=gold),
            SimpleNamespace(call_id="b", x=0.1 * x[::-1].copy(), n=24, split="train", gold=gold)]


def _prep(x: np.ndarray) -> np.ndarray:
    return normalise(x, "speech_rms", SR)


def test_copies_are_random_lines_then_the_model_normalisation(calls):
    aug = AugmentConfig(enabled=True)
    out = list(sdb.training_copies(calls, aug, 2, 0, SR, _prep))
    assert [r.call_id for r, _ in out] == ["a#line0", "a#line1", "b#line0", "b#line1"]
    assert [r.n for r, _ in out] == [24] * 4 and calls[0].call_id == "a"  # the originals are untouched
    for _, x in out:  # whatever level the line put it at, the model's input is at -26 dBFS
        assert abs(active_level_db(x, SR) - (-26.0)) < 0.5
    a0, a1 = out[0][1], out[1][1]
    assert a0.shape == a1.shape and not np.allclose(a0, a1)  # two lines of one call differ


def test_copies_are_the_same_on_every_run_and_in_any_call_order(calls):
    aug = AugmentConfig(enabled=True)
    first = {r.call_id: x for r, x in sdb.training_copies(calls, aug, 2, 0, SR, _prep)}
    again = {r.call_id: x for r, x in sdb.training_copies(calls[::-1], aug, 2, 0, SR, _prep)}
    assert first.keys() == again.keys()
    for k in first:
        np.testing.assert_array_equal(first[k], again[k])
    other_seed = dict((r.call_id, x) for r, x in sdb.training_copies(calls, aug, 1, 1, SR, _prep))
    assert not np.allclose(other_seed["a#line0"], first["a#line0"])


def test_a_run_without_augmentation_gives_one_clean_normalised_copy(calls):
    out = list(sdb.training_copies(calls, None, 3, 0, SR, _prep))
    assert [r.call_id for r, _ in out] == ["a#line0", "b#line0"]
    np.testing.assert_array_equal(out[1][1], _prep(calls[1].x))


def test_the_augmentation_is_the_runs_own():
    cfg = Config().with_overrides(augment={"enabled": True, "p_codec": 0.0, "snr_db": [15.0, 20.0]})
    aug = sdb.run_augment_config({"config": cfg.to_dict()})
    assert aug is not None and aug.p_codec == 0.0 and aug.snr_db == (15.0, 20.0)
    assert sdb.run_augment_config({"config": Config().to_dict()}) is None  # trained on clean audio
    assert sdb.run_augment_config({}) is None  # no run given


def test_a_run_with_speeds_plays_each_copy_at_one_of_them_with_its_gold_stretched(calls):
    from cusemo_batch.training.data import stretch_labels

    plain = list(sdb.training_copies(calls, AugmentConfig(enabled=True), 4, 0, SR, _prep))
    aug = AugmentConfig(enabled=True, speeds=(0.8, 1.25))
    out = list(sdb.training_copies(calls, aug, 4, 0, SR, _prep))
    seen = set()
    for (rec, x), (_, y) in zip(out, plain):
        speed = len(y) / len(x)  # the line is drawn as without speeds; then resampled
        assert speed == pytest.approx(0.8, rel=1e-3) or speed == pytest.approx(1.25, rel=1e-3)
        f = 0.8 if speed < 1 else 1.25
        seen.add(f)
        assert rec.n == (30 if f == 0.8 else 19)  # 24 bins at 0.8x -> 30, at 1.25x -> 19
        np.testing.assert_allclose(rec.gold["arousal"], stretch_labels(calls[0].gold["arousal"], 0, rec.n, f))
        assert abs(active_level_db(x, SR) - (-26.0)) < 0.5
    assert seen == {0.8, 1.25} and calls[0].n == 24  # both speeds drawn; the originals untouched


def test_final_fit_chooses_on_dev_then_fits_train_plus_dev():
    """``fit_on`` (bench_transfer --final-fit): (delay, alpha) are chosen on train -> dev exactly as
    without it; only the last fit sees train + dev -- the same ridge sklearn fits on those rows."""
    from sklearn.linear_model import Ridge
    from sklearn.preprocessing import StandardScaler

    import accuracy_lib as lib
    import bench_accuracy as acc

    rng = np.random.default_rng(0)
    bin_s, windows, recs = 0.5, {}, []
    for i, split in enumerate(["train"] * 4 + ["dev"] * 2):
        n = 40
        gold = {"valence": np.tanh(rng.normal(size=n)), "arousal": np.tanh(rng.normal(size=n))}
        feats = np.stack([gold["valence"], gold["arousal"]], 1) + 0.5 * rng.normal(size=(n, 2))
        feats = np.concatenate([feats, rng.normal(size=(n, 3))], 1).astype(np.float32)
        start = np.arange(n) * bin_s - 1.75  # 4 s windows centred on each 0.5 s bin
        windows[f"c{i}"] = lib.WindowFeatures(feats, start, start + 4.0, [f"f{j}" for j in range(5)], 4.0)
        recs.append(SimpleNamespace(call_id=f"c{i}", split=split, n=n, gold=gold))
    args = SimpleNamespace(alphas="0.1,10,1000", max_delay_s=1.0, window_s=4.0)
    plain, info = acc.fit_egemaps_ridge(args, recs, windows, bin_s)
    final, final_info = acc.fit_egemaps_ridge(args, recs, windows, bin_s, fit_on=recs)
    assert final_info["chosen"] == info["chosen"] and final_info["final_fit"] and not info["final_fit"]
    assert final_info["train_bins"] == 240 and info["train_bins"] == 160
    for k, d in enumerate(acc.DIMS):
        delay = int(round(info["chosen"][d]["delay_s"] / bin_s))
        X = np.concatenate([lib.features_for_bins(windows[r.call_id], r.n, bin_s, delay) for r in recs])
        y = np.concatenate([r.gold[d] for r in recs])
        sc = StandardScaler().fit(X)
        ref = Ridge(alpha=info["chosen"][d]["alpha"]).fit(sc.transform(X), y)
        np.testing.assert_allclose(final[d].reg.coef_, ref.coef_, rtol=1e-6, atol=1e-9)
        assert not np.allclose(plain[d].reg.coef_, ref.coef_)  # without fit_on: train rows only
