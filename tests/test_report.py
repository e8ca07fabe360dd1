"""The morning report (`cusemo-batch report`): built from real `score` output of the demo calls,
checked as HTML (parses, one figure per flagged call, no external URL, bounded size, escaped data)
and in a real browser (headless Chromium renders it, figures in the DOM, screenshot not blank)."""

from __future__ import annotations

import datetime as dt
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from cusemo_batch.metadata import expand_metadata, join_metadata, metadata_json
from cusemo_batch import report
from cusemo_batch.report import PROBLEM_FLAGS, ReportError, build

REPO = Path(__file__).resolve().parents[1]
D24, D25 = dt.date(2026, 11, 24), dt.date(2026, 11, 25)


# ------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def demo_out(tmp_path_factory) -> Path:
    """The demo calls scored exactly as README says (embedded model), once for the module."""
    out = tmp_path_factory.mktemp("demo") / "out"
    r = subprocess.run([sys.executable, "-m", "cusemo_batch", "score", str(REPO / "examples" / "calls"), "--out",
                        str(out), "--roles", "SPEAKER_00=agent,SPEAKER_01=client"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return out


def read_table(out: Path, table: str) -> pl.DataFrame:
    """A whole table, read independently of the report module (the test's own view of the store)."""
    return pl.scan_parquet(f"{out}/{table}/**/*.parquet", hive_partitioning=True, missing_columns="insert").collect()


def flagged_calls(out: Path, day: dt.date | None = None, speaker: str | None = None) -> set[str]:
    """Call ids with a problem flag, computed straight from the calls table."""
    c = read_table(out, "calls")
    if day is not None:
        c = c.filter(pl.col("date") == day)
    if speaker is not None:
        c = c.filter(pl.col("speaker") == speaker)
    return set(c.filter(pl.any_horizontal(*PROBLEM_FLAGS))["call_id"])


def write_night(src: Path, dst: Path, n: int, day: dt.date = D24, tile: int = 1, rename=None,
                meta=None, no_flags: bool = False, errors: pl.DataFrame | None = None,
                flagged_only: bool = False, calls_columns: dict | None = None) -> Path:
    """A synthetic store: ``n`` calls cut from the real demo output (flagged ones first, cycled),
    each ``tile`` times as long (the call repeated end to end, events shifted), written in the
    store's layout (one file per call per table). ``rename(i, call_id)`` names them, ``meta``
    overrides metadata columns, ``no_flags`` clears every flag, ``flagged_only`` cycles through the
    flagged calls only, ``calls_columns`` sets columns of ``calls`` to values; runs are copied."""
    calls, ts, ev = (read_table(src, t).drop("date") for t in ("calls", "timeseries", "events"))
    flagged = flagged_calls(src)
    order = sorted(set(calls["call_id"]) & flagged if flagged_only else set(calls["call_id"]),
                   key=lambda c: (c not in flagged, c))
    for i in range(n):
        cid = order[i % len(order)]
        new = rename(i, cid) if rename else f"call-{i:03d}"
        c = calls.filter(pl.col("call_id") == cid)
        dur = float(c["duration_s"].max())
        t = ts.filter(pl.col("call_id") == cid)
        t = pl.concat([t.with_columns(pl.col("t_start_s") + k * dur, pl.col("t_end_s") + k * dur) for k in range(tile)])
        e = ev.filter(pl.col("call_id") == cid)
        e = pl.concat([e.with_columns(pl.col(x) + k * dur for x in ("t_start_s", "t_end_s", "t_change_s"))
                       for k in range(tile)])
        c = c.with_columns(pl.col("duration_s") * tile, call_date=pl.lit(day, pl.Date))
        if no_flags:
            c = c.with_columns(pl.lit(False).alias(f) for f in (*PROBLEM_FLAGS, "recovery"))
            e = e.head(0)
        if meta:
            c = c.with_columns(pl.lit(metadata_json(meta)).alias("metadata"))
        if calls_columns:
            c = c.with_columns(pl.lit(v, c.schema[k]).alias(k) for k, v in calls_columns.items())
        for table, df in (("calls", c), ("timeseries", t), ("events", e)):
            folder = dst / table / f"date={day}"
            folder.mkdir(parents=True, exist_ok=True)
            df.with_columns(pl.lit(new).alias("call_id")).write_parquet(folder / f"call{i:03d}.parquet")
    for table in ("runs", "errors"):
        shutil.copytree(src / table, dst / table, dirs_exist_ok=True)
    if errors is not None:
        folder = dst / "errors" / f"date={day}"
        folder.mkdir(parents=True, exist_ok=True)
        errors.write_parquet(folder / "synthetic.parquet")
    return dst


class Checker(HTMLParser):
    """Strict enough to fail: every non-void element closed in order; counts tags and classes."""

    VOID = {"meta", "br", "hr", "img", "input", "link", "col", "source", "wbr", "area", "base", "embed", "track",
            "param"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.tags: dict[str, int] = {}
        self.classes: dict[str, int] = {}
        self.ids: list[str] = []
        self.hrefs: list[str] = []
        self.text: list[str] = []
        self.in_svg = 0

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags[tag] = self.tags.get(tag, 0) + 1
        for c in (a.get("class") or "").split():
            self.classes[f"{tag}.{c}"] = self.classes.get(f"{tag}.{c}", 0) + 1
        if "id" in a:
            self.ids.append(a["id"])
        if "href" in a:
            self.hrefs.append(a["href"])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_startendtag(self, tag, attrs):  # <path .../> in SVG
        self.tags[tag] = self.tags.get(tag, 0) + 1
        a = dict(attrs)
        if "id" in a:
            self.ids.append(a["id"])
        if "href" in a:
            self.hrefs.append(a["href"])

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes <{self.stack[-1] if self.stack else None}>")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(path: Path) -> Checker:
    p = Checker()
    p.feed(path.read_text(encoding="utf-8"))
    p.close()
    assert not p.errors, p.errors[:5]
    assert p.stack == [], p.stack
    assert len(p.ids) == len(set(p.ids)), "duplicate ids across inline figures"
    internal = [h for h in p.hrefs if h.startswith("#")]
    assert all(h[1:] in p.ids for h in internal), "a link points nowhere"
    return p


# ----------------------------------------------------------------------------- report from score
def test_demo_night(demo_out, tmp_path):
    path = build(demo_out, date=D24, output=tmp_path / "r.html")
    text = path.read_text(encoding="utf-8")
    p = parse(path)
    flagged = flagged_calls(demo_out, D24)
    # the embedded model's demo night (README's table): anger_escalation and recovery; steady is calm
    assert len(flagged) == 2
    assert p.classes.get("figure.call-plot") == len(flagged)
    assert p.tags["svg"] == len(flagged)  # one figure per call, nothing else drawn for one night
    assert "http" not in text and "<script" not in text and "url(http" not in text
    assert 20_000 < path.stat().st_size < 300_000
    body = " ".join(p.text)
    for cid in flagged:
        assert cid in body
    assert "negative_end" not in body  # a call of the other night
    assert "billing" in body and "support" in body and "A017" in body  # calls.csv metadata columns
    assert "A042" not in body  # the steady call's agent: nothing flagged there
    assert "dBFS" in body and not re.search(r"clipping \d", body)  # each speaker's line level; no demo line clips
    assert "No errors." in body
    # severity: the ranked table follows the number of problem flags computed from the table
    c = read_table(demo_out, "calls").filter(pl.col("date") == D24)
    n = (c.group_by("call_id").agg(pl.sum_horizontal(*PROBLEM_FLAGS).sum().alias("n")).sort("call_id"))
    first = report.rank_calls(c, read_table(demo_out, "events").filter(pl.col("date") == D24))
    # ... over the flagged calls only (steady, with none, is not ranked)
    assert first["n_flags"].to_list() == sorted((k for k in n["n"].to_list() if k), reverse=True)
    assert set(first["call_id"]) == flagged
    anchors = [h for h in p.hrefs if h.startswith("#call-")]
    assert len(anchors) == len(flagged)


def test_default_night_is_latest_date_with_calls(demo_out, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = build(demo_out)
    assert path == Path("report-2026-11-25.html")
    p = parse(path)
    assert p.classes.get("figure.call-plot") == len(flagged_calls(demo_out, D25)) == 1
    body = " ".join(p.text)
    assert "2026-11-25" in body and "anger_escalation" not in body
    # a one-speaker call (mono): only the client is drawn
    svg = path.read_text(encoding="utf-8")
    assert " client" in svg and " agent" not in svg.split('class="call-plot"')[1]


def test_range_has_trend(demo_out, tmp_path):
    path = build(demo_out, date_from=D24, date_to=D25, output=tmp_path / "r.html")
    p = parse(path)
    assert p.classes.get("figure.call-plot") == len(flagged_calls(demo_out)) == 3
    assert p.classes.get("figure.trend-plot") == 1
    rates = report.flag_rates(read_table(demo_out, "calls"))
    assert rates["date"].to_list() == [D24, D25] and rates["calls"].to_list() == [3, 1]
    body = " ".join(p.text)
    assert "Flag rates per day" in body


def test_speaker_filter_and_user_errors(demo_out, tmp_path):
    path = build(demo_out, date=D24, speaker="agent", output=tmp_path / "a.html")
    agent = flagged_calls(demo_out, D24, "agent")
    # the embedded model's demo night (README's table): both agents of the 24th have a flag (the
    # anger_escalation agent's valence_drop, the recovery agent's arousal_spike)
    assert parse(path).classes.get("figure.call-plot") == len(agent) == 2
    # over both nights the agent filter drops a call the full report shows (the 25th has a client only)
    both = build(demo_out, date_from=D24, date_to=D25, speaker="agent", output=tmp_path / "b.html")
    agent = flagged_calls(demo_out, speaker="agent")
    assert parse(both).classes.get("figure.call-plot") == len(agent) == 2
    assert agent < flagged_calls(demo_out)
    with pytest.raises(ReportError, match="no speaker 'custmer'.*client, agent"):
        build(demo_out, date=D24, speaker="custmer", output=tmp_path / "x.html")
    with pytest.raises(ReportError, match="no calls, errors or runs for 2026-10-01"):
        build(demo_out, date="2026-10-01", output=tmp_path / "x.html")
    with pytest.raises(ReportError, match="not a cusemo-batch store"):
        build(tmp_path / "nope", output=tmp_path / "x.html")
    with pytest.raises(ReportError, match="both ends"):
        build(demo_out, date_from=D24, output=tmp_path / "x.html")
    assert not (tmp_path / "x.html").exists()


def test_errors_of_the_night_grouped(demo_out, tmp_path):
    """A real failing night: an unreadable file (discovery error, filed under the run date) and a
    call with too little speech (filed under its calls.csv date) both show, grouped."""
    calls = tmp_path / "calls"
    shutil.copytree(REPO / "examples" / "calls", calls)
    (calls / "ghost.wav").write_bytes(b"not audio <b>bold</b>")
    import soundfile as sf

    sf.write(calls / "hum.wav", np.zeros(8000 * 3, dtype="float32"), 8000)
    with open(calls / "calls.csv", "a") as f:
        f.write("hum,2026-11-24,billing,A099\n")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "cusemo_batch", "score", str(calls), "--out", str(out),
                        "--roles", "SPEAKER_00=agent,SPEAKER_01=client"], capture_output=True, text=True)
    assert r.returncode == 1, r.stderr
    errs = read_table(out, "errors")
    assert {"ghost", "hum"} <= set(errs["call_id"]) and errs["date"].n_unique() == 2
    path = build(out, date=D24, output=tmp_path / "r.html")
    p = parse(path)
    body = " ".join(p.text)
    assert "No errors." not in body
    for g in report.error_groups(errs).iter_rows(named=True):
        assert g["error"] in body and g["stage"] in body
    assert "ghost" in body and "hum" in body
    assert "<b>bold</b>" not in path.read_text(encoding="utf-8")


# --------------------------------------------------------------------------------- edge cases
def test_night_where_everything_failed(tmp_path):
    """No calls rows at all: the default night is the latest run's date, and the page shows its errors."""
    (tmp_path / "calls").mkdir()
    (tmp_path / "calls" / "ghost.wav").write_bytes(b"junk")
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "cusemo_batch", "score", str(tmp_path / "calls"), "--out", str(out)],
                       capture_output=True, text=True)
    assert r.returncode == 1, r.stderr
    path = build(out, output=tmp_path / "r.html")
    body = " ".join(parse(path).text)
    run_date = read_table(out, "runs")["date"].item()
    assert f"night {run_date}" in body and "No call was scored" in body
    assert "UnreadableAudio" in body and "ghost" in body and "Nothing flagged" not in body


