"""Discovery of calls in every layout, and the discovery-time bad inputs."""

import os
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from cusemo_batch.calls import DiscoveryOptions, RTTMError, discover, read_metadata, read_rttm

EXAMPLES = Path(__file__).resolve().parents[1] / "examples" / "calls"


def test_demo_calls_cover_every_layout():
    calls, errors = discover(EXAMPLES)
    assert errors == []
    by_id = {c.call_id: c for c in calls}
    assert {k: v.layout for k, v in by_id.items()} == {
        "anger_escalation": "stereo", "recovery": "rttm", "steady": "per-speaker", "negative_end": "mono"}
    assert by_id["anger_escalation"].speakers["agent"].channel == 0
    assert by_id["anger_escalation"].speakers["client"].channel == 1
    # RTTM labels SPEAKER_00/01 are not role names: kept as labels unless mapped with --roles
    assert set(by_id["recovery"].speakers) == {"SPEAKER_00", "SPEAKER_01"}
    mapped, _ = discover(EXAMPLES, DiscoveryOptions(roles={"SPEAKER_00": "agent", "SPEAKER_01": "client"}))
    rec = {c.call_id: c for c in mapped}["recovery"]
    assert rec.speakers["client"].rttm_labels == ("SPEAKER_01",)
    assert set(by_id["steady"].speakers) == {"agent", "client"}
    assert set(by_id["negative_end"].speakers) == {"client"}
    only_client, _ = discover(EXAMPLES, DiscoveryOptions(speakers=("client",), roles={"SPEAKER_01": "client"}))
    assert all(set(c.speakers) == {"client"} for c in only_client) and len(only_client) == 4
    meta = read_metadata(EXAMPLES)
    assert set(meta.rows) == set(by_id) and meta.lines["anger_escalation"] >= 2


def _wav(path: Path, channels: int = 1, seconds: float = 1.0):
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros((int(8000 * seconds), channels), np.float32), 8000)


def test_flat_suffix_layout_and_duplicates(tmp_path):
    _wav(tmp_path / "c1_client.wav")
    _wav(tmp_path / "c1_agent.wav")
    _wav(tmp_path / "a" / "dup.wav")
    _wav(tmp_path / "b" / "dup.flac")
    _wav(tmp_path / "three.wav", channels=3)
    calls, errors = discover(tmp_path)
    assert [(c.call_id, c.layout, sorted(c.speakers)) for c in calls] == [("c1", "per-speaker", ["agent", "client"])]
    kinds = {e.call_id: e.error for e in errors}
    assert kinds == {"dup": "DuplicateCallId", "three": "ChannelMismatch"}
    calls, errors = discover(tmp_path, DiscoveryOptions(channels=("agent", "client", "supervisor")))
    assert "three" in {c.call_id for c in calls}


def test_symlink_outside_refused_unless_followed(tmp_path):
    outside = tmp_path / "elsewhere"
    _wav(outside / "x.wav")
    root = tmp_path / "calls"
    _wav(root / "ok.wav")
    os.symlink(outside / "x.wav", root / "linked.wav")
    calls, errors = discover(root)
    assert [c.call_id for c in calls] == ["ok"]
    assert [(e.call_id, e.error) for e in errors] == [("linked", "SymlinkOutside")]
    calls, errors = discover(root, DiscoveryOptions(follow_symlinks=True))
    assert sorted(c.call_id for c in calls) == ["linked", "ok"] and errors == []


def test_rttm_parsing(tmp_path):
    p = tmp_path / "a.rttm"
    p.write_text("SPEAKER a 1 0.50 1.25 <NA> <NA> spk1 <NA> <NA>\nSPEAKER a 1 2.0 1.0 <NA> <NA> spk2 <NA> <NA>\n")
    segs = read_rttm(p)
    assert [(s.onset_s, s.end_s, s.label) for s in segs] == [(0.5, 1.75, "spk1"), (2.0, 3.0, "spk2")]
    p.write_text("SPEAKER a 1 zero 1.0 <NA> <NA> spk1 <NA> <NA>\n")
    with pytest.raises(RTTMError, match=r"a.rttm:1: onset/duration not numbers"):
        read_rttm(p)
    p.write_text("garbage line here\n")
    with pytest.raises(RTTMError, match="not an RTTM line"):
        read_rttm(p)
