"""Block-wise decoding + resampling equals a one-shot resample; channels decode consistently."""

import numpy as np
import pytest
import soundfile as sf

from cusemo_batch import audio
from cusemo_batch.audio import AudioError, load_audio, load_channels, resample


@pytest.mark.parametrize("sr", [48000, 44100, 11025, 8000])
def test_block_decoding_equals_one_shot(tmp_path, monkeypatch, sr):
    rng = np.random.default_rng(sr)
    x = rng.normal(0, 0.1, (int(sr * 3.3), 2)).astype(np.float32)
    path = tmp_path / "a.wav"
    sf.write(path, x, sr, subtype="FLOAT")
    monkeypatch.setattr(audio, "BLOCK_SECONDS", 1.0)  # several blocks with overlap
    both = load_channels(path, 8000)
    assert both.shape == (2, int(3.3 * 8000))
    for c in range(2):
        np.testing.assert_allclose(both[c], resample(x[:, c], sr, 8000), atol=1e-6)
        np.testing.assert_allclose(load_audio(path, 8000, channel=c), both[c], atol=1e-6)
    np.testing.assert_allclose(load_audio(path, 8000), resample(x.mean(axis=1), sr, 8000), atol=1e-6)
    with pytest.raises(AudioError, match="channel 2 requested"):
        load_audio(path, 8000, channel=2)