def test_hostile_strings_are_escaped(demo_out, tmp_path):
    evil = '<script>alert("x")</script>'
    errs = pl.DataFrame({"call_id": [evil], "file": ["f"], "stage": ["read"], "error": ["<img src=x onerror=alert(1)>"],
                         "message": ['"><iframe src="javascript:alert(1)">'], "score_key": [""],
                         "occurred_at": [dt.datetime(2026, 11, 25, tzinfo=dt.timezone.utc)],
                         "run_id": ["r"], "model_id": ["m"], "model_sha256": ["s"]},
                        schema_overrides={"occurred_at": pl.Datetime("us", "UTC")})
    out = write_night(demo_out, tmp_path / "out", 2, rename=lambda i, c: f'{evil}{i}" \'q',
                      meta={"queue": "</td></tr></table><script>alert(2)</script>", "agent_id": "A&B"}, errors=errs)
    path = build(out, date=D24, output=tmp_path / "r.html")
    text = path.read_text(encoding="utf-8")
    p = parse(path)
    assert "<script" not in text and "<iframe" not in text and "<img" not in text
    assert p.tags.get("script") is None and p.tags.get("iframe") is None
    body = " ".join(p.text)
    assert f'{evil}0" \'q' in body  # shown as text, intact
    assert "A&B" in body and "</td></tr></table><script>alert(2)</script>" in body
    assert p.classes.get("figure.call-plot") == 2


