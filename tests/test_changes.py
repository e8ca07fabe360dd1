import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

from cusemo_batch.changes import (
    DEFAULT_CONFIG,
    EVENT_SCHEMA,
    ChangeConfig,
    analyse,
    call_summary,
    detect_events,
    load_change_config,
    smooth,
    summary_columns,
)

RATE = 0.5
CFG = ChangeConfig()


def _call(call_id: str, valence, arousal=None, speech=None, speaker: str = "client") -> pl.DataFrame:
    valence = np.asarray(valence, dtype=float)
    n = valence.size
    t = np.arange(n) * RATE
    return pl.DataFrame({
        "call_id": call_id, "speaker": speaker, "t_start_s": t, "t_end_s": t + RATE,
        "valence": valence,
        "arousal": np.zeros(n) if arousal is None else np.asarray(arousal, dtype=float),
        "speech_ratio": np.ones(n) if speech is None else np.asarray(speech, dtype=float),
    })


def _t(seconds: float) -> np.ndarray:
    return np.arange(int(round(seconds / RATE))) * RATE


def _summary(ts: pl.DataFrame, cfg: ChangeConfig = CFG) -> dict:
    s = call_summary(ts, detect_events(ts, cfg), cfg)
    assert s.height == 1
    return s.row(0, named=True)


FLAGS = ("valence_drop", "arousal_spike", "negative_end", "sustained_negative", "recovery")


def test_flat_call_has_no_events_and_no_flags():
    ts = _call("flat", np.full(240, 0.2), np.full(240, -0.1))
    assert detect_events(ts, CFG).height == 0
    s = _summary(ts)
    assert not any(s[f] for f in FLAGS)
    assert s["valence_mean"] == pytest.approx(0.2) and s["valence_std"] == pytest.approx(0.0)
    assert s["valence_slope_per_min"] == pytest.approx(0.0, abs=1e-12)
    assert s["duration_s"] == pytest.approx(120.0) and s["speech_s"] == pytest.approx(120.0)
    assert [s[f"n_{k}"] for k in ("valence_drop", "valence_rise", "arousal_spike", "arousal_drop")] == [0] * 4


def test_valence_step_down_is_one_drop():
    t = _t(90)
    ts = _call("step", np.where(t < 30, 0.4, -0.5))
    ev = detect_events(ts, CFG)
    assert ev.height == 1
    e = ev.row(0, named=True)
    assert (e["dimension"], e["kind"]) == ("valence", "valence_drop")
    assert e["t_change_s"] == pytest.approx(30.0, abs=0.5)
    assert 30 - CFG.context_s <= e["t_start_s"] < 30 < e["t_end_s"] <= 30 + CFG.context_s
    assert e["magnitude"] == pytest.approx(-0.9, abs=0.02)
    assert e["level_before"] == pytest.approx(0.4, abs=0.02) and e["level_after"] == pytest.approx(-0.5, abs=0.02)
    assert e["held_s"] == pytest.approx(60.0, abs=1.0)
    s = _summary(ts)
    assert s["valence_drop"] and s["negative_end"] and s["sustained_negative"]
    assert not s["recovery"] and not s["arousal_spike"]
    assert s["n_valence_drop"] == 1 and s["n_valence_rise"] == 0
    assert s["valence_start"] == pytest.approx(0.4) and s["valence_end"] == pytest.approx(-0.5)


def test_drop_then_recovery():
    t = _t(100)
    ts = _call("rec", np.where(t < 30, 0.4, np.where(t < 50, -0.5, 0.35)))
    ev = detect_events(ts, CFG)
    assert ev["kind"].to_list() == ["valence_drop", "valence_rise"]
    assert ev["t_change_s"].to_list() == pytest.approx([30.0, 50.0], abs=0.5)
    s = _summary(ts)
    assert s["valence_drop"] and s["recovery"] and not s["negative_end"]


def test_partial_rise_is_not_a_recovery():
    t = _t(100)
    # drop from 0.4 to -0.5 for 8 s (not sustained), then a rise to -0.05: a significant rise,
    # but far from the old level
    ts = _call("partial", np.where(t < 30, 0.4, np.where(t < 38, -0.5, -0.05)))
    assert detect_events(ts, CFG)["kind"].to_list() == ["valence_drop", "valence_rise"]
    s = _summary(ts)
    assert s["valence_drop"] and not s["sustained_negative"] and not s["negative_end"]
    assert not s["recovery"]
    # the same rise after a sustained negative stretch is a recovery by rule (b): negative -> neutral
    ts = _call("partial", np.where(t < 30, 0.4, np.where(t < 50, -0.5, -0.05)))
    s = _summary(ts)
    assert s["sustained_negative"] and s["recovery"]


