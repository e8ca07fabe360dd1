"""Corpus reading and validation: both track formats, gold standard, and every listed error."""

import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cusemo_batch.training.corpus import CorpusError, read_corpus, read_track
from cusemo_batch.training.labels import binary_target, gold_at_rate, gold_standard, interval_target


def make_corpus(root: Path, n_calls: int = 2, seconds: float = 4.0) -> Path:
    """A small synthetic corpus (noise audio) in the CusEmo layout, valid by construction."""
    (root / "audio").mkdir(parents=True)
    rows = ["call_id,annotator,gender,role,empathy,engagement,urgency,satisfaction,purpose,resolution"]
    for i in range(n_calls):
        cid = f"call{i}"
        sf.write(root / "audio" / f"{cid}.wav", np.random.default_rng(i).normal(0, 0.1, int(8000 * seconds)), 8000)
        d = root / "annotations" / cid
        d.mkdir(parents=True)
        n = int(seconds / 0.5)
        lines = ["Time of Rating,24-Nov-2026 10:12:03,,", f"Multimedia File,{cid}.wav,,", "Magnitude,1000,,",
                 "Second,Valence,Arousal,Button", "%%%%%%,%%%%%%,%%%%%%,%%%%%%"]
        lines += [f"{(k + 1) * 0.5:g},{100 * k},{-50 * k},0" for k in range(n)]
        (d / "ann1.csv").write_text("\n".join(lines) + "\n")
        (d / "ann2.csv").write_text("time_s,valence,arousal\n" + "".join(
            f"{(k + 1) * 0.5:g},{100 * k + 20},{-50 * k - 10}\n" for k in range(n)))
        rows += [f"{cid},ann1,F,client,6,5,3,7,issue,resolved", f"{cid},ann2,F,client,8,5,3,7,issue,resolved"]
    (root / "context.csv").write_text("\n".join(rows) + "\n")
    return root


def test_reads_darma_and_plain_and_builds_gold(tmp_path):
    corpus = read_corpus(make_corpus(tmp_path / "c"))
    assert [c.call_id for c in corpus.calls] == ["call0", "call1"]
    call = corpus.calls[0]
    assert {t.annotator for t in call.tracks} == {"ann1", "ann2"}
    assert call.tracks[0].bin_s == pytest.approx(0.5)
    gold = gold_standard(call, "mean")
    np.testing.assert_allclose(gold.valence, (np.arange(8) * 100 + 10) / 1000)
    np.testing.assert_allclose(gold.arousal, (-np.arange(8) * 50 - 5) / 1000)
    np.testing.assert_allclose(gold_standard(call, "single", "ann2").valence, (np.arange(8) * 100 + 20) / 1000)
    assert interval_target(call, "empathy") == pytest.approx(0.7)  # mean of 6 and 8, scaled /10
    assert binary_target(call, "gender") == 1.0
    assert len(gold_at_rate(gold, 100)) == 40


def test_darma_nan_gaps(tmp_path):
    p = tmp_path / "t.csv"
    head = "Magnitude,1000,,\nSecond,V,A,Button\n%%%%%%,%%%%%%,%%%%%%,%%%%%%\n"
    body = "0.5,100,0,0\n1,NaN,,0\n1.5,300,20,0\n2,400,30,1\n"
    p.write_text(head + body)
    t = read_track(p)
    np.testing.assert_allclose(t.valence, [100, 200, 300, 400])
    np.testing.assert_allclose(t.arousal, [0, 10, 20, 30])
    problems = []
    p.write_text(head + "0.5,100,0,0\n" + "".join(f"{k * 0.5:g},NaN,NaN,0\n" for k in range(2, 9)) + "4.5,1,1,0\n")
    assert read_track(p, max_gap_s=2.0, problems=problems) is None
    assert any("gap of 3.5 s" in str(x) for x in problems)


@pytest.mark.parametrize("breakage, expected", [
    ("missing_track", "1 annotation track(s), at least 2 required"),
    ("out_of_range", "valence 1500 outside ±1000"),
    ("non_monotonic", "is not after the previous"),
    ("short_audio", "labels run to 4 s but the audio lasts 2.00 s"),
    ("bad_gender", "unknown gender 'X'"),
    ("orphan_annotation", "annotations for call 'ghost' which has no audio"),
    ("not_a_track", "neither a DARMA export"),
    ("bad_audio", "not readable as audio"),
])
def test_bad_corpora_report_file_and_line(tmp_path, breakage, expected):
    root = make_corpus(tmp_path / "c")
    ann = root / "annotations" / "call1"
    if breakage == "missing_track":
        (ann / "ann2.csv").unlink()
    elif breakage == "out_of_range":
        (ann / "ann2.csv").write_text("time_s,valence,arousal\n0.5,10,0\n1,1500,0\n")
    elif breakage == "non_monotonic":
        (ann / "ann2.csv").write_text("time_s,valence,arousal\n0.5,10,0\n1,10,0\n0.5,0,0\n")
    elif breakage == "short_audio":
        sf.write(root / "audio" / "call1.wav", np.zeros(16000), 8000)
    elif breakage == "bad_gender":
        ctx = root / "context.csv"
        ctx.write_text(ctx.read_text().replace("call1,ann1,F", "call1,ann1,X"))
    elif breakage == "orphan_annotation":
        shutil.copytree(ann, root / "annotations" / "ghost")
    elif breakage == "not_a_track":
        (ann / "ann2.csv").write_text("hello,world\n1,2\n")
    elif breakage == "bad_audio":
        (root / "audio" / "call1.wav").write_bytes(b"RIFF0000WAVEjunk")
    with pytest.raises(CorpusError) as e:
        read_corpus(root)
    text = str(e.value)
    assert expected in text, text
    if breakage == "out_of_range":
        assert "ann2.csv:3:" in text  # file and line
    if breakage == "non_monotonic":
        assert "ann2.csv:4:" in text
    if breakage == "bad_gender":
        assert "context.csv:4:" in text


def test_all_problems_listed_at_once(tmp_path):
    root = make_corpus(tmp_path / "c", n_calls=3)
    (root / "annotations" / "call0" / "ann1.csv").unlink()
    (root / "annotations" / "call2" / "ann2.csv").write_text("time_s,valence,arousal\n0.5,-2000,0\n")
    with pytest.raises(CorpusError) as e:
        read_corpus(root)
    assert len(e.value.problems) == 2