def test_nothing_flagged(demo_out, tmp_path):
    out = write_night(demo_out, tmp_path / "out", 3, no_flags=True)
    path = build(out, date=D24, output=tmp_path / "r.html")
    p = parse(path)
    body = " ".join(p.text)
    assert "Nothing flagged." in body and "3 call(s) scored" in body
    assert p.classes.get("figure.call-plot") is None and p.tags.get("svg") is None
    assert path.stat().st_size < 15_000


def test_a_clipping_line_is_called_out(demo_out, tmp_path):
    """A speaker whose line clips gets a warning beside its flags (clipping reads as agitation);
    a trace of full-scale samples below the threshold does not."""
    hot = write_night(demo_out, tmp_path / "hot", 1, flagged_only=True, calls_columns={"clipped_fraction": 0.02})
    body = " ".join(parse(build(hot, date=D24, output=tmp_path / "hot.html")).text)
    assert "clipping 2.0 %" in body
    trace = write_night(demo_out, tmp_path / "trace", 1, flagged_only=True,
                        calls_columns={"clipped_fraction": report.CLIP_WARN / 2})
    assert not re.search(r"clipping \d", " ".join(parse(build(trace, date=D24, output=tmp_path / "trace.html")).text))
    old = write_night(demo_out, tmp_path / "old", 1, flagged_only=True,  # rows scored before schema 4
                      calls_columns={"clipped_fraction": None, "input_level_dbfs": None})
    assert parse(build(old, date=D24, output=tmp_path / "old.html")).tags.get("svg") == 1