def test_gradual_recovery_from_sustained_negative():
    """Rule (b): a sustained negative stretch followed by a non-negative end, without a rise event."""
    t = _t(140)
    v = np.where(t < 20, 0.3, -0.5)
    ramp = (t >= 40) & (t < 100)
    v = np.where(ramp, -0.5 + 0.01 * (t - 40), v)
    v = np.where(t >= 100, 0.1, v)
    ts = _call("gradual", v)
    assert detect_events(ts, CFG)["kind"].to_list() == ["valence_drop"]  # the slow climb is no event
    s = _summary(ts)
    assert s["sustained_negative"] and s["recovery"] and not s["negative_end"]
    assert s["valence_slope_per_min"] is not None


def test_arousal_spike():
    t = _t(90)
    ts = _call("spike", np.full(t.size, 0.1), np.where((t >= 30) & (t < 45), 0.6, -0.3))
    ev = detect_events(ts, CFG)
    assert ev["kind"].to_list() == ["arousal_spike", "arousal_drop"]
    assert ev["t_change_s"].to_list() == pytest.approx([30.0, 45.0], abs=1.0)
    assert ev["magnitude"].to_list() == pytest.approx([0.9, -0.9], abs=0.02)
    s = _summary(ts)
    assert s["arousal_spike"] and not s["valence_drop"] and not s["negative_end"]
    assert s["n_arousal_spike"] == 1 and s["n_arousal_drop"] == 1


def test_blip_shorter_than_min_duration_is_no_event():
    t = _t(60)
    ts = _call("blip", np.full(t.size, 0.0), np.where((t >= 30) & (t < 31), 0.9, -0.2))
    assert detect_events(ts, CFG).height == 0


def test_sustained_negative_needs_enough_speech():
    t = _t(90)
    long = _call("long", np.where((t >= 30) & (t < 50), -0.5, 0.2))
    short = _call("short", np.where((t >= 30) & (t < 36), -0.5, 0.2))
    s_long, s_short = _summary(long), _summary(short)
    assert s_long["sustained_negative"] and s_long["longest_negative_s"] == pytest.approx(20.0, abs=2.0)
    assert s_long["recovery"]  # drop + rise back to the old level
    assert not s_short["sustained_negative"] and s_short["longest_negative_s"] < CFG.sustained_s
    # pauses do not break a run, and only seconds of speech count: 20 s at speech_ratio 0.4 = 8 s
    sparse = _call("sparse", np.where((t >= 30) & (t < 50), -0.5, 0.2), speech=np.full(t.size, 0.4))
    assert _summary(sparse)["longest_negative_s"] == pytest.approx(8.0, abs=1.0)
    assert not _summary(sparse)["sustained_negative"]


def test_change_across_a_pause_is_found_in_speech_time():
    t = _t(90)
    speech = np.where((t >= 25) & (t < 45), 0.0, 1.0)  # the speaker is silent (agent talks)
    ts = _call("pause", np.where(t < 35, 0.4, -0.5), speech=speech)
    ev = detect_events(ts, CFG)
    assert ev["kind"].to_list() == ["valence_drop"]
    assert ev["t_change_s"][0] == pytest.approx(35.0)  # the middle of the pause
    assert ev["magnitude"][0] == pytest.approx(-0.9, abs=0.02)


def test_noise_on_a_flat_call_gives_no_events():
    rng = np.random.default_rng(7)
    frames = [_call(f"noisy{i}", 0.1 + rng.normal(0, 0.05, 600), -0.2 + rng.normal(0, 0.05, 600))
              for i in range(5)]
    ts = pl.concat(frames)
    assert detect_events(ts, CFG).height == 0
    s = call_summary(ts, cfg=CFG)
    assert s.height == 5 and not s.select(pl.any_horizontal(FLAGS).any()).item()


