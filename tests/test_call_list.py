"""``--manifest``: a night's calls listed in a CSV / Parquet / JSONL file instead of found in a folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from cusemo_batch.call_list import CallListError, read_call_list
from cusemo_batch.calls import DiscoveryOptions, MetadataError

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples" / "calls"
ROLES = "SPEAKER_00=agent,SPEAKER_01=client"
RUN_COLUMNS = {"run_id", "scored_at", "occurred_at"}


def cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cusemo_batch", *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def table(out: Path, name: str) -> pl.DataFrame:
    files = sorted((out / name).glob("date=*/*.parquet"))
    df = pl.read_parquet(files, hive_partitioning=True, missing_columns="insert")
    df = df.drop([c for c in df.columns if c in RUN_COLUMNS])
    return df.sort([c for c in ("call_id", "speaker", "t_start_s", "kind") if c in df.columns])


def demo_rows() -> list[dict]:
    """The demo calls as call-list rows (paths relative to examples/calls), with calls.csv's columns."""
    meta = {r["call_id"]: r for r in pl.read_csv(EXAMPLES / "calls.csv", infer_schema=False).iter_rows(named=True)}
    files = {"anger_escalation": "anger_escalation.flac", "negative_end": "negative_end.flac",
             "recovery": "recovery.flac", "steady": "steady/agent.flac;steady/client.flac"}
    rows = []
    for cid, f in files.items():
        row = {"call_id": cid, "files": f, "rttm": "recovery.rttm" if cid == "recovery" else "",
               "roles": ROLES if cid == "recovery" else ""}
        rows.append(row | {k: v for k, v in meta[cid].items() if k != "call_id"})
    return rows


def write_csv(path: Path, rows: list[dict]) -> Path:
    pl.DataFrame(rows).write_csv(path)
    return path


def test_csv_jsonl_and_parquet_lists_give_the_same_calls(tmp_path):
    rows = demo_rows()
    calls = tmp_path / "calls"  # the lists' paths are relative to their folder
    shutil.copytree(EXAMPLES, calls)
    csv_list = write_csv(calls / "night.csv", rows)
    jsonl = calls / "night.jsonl"
    jsonl.write_text("".join(json.dumps(r | {"files": r["files"].split(";")}) + "\n" for r in rows))
    parquet = calls / "night.parquet"
    pl.DataFrame(rows).write_parquet(parquet)
    found = {}
    for lst in (csv_list, jsonl, parquet):
        listing = read_call_list(lst)
        got, errors = listing.discover(DiscoveryOptions())
        assert errors == [], errors
        found[lst.suffix] = sorted((c.call_id, c.layout, tuple(sorted(c.speakers)), c.files) for c in got)
        assert listing.metadata.columns == ("call_id", "date", "queue", "agent_id")
        assert listing.metadata.rows["steady"]["queue"] == "sales"
    assert found[".csv"] == found[".jsonl"] == found[".parquet"]
    layouts = {cid: (layout, speakers) for cid, layout, speakers, _ in found[".csv"]}
    assert layouts == {"anger_escalation": ("stereo", ("agent", "client")), "negative_end": ("mono", ("client",)),
                       "recovery": ("rttm", ("agent", "client")), "steady": ("per-speaker", ("agent", "client"))}
    assert all(p.is_absolute() for *_, files in found[".csv"] for p in files)