def test_fifty_flagged_calls_stay_small_and_top_n(demo_out, tmp_path):
    """50 flagged calls of 5-6 minutes (the demo calls repeated 6x): under the 2 MB e-mail budget;
    --top bounds the figures while the table keeps every flagged call."""
    out = write_night(demo_out, tmp_path / "out", 50, tile=6, flagged_only=True)
    assert len(flagged_calls(out, D24)) == 50
    path = build(out, date=D24, output=tmp_path / "r.html")
    p = parse(path)
    assert p.classes.get("figure.call-plot") == 50
    assert path.stat().st_size < 2_000_000, path.stat().st_size
    path5 = build(out, date=D24, top=5, output=tmp_path / "r5.html")
    p5 = parse(path5)
    assert p5.classes.get("figure.call-plot") == 5
    assert len([h for h in p5.hrefs if h.startswith("#call-")]) == 5
    assert p5.tags["tr"] >= 51 and "Figures for the first 5 of 50 flagged calls" in " ".join(p5.text)


# ------------------------------------------------------------------------------ pure shaping
def test_silence_runs():
    t0 = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]
    t1 = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0]
    assert report.silence_runs(t0, t1, [0.1, None, None, 0.2, None, float("nan")]) == [(0.5, 1.5), (2.0, 3.0)]
    assert report.silence_runs(t0, t1, [0.1] * 6) == []
    assert report.silence_runs([], [], []) == []