def test_aggregates_match_numpy():
    rng = np.random.default_rng(3)
    n = 200
    v = rng.uniform(-0.8, 0.8, n)
    a = rng.uniform(-0.5, 0.9, n)
    ratio = rng.integers(0, 11, n) / 10  # multiples of 0.1: some windows under the 0.2 floor
    ts = _call("agg", v, a, ratio)
    sm = smooth(ts, CFG)
    s = _summary(ts)

    ok = ratio >= CFG.speech_floor
    t_mid = np.arange(n) * RATE + RATE / 2
    for name, x in (("valence", v), ("arousal", a)):
        xs = x[ok]
        assert s[f"{name}_mean"] == pytest.approx(xs.mean())
        assert s[f"{name}_std"] == pytest.approx(xs.std(ddof=1))
        assert s[f"{name}_min"] == pytest.approx(xs.min()) and s[f"{name}_max"] == pytest.approx(xs.max())
        assert s[f"{name}_p10"] == pytest.approx(np.percentile(xs, 10))
        assert s[f"{name}_p90"] == pytest.approx(np.percentile(xs, 90))
        smoothed = sm[f"{name}_smooth"].to_numpy()
        slope = np.polyfit(t_mid[ok] / 60, smoothed[ok], 1)[0]
        assert s[f"{name}_slope_per_min"] == pytest.approx(slope)
    assert s["speech_s"] == pytest.approx((ratio * RATE).sum())
    assert s["duration_s"] == pytest.approx(n * RATE)

    # smoothing = speech-weighted mean over windows whose speech-time centre is within smooth_s / 2
    w = np.where(ok, ratio * RATE, 0.0)
    tau = np.cumsum(w) - w / 2
    expected = np.array([np.sum(w * v * (np.abs(tau - tau[i]) <= CFG.smooth_s / 2 + 1e-9))
                         / np.sum(w * (np.abs(tau - tau[i]) <= CFG.smooth_s / 2 + 1e-9)) for i in range(n)])
    got = sm["valence_smooth"].to_numpy()
    np.testing.assert_allclose(got[ok], expected[ok], rtol=1e-9)
    assert sm["valence_smooth"].filter(pl.Series(~ok)).null_count() == (~ok).sum()
    # start / end levels: windows in the first / last edge_s seconds of speech
    assert s["valence_start"] == pytest.approx(v[ok & (tau <= CFG.edge_s + 1e-9)].mean())
    assert s["valence_end"] == pytest.approx(v[ok & (w.sum() - tau <= CFG.edge_s + 1e-9)].mean())


def test_low_speech_windows_are_ignored():
    t = _t(120)
    # 20 s where the client barely speaks; the model outputs garbage there (other party's leakage)
    low = (t >= 40) & (t < 60)
    v = np.where(low, -0.9, 0.3)
    a = np.where(low, 0.9, 0.0)
    # and every 7th window elsewhere is nearly silent with garbage too
    sparse = (np.arange(t.size) % 7 == 0) & ~low
    v = np.where(sparse, -1.0, v)
    speech = np.where(low, 0.05, np.where(sparse, 0.1, 1.0))
    speech[np.flatnonzero(sparse)[::2]] = np.nan  # unknown speech counts as no speech
    ts = _call("low", v, a, speech)
    assert detect_events(ts, CFG).height == 0
    s = _summary(ts)
    assert not any(s[f] for f in FLAGS)
    assert s["valence_mean"] == pytest.approx(0.3) and s["valence_min"] == pytest.approx(0.3)
    assert s["arousal_max"] == pytest.approx(0.0)
    sm = smooth(ts, CFG)
    assert sm.filter(pl.Series(low | sparse))["valence_smooth"].null_count() == (low | sparse).sum()
    np.testing.assert_allclose(sm.filter(pl.Series(~(low | sparse)))["valence_smooth"].to_numpy(), 0.3)