def test_a_call_list_scores_like_the_folder(tmp_path):
    """The demo calls listed in a file: the same rows as walking the folder (metadata columns included)."""
    calls = tmp_path / "calls"
    shutil.copytree(EXAMPLES, calls)
    lst = write_csv(calls / "night.csv", demo_rows())
    a, b = tmp_path / "folder", tmp_path / "listed"
    r = cli("score", EXAMPLES, "--out", a, "--roles", ROLES, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    r = cli("score", "--manifest", lst, "--out", b, "--roles", ROLES, "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert "4 scored, 0 skipped, 0 failed of 4 calls" in r.stdout
    for name in ("timeseries", "calls", "events"):
        assert table(a, name).equals(table(b, name), null_equal=True), name
    runs = pl.read_parquet(list((b / "runs").rglob("*.parquet")))
    assert runs["calls_dir"].to_list() == [str(lst.resolve())]
    r = cli("score", "--manifest", lst, "--out", b, "--roles", ROLES, "--device", "cpu")  # incremental
    assert r.returncode == 0 and "0 scored, 4 skipped" in r.stdout, r.stdout


def test_bad_rows_are_error_rows_and_the_night_goes_on(tmp_path):
    calls = tmp_path / "calls"
    shutil.copytree(EXAMPLES, calls)
    (calls / "a_folder.wav").mkdir()
    os.mkfifo(calls / "pipe.wav")
    hive = calls / "date=2026-12-01"
    hive.mkdir()
    shutil.copy(EXAMPLES / "negative_end.flac", hive / "x.flac")
    rows = [
        {"call_id": "ok", "files": "negative_end.flac", "roles": "", "date": "2026-11-25"},
        {"call_id": "hive", "files": "date=2026-12-01/x.flac", "roles": "", "date": ""},  # '=' in a path
        {"call_id": "explicit", "files": f"client={calls / 'steady/client.flac'}", "roles": "", "date": ""},
        {"call_id": "missing", "files": "nowhere.wav", "roles": "", "date": ""},
        {"call_id": "dir", "files": "a_folder.wav", "roles": "", "date": ""},
        {"call_id": "fifo", "files": "pipe.wav", "roles": "", "date": ""},  # never opened: no hang
        {"call_id": "noname", "files": "negative_end.flac;recovery.flac", "roles": "", "date": ""},
        {"call_id": "badroles", "files": "recovery.flac", "roles": "SPEAKER_00", "date": ""},
        {"call_id": "missing_rttm", "files": "recovery.flac", "rttm": "nope.rttm", "roles": "", "date": ""},
        {"call_id": "notadate", "files": "anger_escalation.flac", "roles": "", "date": "2026-02-30"},
    ]
    lst = write_csv(calls / "night.csv", [r | {"rttm": r.get("rttm", "")} for r in rows])
    out = tmp_path / "out"
    r = cli("score", "--manifest", lst, "--out", out, "--device", "cpu")
    assert r.returncode == 1, r.stderr
    assert "Traceback" not in r.stderr
    errors = table(out, "errors")
    got = {cid: (stage, err) for cid, stage, err in errors.select("call_id", "stage", "error").rows()}
    assert got == {
        "missing": ("discover", "MissingFile"), "dir": ("discover", "NotARegularFile"),
        "fifo": ("discover", "NotARegularFile"), "noname": ("discover", "UnknownSpeaker"),
        "badroles": ("discover", "BadCallListRow"), "missing_rttm": ("discover", "MissingFile"),
        "notadate": ("metadata", "BadMetadata"),
    }
    assert "night.csv:11: date '2026-02-30'" in errors.filter(pl.col("call_id") == "notadate")["message"][0]
    scored = table(out, "calls")
    assert set(scored["call_id"]) == {"ok", "hive", "explicit"}
    assert scored.filter(pl.col("call_id") == "explicit")["layout"].to_list() == ["per-speaker"]


@pytest.mark.parametrize("name, text, message", [
    ("no_files.csv", "call_id,date\na,2026-11-25\n", "no_files.csv:1: no files column"),
    ("dupe.csv", "call_id,files\na,x.wav\nb,y.wav\na,z.wav\n",
     "dupe.csv:4: call_id 'a' is listed twice (first on line 2)"),
    ("empty_id.csv", "call_id,files\n,x.wav\n", "empty_id.csv:2: empty call_id"),
    ("extra.csv", "call_id,files\na,x.wav,oops\n", "extra.csv:2: 3 fields, the header has 2"),
    ("reserved.csv", "call_id,files,call_date\na,x.wav,2026-11-25\n", "column 'call_date' is reserved"),
    ("broken.jsonl", '{"call_id": "a", "files": "x.wav"}\n{"call_id": "b", "files": \n', "broken.jsonl:2: not JSON"),
    ("list.jsonl", '["a", "x.wav"]\n', "list.jsonl:1: a JSON object per line expected"),
    ("night.txt", "call_id,files\n", "unknown call list format '.txt'"),
    ("bad.parquet", "not parquet", "bad.parquet: cannot read"),
])
def test_a_list_that_cannot_be_used_as_a_whole_is_a_metadata_error(tmp_path, name, text, message):
    p = tmp_path / name
    p.write_text(text)
    with pytest.raises(CallListError) as e:
        read_call_list(p)
    assert isinstance(e.value, MetadataError) and message in str(e.value), str(e.value)


def test_cli_exit_2_before_out_is_touched(tmp_path):
    out = tmp_path / "out"
    bad = tmp_path / "dupe.csv"
    bad.write_text("call_id,files\na,x.wav\na,y.wav\n")
    r = cli("score", "--manifest", bad, "--out", out)
    assert r.returncode == 2 and "dupe.csv:3: call_id 'a' is listed twice" in r.stderr, r.stderr
    r = cli("score", "--manifest", tmp_path / "missing.csv", "--out", out)
    assert r.returncode == 2 and "no such file" in r.stderr, r.stderr
    r = cli("score", "--out", out)  # neither CALLS nor --manifest
    assert r.returncode == 2 and "CALLS or --manifest" in r.stderr, r.stderr
    r = cli("score", EXAMPLES, "--manifest", bad, "--out", out)  # both
    assert r.returncode == 2 and "CALLS or --manifest" in r.stderr, r.stderr
    assert not out.exists()