def test_decimate_keeps_extremes_and_gaps():
    t = np.arange(10_000) * 0.5
    y = np.sin(t / 50)
    y[5000] = 0.99 if y[5000] < 0.5 else -0.99  # a one-window spike
    y[7000:7100] = np.nan
    tt, yy = report.decimate(t, y, 300)
    assert len(tt) <= 3 * 300 and np.all(np.diff(tt) >= 0)
    assert y[5000] in yy and np.nanmax(yy) == np.nanmax(y) and np.nanmin(yy) == np.nanmin(y)
    assert np.isnan(yy).any()
    short = np.arange(10.0)
    assert report.decimate(short, short, 300)[1] is not None and len(report.decimate(short, short, 300)[0]) == 10


def test_metadata_json_round_trip():
    """calls.csv columns stored as one JSON column come back as text columns; clashes get ``meta_``."""
    calls = pl.DataFrame({"call_id": ["a", "b", "c"], "speaker": ["client"] * 3})
    rows = [{"call_id": "a", "date": "2026-11-24", "queue": "billing", "speaker": "x", "note": "é \"q\""},
            {"call_id": "b", "queue": "sales"}]
    joined = join_metadata(calls, rows)
    assert joined.columns == ["call_id", "speaker", "call_date", "metadata"]
    assert joined["call_date"].to_list() == [D24, None, None]
    assert joined["metadata"].to_list()[2] == "{}"
    wide, names = expand_metadata(joined, reserved=("date",))
    assert names == ["note", "queue", "meta_speaker"]  # in the order of the keys
    assert wide["queue"].to_list() == ["billing", "sales", None]
    assert wide["note"].to_list() == ['é "q"', None, None] and wide["meta_speaker"].to_list() == ["x", None, None]


def test_rank_calls_orders_by_flags_then_event():
    day = D24
    calls = pl.DataFrame({
        "date": [day] * 5, "call_id": ["a", "a", "b", "c", "d"],
        "speaker": ["client", "agent", "client", "client", "client"],
        "duration_s": [60.0, 60.0, 90.0, 30.0, 40.0], "longest_negative_s": [0.0, 0.0, 12.0, 0.0, 0.0],
        "valence_drop": [True, False, True, False, False], "arousal_spike": [False, False, True, False, False],
        "negative_end": [False, True, False, False, False], "sustained_negative": [False, False, False, False, False],
        "recovery": [True, False, False, True, False], "queue": ["q1", "q1", "q2", "q3", "q4"]})
    events = pl.DataFrame({"date": [day] * 3, "call_id": ["a", "b", "b"], "speaker": ["client"] * 3,
                           "kind": ["valence_drop", "valence_drop", "arousal_spike"],
                           "t_change_s": [10.0, 20.0, 30.0], "level_before": [0.4, 0.1, -0.2],
                           "level_after": [-0.9, -0.3, 0.5], "magnitude": [-1.3, -0.4, 0.7]})
    r = report.rank_calls(calls, events, meta_cols=["queue"])
    # b and a both have two (speaker, flag) pairs; a's drop (-1.3) is larger; c (recovery only) and d are not flagged
    assert r["call_id"].to_list() == ["a", "b"]
    assert r["problems"].to_list() == [["client:valence_drop", "agent:negative_end"],
                                       ["client:valence_drop", "client:arousal_spike"]]
    assert r["recoveries"].to_list() == [["client"], []]
    assert r["ev_t"].to_list() == [10.0, 30.0] and r["queue"].to_list() == ["q1", "q2"]
    client_only = report.rank_calls(calls, events, speaker="client")
    assert client_only["call_id"].to_list() == ["b", "a"]  # a keeps one client flag
    rates = report.flag_rates(calls)
    assert rates["calls"].to_list() == [4] and rates["any_problem"].to_list() == [0.5]
    assert rates["recovery"].to_list() == [0.5]