def test_several_calls_and_speakers_are_independent():
    t = _t(90)
    parts = [
        _call("A", np.where(t < 30, 0.4, -0.5), speaker="client"),
        _call("A", np.full(t.size, 0.2), np.where((t >= 30) & (t < 45), 0.6, -0.3), speaker="agent"),
        _call("B", np.full(t.size, 0.0), speaker="client"),
        _call("C", np.where(t < 30, 0.4, np.where(t < 50, -0.5, 0.35)), speaker="client"),
    ]
    alone_events = pl.concat([detect_events(p, CFG) for p in parts]).sort(["call_id", "speaker", "t_change_s"])
    alone_summary = pl.concat([call_summary(p, cfg=CFG) for p in parts]).sort(["call_id", "speaker"])
    mixed = pl.concat(parts).sample(fraction=1.0, shuffle=True, seed=11)
    events = detect_events(mixed, CFG)
    assert_frame_equal(events, alone_events)
    assert_frame_equal(call_summary(mixed, events, CFG), alone_summary)
    assert events.group_by("call_id", "speaker").len().sort("call_id", "speaker").rows() == [
        ("A", "agent", 2), ("A", "client", 1), ("C", "client", 2)]
    # smooth keeps the caller's rows and order
    sm = smooth(mixed, CFG)
    assert_frame_equal(sm.drop("valence_smooth", "arousal_smooth"), mixed)
    # the one-pass analyse() used by the scorer gives exactly the three separate results
    ts_a, events_a, summary_a = analyse(mixed, CFG)
    assert_frame_equal(ts_a, sm)
    assert_frame_equal(events_a, events)
    assert_frame_equal(summary_a, call_summary(mixed, events, CFG))


def test_speaker_without_speech_gets_nulls_and_false_flags():
    t = _t(60)
    ts = pl.concat([
        _call("X", np.full(t.size, -0.8), speech=np.zeros(t.size), speaker="agent"),
        _call("X", np.where(t < 30, 0.4, -0.5), speaker="client"),
    ])
    events = detect_events(ts, CFG)
    assert events["speaker"].unique().to_list() == ["client"]
    s = call_summary(ts, events, CFG)
    agent = s.filter(pl.col("speaker") == "agent").row(0, named=True)
    for col in ("valence_mean", "valence_std", "valence_p10", "valence_start", "valence_end",
                "valence_slope_per_min", "arousal_max"):
        assert agent[col] is None, col
    assert not any(agent[f] for f in FLAGS)
    assert agent["n_valence_drop"] == 0 and agent["longest_negative_s"] == 0.0
    assert agent["speech_s"] == 0.0 and agent["duration_s"] == pytest.approx(60.0)
    assert smooth(ts, CFG).filter(pl.col("speaker") == "agent")["valence_smooth"].null_count() == t.size


def test_empty_and_invalid_input():
    empty = _call("E", np.zeros(0))
    ev = detect_events(empty, CFG)
    assert ev.height == 0 and dict(ev.schema) == EVENT_SCHEMA
    s = call_summary(empty, ev, CFG)
    assert s.height == 0 and s.columns == summary_columns()
    with pytest.raises(ValueError, match="lacks column"):
        detect_events(empty.drop("speech_ratio"), CFG)


def test_output_columns_are_documented():
    ts = _call("cols", np.zeros(40))
    assert call_summary(ts, cfg=CFG).columns == summary_columns()
    assert list(detect_events(ts, CFG).schema) == list(EVENT_SCHEMA)


def test_config_defaults_round_trip_and_errors(tmp_path):
    assert DEFAULT_CONFIG.is_file()
    assert load_change_config() == ChangeConfig()  # the shipped TOML documents the dataclass defaults
    custom = ChangeConfig(smooth_s=4, min_change=0.25, negative_level=-0.3)
    path = tmp_path / "c.toml"
    path.write_text(custom.to_toml())
    assert load_change_config(path) == custom
    (tmp_path / "partial.toml").write_text("context_s = 8.0\n")
    assert load_change_config(tmp_path / "partial.toml") == ChangeConfig(context_s=8.0)

    bad = tmp_path / "bad.toml"
    bad.write_text("smooth_s = 3.0\nmin_chnage = 0.2\n")
    with pytest.raises(ValueError, match="unknown key.*min_chnage") as e:
        load_change_config(bad)
    assert "\n" not in str(e.value)
    bad.write_text("smooth_s = -1\n")
    with pytest.raises(ValueError, match="smooth_s must be > 0"):
        load_change_config(bad)
    bad.write_text("smooth_s = 'three'\n")
    with pytest.raises(ValueError, match="finite number"):
        load_change_config(bad)
    bad.write_text("smooth_s = \n")
    with pytest.raises(ValueError, match="invalid TOML"):
        load_change_config(bad)
    with pytest.raises(ValueError, match="not found"):
        load_change_config(tmp_path / "missing.toml")


def test_config_changes_the_result():
    t = _t(90)
    ts = _call("mild", np.where(t < 30, 0.2, -0.05))  # a change of 0.25
    assert detect_events(ts, CFG).height == 0
    assert detect_events(ts, ChangeConfig(min_change=0.2))["kind"].to_list() == ["valence_drop"]
