"""The transfer benchmark's conditions: every system hears the same, correctly built channel.

A row is only a comparison if the CRNN and both baselines receive identical audio, and only means
what its label says if the condition is built right. Checked on real speech (a demo call), without
running any model: the white-noise row (added after v10 read a white floor as agitation while the
pink-noise telephone row looked fine) is white, 20 dB below the active speech, the same for a
call whatever order calls come in, and different between calls.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import signal

from cusemo_batch.audio import load_audio
from cusemo_batch.level import active_level_db

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
bt = pytest.importorskip("bench_transfer")

SR = 8000


@pytest.fixture(scope="module")
def speech() -> np.ndarray:
    return load_audio(REPO / "examples" / "calls" / "recovery.flac", SR)[: 20 * SR]


@pytest.fixture(scope="module")
def conditions() -> dict:
    return {c.key: c for c in bt.make_conditions(bt._args(["--split-seed", "0", "--corpus", "unused"]))}


def test_rows_in_order(conditions: dict) -> None:
    keys = list(conditions)
    assert keys[:3] == ["clean", "telephone", "white_noise"]
    assert keys[3:] == ["level_-45", "level_-35", "level_-25", "level_-15", "level_-5"]


def test_white_noise_row_is_white_at_20_db(conditions: dict, speech: np.ndarray) -> None:
    y = conditions["white_noise"].apply(speech, SR, "call_a")
    noise = y - speech
    snr = active_level_db(speech, SR) - 10 * np.log10(np.mean(noise.astype(np.float64) ** 2))
    assert abs(snr - 20.0) < 1.0
    f, p = signal.welch(noise, SR, nperseg=512)
    low, high = p[(f > 200) & (f < 1000)].mean(), p[(f > 2500) & (f < 3800)].mean()
    assert abs(10 * np.log10(high / low)) < 1.5  # flat; pink would be ~ -6 dB here
    tel = conditions["telephone"].apply(speech, SR, "call_a")
    assert not np.allclose(tel, y)


def test_noise_fixed_per_call_not_per_order(conditions: dict, speech: np.ndarray) -> None:
    apply = conditions["white_noise"].apply
    a1 = apply(speech, SR, "call_a")
    apply(speech, SR, "call_b")  # another call in between draws nothing from call_a's stream
    a2 = apply(speech, SR, "call_a")
    b = apply(speech, SR, "call_b")
    np.testing.assert_array_equal(a1, a2)
    assert not np.allclose(a1, b)
