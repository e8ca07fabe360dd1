"""F0 ranking (`cusemo-batch prepare rank-f0`): the trackers' contract on signals of known pitch, the
ranking on real speech, the openSMILE option, and errors as rows.

Known pitch, computed by hand: semitones re 27.5 Hz = 12 * log2(f / 27.5), so 220 Hz = 27.5 * 2**3
is exactly 36 st, and a glide f(t) = 110 * 2**t Hz (0 <= t < 2 s) is 24 + 12 t st: a straight line
from 24 to 48 st whose sd over time is 24 / sqrt(12) = 6.93 st.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
import soundfile as sf
from click.testing import CliRunner

from cusemo_batch.audio import load_audio
from cusemo_batch.cli import main
from cusemo_batch.curation.f0 import F0Stats, PyinTracker, f0_frames, hz_to_st, make_tracker, rank_f0

SR = 16000


def _tone(hz: float, seconds: float = 2.0) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def _glide(seconds: float = 2.0) -> np.ndarray:  # f(t) = 110 * 2**t Hz
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * 110 * (2 ** t - 1) / math.log(2))).astype(np.float32)


def test_semitones_re_27_5_hz_and_unvoiced_is_0():
    assert hz_to_st(np.array([27.5, 55.0, 220.0, 0.0, np.nan])).tolist() == [0.0, 12.0, 36.0, 0.0, 0.0]


def test_pyin_tone_and_glide_have_the_hand_computed_semitones():
    f0, centres, hop = f0_frames(_tone(220.0), SR)  # the default tracker
    assert hop == 0.01 and f0.size == 1 + 2 * SR // 160
    np.testing.assert_allclose(centres[:3], [0.0, 0.01, 0.02])  # frame t centred on t * hop
    st = F0Stats.from_frames(f0, hop)
    assert st.voiced_s > 1.8  # a clean tone is voiced throughout
    assert st.mean_st == pytest.approx(36.0, abs=0.15) and st.sd_st < 0.15  # 0.25-st pitch bins

    f0, centres, hop = f0_frames(_glide(), SR)
    inner = (centres > 0.1) & (centres < 1.9) & (f0 > 0)
    assert inner.sum() > 160
    assert np.abs(f0[inner] - (24 + 12 * centres[inner])).max() < 0.5
    st = F0Stats.from_frames(f0, hop)
    assert st.sd_st == pytest.approx(24 / math.sqrt(12), rel=0.05)
    assert st.mean_st == pytest.approx(36.0, abs=0.5)

    silence = F0Stats.from_frames(*f0_frames(np.zeros(SR, np.float32), SR)[::2])
    assert silence.voiced_frames == 0 and math.isnan(silence.sd_st)


def test_pyin_in_chunks_matches_one_pass():
    """Long calls go through pyin in chunks (memory); the frames are the same as in one pass."""
    x = _glide()
    whole, c1, _ = PyinTracker(chunk_s=1e9).frames(x, SR)
    chunked, c2, _ = PyinTracker(chunk_s=0.5).frames(x, SR)
    assert whole.size == chunked.size and np.array_equal(c1, c2)
    assert np.mean(np.abs(whole - chunked) < 0.3) > 0.97  # only the Viterbi path is cut


def _real_calls(ravdess_dir, tmp_path):
    """Call-length tracks of one actor (a sd over one 3 s utterance is mostly noise, and pYIN and
    openSMILE disagree there): ~30 s of happy/angry/disgusted/surprised strong utterances (varied) vs
    ~27 s of neutral and calm ones (flat); and both in one mono file with an RTTM, one speaker each."""
    audio = ravdess_dir / "audio"
    varied = [f"03-01-{e}-02-0{s}-01-01" for e in ("03", "05", "07", "08") for s in (1, 2)]
    flat = [f"03-01-{e}-01-0{s}-0{r}-01" for e in ("01", "02") for s in (1, 2) for r in (1, 2)]
    calls = tmp_path / "calls"
    calls.mkdir()
    x = {name: np.concatenate([load_audio(audio / f"{f}.flac", 8000) for f in files])
         for name, files in (("varied", varied), ("monotone", flat))}
    for name, y in x.items():
        sf.write(calls / f"{name}.flac", y, 8000)
    sf.write(calls / "mix.flac", np.concatenate([x["varied"], x["monotone"]]), 8000)
    d1, d2 = x["varied"].size / 8000, x["monotone"].size / 8000
    (calls / "mix.rttm").write_text(f"SPEAKER mix 1 0.000 {d1:.3f} <NA> <NA> LIVELY <NA> <NA>\n"
                                    f"SPEAKER mix 1 {d1:.3f} {d2:.3f} <NA> <NA> FLAT <NA> <NA>\n")
    return calls


def _check_ranking(ranking, errors, tracker):
    assert errors.height == 0
    assert set(ranking["tracker"]) == {tracker}
    order = list(zip(ranking["call_id"], ranking["speaker"]))
    assert order.index(("varied", "client")) < order.index(("monotone", "client"))
    assert order.index(("mix", "LIVELY")) < order.index(("mix", "FLAT"))
    sd = dict(zip(order, ranking["f0_sd_st"]))
    assert sd[("varied", "client")] > 1.8 * sd[("monotone", "client")]
    assert sd[("mix", "LIVELY")] == pytest.approx(sd[("varied", "client")], rel=0.15)
    assert ranking["rank"].to_list() == list(range(1, 5))


def test_ranking_on_real_speech_pyin(ravdess_dir, tmp_path):
    calls = _real_calls(ravdess_dir, tmp_path)
    _check_ranking(*rank_f0(calls), tracker="pyin")


def test_opensmile_option_ranks_alike_and_matches_egemaps_functionals(ravdess_dir, tmp_path):
    opensmile = pytest.importorskip("opensmile", reason="openSMILE not installed (pip install '.[opensmile]')")
    from cusemo_batch.curation.f0 import F0_FUNCTIONAL_CV

    calls = _real_calls(ravdess_dir, tmp_path)
    _check_ranking(*rank_f0(calls, tracker="opensmile"), tracker="opensmile")
    # the CV we derive from the LLDs is eGEMAPS' own functional (openSMILE computes it independently)
    fun = opensmile.Smile(feature_set=opensmile.FeatureSet.eGeMAPSv02, feature_level=opensmile.FeatureLevel.Functionals)
    trk = make_tracker("opensmile")
    for name in ("varied", "monotone"):
        x = load_audio(calls / f"{name}.flac", SR)
        f0, _, hop = f0_frames(x, SR, trk)
        st = F0Stats.from_frames(f0, hop)
        ref = fun.process_signal(x, SR)
        assert st.cv == pytest.approx(float(ref[F0_FUNCTIONAL_CV].iloc[0]), rel=2e-3)
        assert st.mean_st == pytest.approx(float(ref["F0semitoneFrom27.5Hz_sma3nz_amean"].iloc[0]), rel=1e-4)

    out = tmp_path / "f0_os.parquet"
    r = CliRunner().invoke(main, ["prepare", "rank-f0", str(calls), "--out", str(out), "--tracker", "opensmile",
                                  "--roles", "LIVELY=LIVELY,FLAT=FLAT"])
    assert r.exit_code == 0, r.output
    assert "opensmile" in r.output and set(pl.read_parquet(out)["tracker"]) == {"opensmile"}


def test_unreadable_calls_are_error_rows_and_unknown_tracker_is_a_user_error(tmp_path):
    calls = tmp_path / "calls"
    calls.mkdir()
    sf.write(calls / "tone.flac", _tone(220.0), SR)
    (calls / "broken.flac").write_bytes(b"fLaC but not really audio" * 10)
    ranking, errors = rank_f0(calls)
    assert ranking["call_id"].to_list() == ["tone"] and ranking["rank"].to_list() == [1]
    assert ranking["f0_mean_st"][0] == pytest.approx(36.0, abs=0.15)
    assert errors["call_id"].to_list() == ["broken"] and errors["message"][0]

    out = tmp_path / "f0.parquet"
    r = CliRunner().invoke(main, ["prepare", "rank-f0", str(calls), "--out", str(out)])
    assert r.exit_code == 1 and "broken" in r.output and "(pyin)" in r.output  # the others still ranked
    assert pl.read_parquet(out)["tracker"].to_list() == ["pyin"]
    assert pl.read_parquet(tmp_path / "f0.errors.parquet").height == 1

    with pytest.raises(ValueError, match="unknown F0 tracker"):
        make_tracker("crepe")
    r = CliRunner().invoke(main, ["prepare", "rank-f0", str(calls), "--out", str(out), "--tracker", "crepe"])
    assert r.exit_code == 2 and "Traceback" not in r.output
