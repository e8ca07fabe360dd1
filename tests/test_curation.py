"""Curation (`cusemo-batch prepare`): every statistic against an independent, published reference.

References used (values as printed in the sources):
* Shrout, P. E. & Fleiss, J. L. (1979). Intraclass correlations: uses in assessing rater reliability.
  Psychological Bulletin 86(2), 420-428. Table 2: 6 targets x 4 judges; Table 3/4: BMS = 11.24,
  WMS = 6.26, JMS = 32.49, EMS = 1.02; ICC(1,1) = .17, ICC(2,1) = .29, ICC(3,1) = .71,
  ICC(1,4) = .44, ICC(2,4) = .62, ICC(3,4) = .91.
* Krippendorff, K. (2011). Computing Krippendorff's alpha-reliability (Annenberg School for
  Communication, University of Pennsylvania), the example of 4 observers x 12 units with missing
  values: alpha nominal = .743, ordinal = .815, interval = .849, ratio = .797.
* Anscombe, F. J. (1973). Graphs in statistical analysis. The American Statistician 27(1), 17-21:
  all four data sets have correlation coefficient 0.816 (printed .82); data set I used here.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import soundfile as sf
from click.testing import CliRunner

from cusemo_batch.audio import load_audio
from cusemo_batch.cli import main
from cusemo_batch.curation import agreement as ag
from cusemo_batch.curation.compress import compress_path, read_time_map
from cusemo_batch.curation.select import SelectionRule, select_calls, write_selection
from cusemo_batch.training.corpus import read_corpus

SR = 8000

# ------------------------------------------------------------------------------ published values
SHROUT_FLEISS_TABLE_2 = np.array([  # targets x judges
    [9, 2, 5, 8],
    [6, 1, 3, 2],
    [8, 4, 6, 8],
    [7, 1, 2, 6],
    [10, 5, 6, 9],
    [6, 2, 4, 7],
], dtype=float)

NAN = np.nan
KRIPPENDORFF_2011 = np.array([  # observers x units, NaN = not coded
    [1, 2, 3, 3, 2, 1, 4, 1, 2, NAN, NAN, NAN],
    [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, NAN, 3],
    [NAN, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, NAN],
    [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, NAN],
])

ANSCOMBE_X = [10, 8, 13, 9, 11, 14, 6, 4, 12, 7, 5]
ANSCOMBE_Y1 = [8.04, 6.95, 7.58, 8.81, 8.33, 9.96, 7.24, 4.26, 10.84, 4.82, 5.68]


def test_icc_reproduces_shrout_fleiss_1979_table_2():
    r = ag.icc(SHROUT_FLEISS_TABLE_2)
    # ANOVA mean squares as printed (2 decimals)
    assert (round(r.bms, 2), round(r.wms, 2), round(r.jms, 2), round(r.ems, 2)) == (11.24, 6.26, 32.49, 1.02)
    # the six ICCs as printed (2 decimals); ICC(3,1) = .71 is the paper's statistic
    assert round(r.icc_3_1, 2) == 0.71
    assert round(r.icc_3_k, 2) == 0.91
    assert (round(r.icc_1_1, 2), round(r.icc_2_1, 2)) == (0.17, 0.29)
    assert (round(r.icc_1_k, 2), round(r.icc_2_k, 2)) == (0.44, 0.62)
    assert ag.icc_3_1(SHROUT_FLEISS_TABLE_2) == r.icc_3_1


def test_icc_3_1_is_consistency_not_absolute_agreement():
    rng = np.random.default_rng(0)
    truth = rng.normal(size=200)
    x = np.stack([truth + rng.normal(0, 0.3, 200), truth + rng.normal(0, 0.3, 200)], axis=1)
    shifted = x + np.array([0.0, 0.8])  # the second rater is systematically more positive
    assert ag.icc_3_1(shifted) == pytest.approx(ag.icc_3_1(x), abs=1e-12)
    assert ag.icc(shifted).icc_2_1 < ag.icc(x).icc_2_1 - 0.1  # absolute agreement does drop
    assert math.isnan(ag.icc_3_1(np.ones((10, 2))))  # flat tracks: undefined, not an error
    with pytest.raises(ValueError):
        ag.icc(np.array([[1.0, np.nan], [2.0, 3.0]]))


def test_krippendorff_alpha_reproduces_krippendorff_2011_example():
    assert round(ag.krippendorff_alpha(KRIPPENDORFF_2011, "interval"), 3) == 0.849
    assert round(ag.krippendorff_alpha(KRIPPENDORFF_2011, "nominal"), 3) == 0.743
    assert round(ag.krippendorff_alpha(KRIPPENDORFF_2011, "ordinal"), 3) == 0.815
    assert round(ag.krippendorff_alpha(KRIPPENDORFF_2011, "ratio"), 3) == 0.797
    # nominal data given as category labels
    labels = np.where(np.isnan(KRIPPENDORFF_2011), None, KRIPPENDORFF_2011.astype(object))
    labels = np.vectorize(lambda v: None if v is None else f"c{int(v)}", otypes=[object])(labels)
    assert round(ag.krippendorff_alpha(labels, "nominal"), 3) == 0.743


def test_interval_alpha_closed_form_equals_krippendorff_package():
    import krippendorff

    rng = np.random.default_rng(1)
    for m, n in ((2, 40), (3, 25), (5, 12)):
        x = rng.normal(size=(m, n)) + rng.normal(size=n)
        x[rng.random(x.shape) < 0.25] = np.nan
        ref = krippendorff.alpha(reliability_data=x, level_of_measurement="interval")
        assert ag.interval_alpha(x) == pytest.approx(ref, abs=1e-12)


def test_pearson_reproduces_anscombe_1973():
    from scipy import stats

    r, p = ag.pearson(ANSCOMBE_X, ANSCOMBE_Y1)
    assert round(r, 3) == 0.816
    # p-value from the t distribution with n-2 df, computed independently of scipy.stats.pearsonr
    n = len(ANSCOMBE_X)
    t = r * math.sqrt((n - 2) / (1 - r * r))
    assert p == pytest.approx(2 * stats.t.sf(t, n - 2), rel=1e-9)
    assert all(math.isnan(v) for v in ag.pearson([1, 1, 1], [1, 2, 3]))


# ------------------------------------------------------------------------------ generated corpus
def _write_plain(path: Path, v: np.ndarray, a: np.ndarray, bin_s: float = 0.5) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["time_s", "valence", "arousal"])
        for i, (x, y) in enumerate(zip(v, a)):
            w.writerow([f"{(i + 1) * bin_s:g}", f"{x:.1f}", f"{y:.1f}"])


# call_id -> (role, valence agreement, arousal agreement): "high", "low" or "flat"
CALLS = {
    "c_good1": ("client", "high", "high"),
    "c_good2": ("client", "high", "low"),
    "c_badval": ("client", "low", "high"),
    "c_flat": ("client", "flat", "high"),
    "a_good": ("agent", "high", "high"),
}


def _make_corpus(root: Path, context_rows: list[list[str]] | None = None) -> Path:
    rng = np.random.default_rng(7)
    n = 60  # 30 s at 0.5 s
    (root / "audio").mkdir(parents=True)
    for cid, (role, val, aro) in CALLS.items():
        sf.write(root / "audio" / f"{cid}.wav", rng.normal(0, 0.01, 31 * SR).astype(np.float32), SR, subtype="PCM_16")
        d = root / "annotations" / cid
        d.mkdir(parents=True)
        tracks = {}
        for dim, kind in (("valence", val), ("arousal", aro)):
            truth = np.cumsum(rng.normal(0, 80, n))
            truth = 600 * truth / np.abs(truth).max()
            if kind == "high":
                tracks[dim] = [truth + rng.normal(0, 30, n), truth + 50 + rng.normal(0, 30, n)]
            elif kind == "low":
                tracks[dim] = [truth + rng.normal(0, 30, n), rng.normal(0, 300, n)]
            else:
                tracks[dim] = [np.full(n, 100.0), np.full(n, 100.0)]
        for k, name in enumerate(("R1", "R2")):
            _write_plain(d / f"{name}.csv", np.clip(tracks["valence"][k], -1000, 1000),
                         np.clip(tracks["arousal"][k], -1000, 1000))
    with open(root / "context.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["call_id", "annotator", "gender", "role", "empathy", "satisfaction", "purpose"])
        rows = context_rows or [[cid, "", "F" if i % 2 else "M", role, "", "", ""]
                                for i, (cid, (role, _, _)) in enumerate(CALLS.items())]
        w.writerows(rows)
    return root


@pytest.fixture()
def gen_corpus(tmp_path) -> Path:
    return _make_corpus(tmp_path / "corpus")


def test_call_agreement_on_generated_corpus(gen_corpus):
    corpus = read_corpus(gen_corpus)
    df = ag.corpus_agreement(corpus)
    get = {(r["call_id"], r["dimension"]): r for r in df.iter_rows(named=True)}
    assert get[("c_good1", "valence")]["icc_3_1"] > 0.9
    assert get[("c_badval", "valence")]["icc_3_1"] < 0.5
    assert math.isnan(get[("c_flat", "valence")]["icc_3_1"])
    # ICC(3,1) equals the textbook formula on the matrix the tracks give (scale-free: /1000)
    call = corpus.by_id()["c_good1"]
    x = ag.track_matrix(call, "valence")
    assert x.shape == (60, 2) and np.abs(x).max() <= 1
    assert get[("c_good1", "valence")]["icc_3_1"] == pytest.approx(ag.icc(x * 1000).icc_3_1, abs=1e-12)
    summary = ag.summarise(df)
    assert set(summary["role"]) == {"agent", "client", "all"}
    row = summary.filter((pl.col("role") == "client") & (pl.col("dimension") == "valence")
                         & (pl.col("statistic") == "icc_3_1")).row(0, named=True)
    assert row["n_calls"] == 4 and row["n_undefined"] == 1
    vals = [get[(c, "valence")]["icc_3_1"] for c in ("c_good1", "c_good2", "c_badval")]
    assert row["mean"] == pytest.approx(np.mean(vals)) and row["sd"] == pytest.approx(np.std(vals, ddof=1))


def test_selection_reproduces_paper_rule_and_gold_is_mean(gen_corpus, tmp_path):
    corpus = read_corpus(gen_corpus)
    sel = select_calls(corpus, SelectionRule())  # client, valence ICC(3,1) > 0.7
    chosen = set(sel.filter(pl.col("selected"))["call_id"])
    assert chosen == {"c_good1", "c_good2"}
    reasons = dict(zip(sel["call_id"], sel["reason"]))
    assert reasons["a_good"].startswith("role agent") and "undefined" in reasons["c_flat"]
    assert set(sel.filter(pl.col("selected"))["call_id"]) <= set(sel.filter(pl.col("icc_valence") > 0.7)["call_id"])
    def chosen_by(rule):
        return set(select_calls(corpus, rule).filter(pl.col("selected"))["call_id"])

    assert chosen_by(SelectionRule(dimension="both")) == {"c_good1"}
    assert chosen_by(SelectionRule(role=None)) == {"c_good1", "c_good2", "a_good"}
    # strict ">" as in the paper: a threshold equal to a call's ICC rejects it
    icc_g1 = float(sel.filter(pl.col("call_id") == "c_good1")["icc_valence"][0])
    assert "c_good1" not in chosen_by(SelectionRule(min_icc=icc_g1))

    out = tmp_path / "sel"
    (out / "gold").mkdir(parents=True)
    (out / "gold" / "stale.csv").write_text("time_s,valence,arousal\n")
    _, summary = write_selection(corpus, SelectionRule(), out)
    assert summary["selected"] == 2 and summary["calls_of_role"] == 4
    assert sorted(p.name for p in (out / "gold").iterdir()) == ["c_good1.csv", "c_good2.csv"]
    assert pl.read_csv(out / "selected.csv")["call_id"].to_list() == ["c_good1", "c_good2"]
    gold = pl.read_csv(out / "gold" / "c_good1.csv")
    call = corpus.by_id()["c_good1"]
    assert gold.columns == ["time_s", "valence", "arousal"]
    np.testing.assert_allclose(gold["time_s"], (np.arange(60) + 1) * 0.5)
    mean_v = (call.tracks[0].valence + call.tracks[1].valence) / 2 / 1000
    np.testing.assert_allclose(gold["valence"], mean_v, atol=1e-6)
    write_selection(corpus, SelectionRule(gold="median", role=None), out)
    assert (out / "gold" / "a_good.csv").is_file()
    assert json.loads((out / "selection.json").read_text())["rule"]["gold"] == "median"


def test_context_agreement_per_annotator_rows(tmp_path):
    rng = np.random.default_rng(3)
    rows = []
    emp = rng.integers(0, 11, len(CALLS))
    for i, cid in enumerate(CALLS):
        e2 = int(np.clip(emp[i] + rng.integers(-1, 2), 0, 10))
        purpose = ["purchase", "issue", "information"][i % 3]
        rows.append([cid, "ann_b", "F", CALLS[cid][0], str(e2), "", purpose])
        rows.append([cid, "ann_a", "F", CALLS[cid][0], str(emp[i]), "", purpose if i else "issue"])
    root = _make_corpus(tmp_path / "c", rows)
    df = ag.context_agreement(root / "context.csv")
    by = {r["variable"]: r for r in df.iter_rows(named=True)}
    assert "satisfaction" not in by  # never rated
    e = by["empathy"]
    e1, e2 = emp.astype(float), np.array([float(r[4]) for r in rows[0::2]])  # ann_a first (sorted by name)
    r_ref, p_ref = ag.pearson(e1, e2)
    assert (e["level"], e["n_calls"]) == ("interval", len(CALLS))
    assert e["pearson_r"] == pytest.approx(r_ref) and e["pearson_p"] == pytest.approx(p_ref)
    assert e["alpha"] == pytest.approx(ag.interval_alpha(np.stack([e1, e2])))
    p = by["purpose"]
    assert p["level"] == "nominal" and p["percent_agreement"] == pytest.approx(4 / 5)
    pairs = ag.context_pairs(root / "context.csv")
    np.testing.assert_array_equal(pairs["empathy"], np.stack([e1, e2], axis=1))
    assert ag.plot_context(pairs, tmp_path).read_bytes()[:4] == b"\x89PNG"


# ------------------------------------------------------------------------------------ real speech
def _utt(ravdess_dir: Path, name: str) -> np.ndarray:
    return load_audio(ravdess_dir / "audio" / name, SR)


def _active(x: np.ndarray, pad_s: float = 0.05) -> np.ndarray:
    """The utterance without its leading/trailing silence (the test's own reference segmentation)."""
    hop = int(0.02 * SR)
    e = np.array([np.mean(x[i:i + hop] ** 2) for i in range(0, len(x) - hop, hop)])
    db = 10 * np.log10(e + 1e-12)
    on = np.flatnonzero(db > db.max() - 35)
    a, b = max(on[0] * hop - int(pad_s * SR), 0), min((on[-1] + 1) * hop + int(pad_s * SR), len(x))
    return x[a:b]


def _level(x: np.ndarray, db: float) -> np.ndarray:
    """Scale a trimmed utterance to an RMS of ``db`` dBFS (RAVDESS levels range from -18 to -44 dBFS)."""
    return (x * 10 ** (db / 20) / np.sqrt(np.mean(x.astype(np.float64) ** 2))).astype(np.float32)


def _telephone_noise(rng, n: int) -> np.ndarray:
    """Line noise at -55 dBFS plus 50 Hz mains hum at -50 dBFS: stationary, never digital silence."""
    t = np.arange(n) / SR
    hum = 10 ** (-50 / 20) * np.sqrt(2) * np.sin(2 * np.pi * 50 * t)
    return (rng.normal(0, 10 ** (-55 / 20), n) + hum).astype(np.float32)


def test_compress_silence_keeps_speech_and_shortens_only_long_pauses(ravdess_dir, tmp_path):
    rng = np.random.default_rng(5)
    # telephone levels: speech at -20 / -24 dBFS, one quiet (sad, far from the mic) turn at -32 dBFS
    u1 = _level(_active(_utt(ravdess_dir, "03-01-05-02-01-01-01.flac")), -20)
    u2 = _level(_active(_utt(ravdess_dir, "03-01-04-01-02-01-02.flac")), -32)
    u3 = _level(_active(_utt(ravdess_dir, "03-01-03-02-01-02-03.flac")), -24)
    def pause(seconds):
        return ("sil", np.zeros(int(seconds * SR), np.float32))

    parts = [pause(0.5), ("sp", u1), pause(6), ("sp", u2), pause(1.5), ("sp", u3), pause(0.5)]
    x = np.concatenate([p for _, p in parts])
    x = np.clip(x + _telephone_noise(rng, x.size), -1, 1)
    x = np.round(x * 32767) / 32768  # exactly representable in PCM_16
    bounds = np.cumsum([0] + [len(p) for _, p in parts])
    src = tmp_path / "in" / "call.flac"
    src.parent.mkdir()
    sf.write(src, x, SR, subtype="PCM_16")

    results, errors = compress_path(src, tmp_path / "out")
    assert not errors and len(results) == 1
    y, sr = sf.read(tmp_path / "out" / "call.flac", dtype="float32")
    tmap = read_time_map(tmp_path / "out" / "call.timemap.parquet")
    x32 = x.astype(np.float32)
    assert sr == SR and y.size == round(tmap.compressed_duration * SR)
    assert tmap.original_duration == pytest.approx(x.size / SR)

    # exactly one cut, inside the 6 s pause; the 1.5 s pause and the edges are untouched
    removed = tmap.removed_intervals()
    assert removed.shape == (1, 2)
    assert bounds[2] / SR <= removed[0, 0] < removed[0, 1] <= bounds[3] / SR
    assert 6 - 1 - 0.8 <= removed[0, 1] - removed[0, 0] <= 6 - 1 + 1e-9  # ~1 s kept (+ VAD hangover)

    # every compressed sample is the original sample the time map points to (speech bit-exact)
    idx = np.rint(tmap.to_original(np.arange(y.size) / SR) * SR).astype(np.int64)
    np.testing.assert_array_equal(y, x32[idx])
    kept = np.zeros(x.size, bool)
    kept[idx] = True
    for k in (1, 3, 5):  # the speech parts
        assert kept[bounds[k]:bounds[k + 1]].all()
    assert kept[bounds[4]:bounds[5]].all()  # the short pause

    # the time map inverts exactly on kept samples, and removed time maps to the cut
    t = idx / SR
    np.testing.assert_allclose(tmap.to_compressed(t), np.arange(y.size) / SR, atol=1e-9)
    np.testing.assert_allclose(tmap.to_original(tmap.to_compressed(t)), t, atol=1e-9)
    cut_c = tmap.to_compressed(removed[0, 0])
    assert tmap.to_compressed(removed.mean()) == pytest.approx(cut_c)


def test_compress_silence_keeps_the_sides_of_a_call_aligned(ravdess_dir, tmp_path):
    """Per-speaker files: one joint speech mask, so a side's long wait during the other's turn stays."""
    rng = np.random.default_rng(6)
    a = _level(_active(_utt(ravdess_dir, "03-01-01-01-01-01-01.flac")), -22)
    c = _level(_active(_utt(ravdess_dir, "03-01-05-02-02-01-02.flac")), -22)
    gap = np.zeros(int(0.3 * SR), np.float32)
    cc = np.concatenate([c, gap, c])  # the client's turns are two sentences: the agent waits > 3 s
    turns, sides = [a, cc, a, cc], ["agent", "client", "agent", "client"]
    tracks = {s: [] for s in ("agent", "client")}
    for u, who in zip(turns, sides):
        for s in tracks:
            tracks[s] += [u if s == who else np.zeros_like(u), gap]
    hold = np.zeros(5 * SR, np.float32)  # both silent: a hold, compressed
    call = tmp_path / "calls" / "c1"
    call.mkdir(parents=True)
    for s in tracks:
        x = np.concatenate(tracks[s][:4] + [hold] + tracks[s][4:])
        sf.write(call / f"{s}.flac", x + _telephone_noise(rng, x.size), SR, subtype="PCM_16")
    results, errors = compress_path(tmp_path / "calls", tmp_path / "out")
    assert not errors and len(results) == 2
    maps = [read_time_map(tmp_path / "out" / "c1" / f"{s}.timemap.parquet") for s in ("agent", "client")]
    assert maps[0] == maps[1] and len(maps[0].removed_intervals()) == 1  # only the joint hold
    assert 5.3 - 1 - 0.8 <= maps[0].removed_s <= 5.4 - 1  # 0.3 s gap + 5 s hold (+ pads) -> 1 s
    independent, _ = compress_path(tmp_path / "calls", tmp_path / "out2", joint=False)
    assert any(r.n_cuts > 1 for r in independent)  # each side alone would lose the other's turns


# -------------------------------------------------------------------------------------------- CLI
def test_prepare_commands_end_to_end(tiny_corpus, tmp_path):
    runner = CliRunner()
    r = runner.invoke(main, ["prepare", "agreement", str(tiny_corpus), "--out", str(tmp_path / "ag")])
    assert r.exit_code == 0, r.output
    assert "ICC mean" in r.output and "client" in r.output
    calls = pl.read_parquet(tmp_path / "ag" / "agreement_calls.parquet")
    assert calls.height == 2 * 9 and calls["icc_3_1"].min() > 0.7  # the simulated raters agree
    assert (tmp_path / "ag" / "icc_3_1_distribution.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert pl.read_parquet(tmp_path / "ag" / "agreement_summary.parquet").height > 0

    r = runner.invoke(main, ["prepare", "select", str(tiny_corpus), "--out", str(tmp_path / "sel"),
                             "--min-icc", "0.7", "--dimension", "valence"])
    assert r.exit_code == 0, r.output
    sel = pl.read_csv(tmp_path / "sel" / "selected.csv")
    assert sel.height == 9 and len(list((tmp_path / "sel" / "gold").glob("*.csv"))) == 9

    audio = tiny_corpus / "audio"
    one = sorted(audio.iterdir())[0]
    r = runner.invoke(main, ["prepare", "compress-silence", str(one), str(tmp_path / "cs" / "x.flac"),
                             "--map-format", "json"])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "cs" / "x.timemap.json").is_file()

    few = tmp_path / "few"  # two calls keep the test fast
    few.mkdir()
    for p in sorted(audio.iterdir())[:2]:
        (few / p.name).symlink_to(p)
    r = runner.invoke(main, ["prepare", "rank-f0", str(few), "--out", str(tmp_path / "f0.parquet"), "--top", "3",
                             "--follow-symlinks"])
    assert r.exit_code == 0, r.output
    f0 = pl.read_parquet(tmp_path / "f0.parquet")
    assert f0.height == 2 and f0["rank"].to_list() == [1, 2] and f0["f0_sd_st"].is_sorted(descending=True)


def test_prepare_user_errors_exit_2(tmp_path):
    runner = CliRunner()
    for args in (["prepare", "agreement", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
                 ["prepare", "select", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
                 ["prepare", "compress-silence", str(tmp_path), str(tmp_path / "o"), "--keep", "3"],
                 ["prepare", "compress-silence", str(tmp_path), str(tmp_path / "inside")]):
        r = runner.invoke(main, args)
        assert r.exit_code == 2, (args, r.output)
        assert "Traceback" not in r.output