# ------------------------------------------------------------------------------------------ CLI
def test_cli_report_without_torch_or_onnxruntime(demo_out, tmp_path):
    out_html = tmp_path / "cli.html"
    code = ("import sys; from cusemo_batch.cli import main\n"
            f"try:\n main(['report', {str(demo_out)!r}, '--date', '2026-11-24', '-o', {str(out_html)!r}])\n"
            "except SystemExit as e:\n assert e.code == 0, e.code\n"
            "bad = [m for m in ('torch', 'onnxruntime') if m in sys.modules]\n"
            "assert not bad, bad\nprint('ok')")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0 and "ok" in r.stdout, r.stderr + r.stdout
    assert out_html.is_file() and str(out_html) in r.stdout


@pytest.mark.parametrize("args, message", [
    (["--date", "2026-10-01"], "no calls, errors or runs"),
    (["--date", "2026-11-24", "--from", "2026-11-24", "--to", "2026-11-25"], "either"),
    (["--from", "2026-11-25"], "both"),
    (["--date", "yesterday"], "yesterday"),
    (["--speaker", "nobody"], "no speaker"),
])
def test_cli_user_errors_exit_2(demo_out, tmp_path, args, message):
    from click.testing import CliRunner

    from cusemo_batch.cli import main

    r = CliRunner().invoke(main, ["report", str(demo_out), *args, "-o", str(tmp_path / "r.html")])
    assert r.exit_code == 2, r.output
    assert message in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, ["report", str(tmp_path / "missing"), "-o", str(tmp_path / "r.html")])
    assert r.exit_code == 2 and "Traceback" not in r.output


# -------------------------------------------------------------------------------- real browser
def chromium() -> str | None:
    return next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)


def run_chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    """Headless Chromium's own CLI (no driver): root needs --no-sandbox; a private profile avoids locks."""
    return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                           "--no-first-run", "--disable-dev-shm-usage", f"--user-data-dir={profile}", *args],
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(chromium() is None, reason="no chromium binary on PATH (Debian: apt-get install -y chromium)")
def test_renders_in_headless_chromium(demo_out, tmp_path):
    from PIL import Image

    path = build(demo_out, date_from=D24, date_to=D25, output=tmp_path / "r.html")
    url = path.resolve().as_uri()
    dom = run_chromium(["--dump-dom", url], tmp_path / "profile")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert dom.stdout.count('<figure class="call-plot">') == len(flagged_calls(demo_out)) == 3
    assert dom.stdout.count("<svg") == 4  # 3 calls + the trend
    shot = tmp_path / "shot.png"
    r = run_chromium([f"--screenshot={shot}", "--window-size=1100,1800", url], tmp_path / "profile")
    assert r.returncode == 0 and shot.is_file(), r.stderr[-2000:]
    im = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert im.shape[:2] == (1800, 1100)
    ink = (im.min(axis=2) < 200).mean()  # share of pixels that are not (near) white
    colours = len(np.unique(im.reshape(-1, 3)[:: 7], axis=0))
    assert ink > 0.02 and colours > 50, (ink, colours)
    reds = ((im[..., 0] > 150) & (im[..., 1] < 110) & (im[..., 2] < 110)).sum()  # client lines / flag badges
    assert reds > 200, reds
