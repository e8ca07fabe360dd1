"""The morning report: one self-contained HTML page of a scored night, for the people who act on it.

Analysts query the Parquet; team leads and quality managers want to *look*: which calls went wrong,
where in the call, and how the client's emotion moved against the agent's. :func:`build` reads the
store written by ``cusemo-batch score`` and writes one HTML file that opens from an e-mail attachment:
no server, no script, no network (every figure is inline SVG, every style inline), and every string
from the data (call ids, ``calls.csv`` metadata, error messages) goes through :func:`html.escape`.

What a night is. Rows live in ``OUT/<table>/date=YYYY-MM-DD`` partitions, ``date`` being the call's
date from ``calls.csv`` (else the run date). A report covers one date (``date``) or an inclusive range
(``date_from`` .. ``date_to``, which adds the per-day trend). Without dates it covers the **latest
partition of the calls table that holds scored calls** -- the newest night the team can act on --
and, when no call was ever scored, the latest run's date (so a night where everything failed still
gets a page with its errors). The runs of a night are the runs that wrote its rows (``run_id`` of its
calls and errors rows, found in the runs table, which is partitioned by *run* date); its errors are
the errors rows of its dates plus those of its runs (discovery errors are filed under the run date).

Severity. Problem flags are ``valence_drop, arousal_spike, negative_end, sustained_negative``;
``recovery`` is good news: listed, never counted. A call is flagged when one of the considered
speakers (all, or only ``speaker``) has a problem flag; flagged calls are ranked by the number of
(speaker, problem flag) pairs, then by the largest drop/spike (|magnitude|), then by the longest
negative stretch. Only the first ``top`` get a figure (a huge night stays small); the table lists all.

Reading is lazy and touches only the partitions asked for: each date folder is scanned on its own
(a night's files share one schema, but a store written before schema version 3 may still hold
nights with ``calls.csv`` columns of their own until the next ``score`` run upgrades it), and the timeseries of only the plotted calls is
read. matplotlib draws without pyplot (no global backend state; PNG would go through Agg).

Examples
--------
>>> import tempfile, cusemo_batch as cb
>>> store = tempfile.mkdtemp()
>>> cb.score_nightly("examples/calls", store, device="cpu").exit_code
0
>>> page = cb.report.build(store, output=f"{store}/night.html")
>>> page.name, "<svg" in page.read_text()
('night.html', True)
"""

from __future__ import annotations

import datetime as dt
import html
import os
from pathlib import Path
from typing import Iterable, Sequence

import polars as pl

from .report_data import (CALL_KEY, DEFAULT_TOP, GOOD_FLAGS, MAX_EVENT_ROWS, PROBLEM_FLAGS, TABLES, Night,
                          ReportError, decimate, default_night, error_groups, flag_rates, load_night, load_timeseries,
                          partition_dates, rank_calls, silence_runs, speaker_order, summary)
from .report_figures import call_figure, mmss, trend_figure

# share of a track's samples at full scale from which the report warns (MODEL_CARD.md, *Clipping*:
# 0.2 % of the samples clipped moved the default model's mean arousal by +0.02, 1.8 % by +0.06)
CLIP_WARN = 0.002

# Names tests and callers reach through cusemo_batch.report (the data shaping lives in report_data).
__all__ = ["build", "render", "ReportError", "PROBLEM_FLAGS", "GOOD_FLAGS", "DEFAULT_TOP", "TABLES", "rank_calls",
           "flag_rates", "silence_runs", "decimate", "error_groups"]


# --------------------------------------------------------------------------------------------- HTML
def _e(value: object) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _flag_text(flag: str) -> str:
    return flag.replace("_", " ")


def _badges(problems: Sequence[str], recoveries: Sequence[str]) -> str:
    parts = []
    for item in problems:
        sp, flag = item.rsplit(":", 1)
        parts.append(f'<span class="b bad">{_e(sp)}: {_e(_flag_text(flag))}</span>')
    parts += [f'<span class="b good">{_e(sp)}: recovery</span>' for sp in recoveries]
    return " ".join(parts)


def _line_text(row: dict) -> str:
    """The speaker's line as it arrived: its level, and a warning when it clips (clipping reads as
    agitation, so an arousal flag on a clipping line is worth a listen before it is believed)."""
    level, clipped = row.get("input_level_dbfs"), row.get("clipped_fraction")
    text = "–" if level is None else f"{level:.0f}&nbsp;dBFS"  # None: scored before schema 4
    if clipped is not None and clipped >= CLIP_WARN:
        text += f' <span class="b bad">clipping {100 * clipped:.1f} %</span>'
    return text


def _event_text(row: dict) -> str:
    if row.get("ev_kind") is None:
        return "–"
    return (f"{_e(row['ev_speaker'])} {_e(_flag_text(row['ev_kind']))} {row['ev_magnitude']:+.2f} "
            f"<small>({row['ev_before']:+.2f} → {row['ev_after']:+.2f})</small>")


_CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,Arial,sans-serif;color:#1d1d1f;margin:0 auto;
max-width:1040px;padding:18px 22px;background:#fff}
h1{font-size:22px;margin:0 0 2px}h2{font-size:17px;margin:26px 0 8px;border-bottom:1px solid #ddd;padding-bottom:3px}
h3{font-size:15px;margin:0 0 4px}.sub{color:#666;margin:0 0 12px}
.kpi{display:flex;flex-wrap:wrap;gap:10px;margin:10px 0}.kpi div{border:1px solid #ddd;border-radius:6px;
padding:6px 12px;min-width:92px}.kpi b{display:block;font-size:20px}.kpi span{color:#666;font-size:12px}
table{border-collapse:collapse;width:100%;font-size:13px;margin:6px 0}th,td{text-align:left;padding:4px 6px;
border-bottom:1px solid #eee;vertical-align:top}th{background:#f6f6f6;font-weight:600}td.n{text-align:right}
.b{display:inline-block;border-radius:9px;padding:0 7px;margin:1px 0;font-size:12px;white-space:nowrap}
.bad{background:#fde8e6;color:#922}.good{background:#e3f4e4;color:#1e6b23}
.call{border:1px solid #e3e3e3;border-radius:8px;padding:10px 12px;margin:14px 0}
figure{margin:6px 0}figure svg{width:100%;height:auto;display:block}
figure svg text{font-family:"DejaVu Sans",Arial,Helvetica,sans-serif}small,.muted{color:#777}
.note{background:#fff8e1;border:1px solid #f0dc9b;border-radius:6px;padding:6px 10px}
.ok{background:#eef8ee;border:1px solid #b9dfb9;border-radius:6px;padding:10px 12px}
a{color:#1f5fa8}code{font-size:12px}td a,.nw{white-space:nowrap}
"""


def _table(header: Sequence[str], rows: Iterable[Sequence[str]], numeric: Iterable[int] = ()) -> str:
    """An HTML table; cells are already-escaped HTML."""
    numeric = set(numeric)
    head = "".join(f"<th>{h}</th>" for h in header)
    body = "".join("<tr>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(r)) + "</tr>" for r in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _arrow(a: float | None, b: float | None) -> str:
    return f"{a:+.2f} → {b:+.2f}" if a is not None and b is not None else "–"


def _header(night: Night, s: dict, n_flagged: int, who: str, generated: dt.datetime) -> list[str]:
    """Title, key numbers, warnings (mixed models, kept rows) and the runs behind the rows."""
    plural = "night" if night.first == night.last else "nights"
    out = [f"<h1 id=\"top\">Emotion report: {plural} {_e(night.label)}</h1>",
           f"<p class=\"sub\">{_e(night.out)} · generated {generated:%Y-%m-%d %H:%M} UTC · "
           f"model {_e(', '.join(s['models']) or '–')}</p>", "<div class=\"kpi\">"]
    for value, what in ((s["scored"], "calls scored"), (n_flagged, "flagged" + who), (s["failed"], "failed"),
                        (s["skipped"], "skipped by its runs"), (f"{s['audio_h']:.2f}", "audio hours"),
                        (night.runs.height, "runs")):
        out.append(f"<div><b>{_e(value)}</b><span>{what}</span></div>")
    out.append("</div>")
    if len(s["models"]) > 1:
        out.append(f"<p class=\"note\">Rows of these dates come from {len(s['models'])} models: "
                   "scores are comparable only within one model.</p>")
    if s["kept"]:
        out.append(f"<p class=\"note\">{s['kept']} call(s) failed in a later run; their rows below are the "
                   "last good result (see Errors).</p>")
    if night.runs.height:
        rows = []
        for r in night.runs.iter_rows(named=True):
            unmapped = r["unmapped_rttm_labels"]
            notes = [r["device_note"], unmapped and f"unmapped RTTM labels {unmapped}"]
            started = f"{r['started_at']:%Y-%m-%d %H:%M:%S}" if r["started_at"] else ""
            rows.append([_e(r["run_id"]), _e(started), *[_e(r[c]) for c in ("calls_found", "scored", "skipped",
                                                                           "failed", "exit_code")],
                         f"{(r['audio_s'] or 0) / 3600:.2f}", f"{r['x_real_time'] or 0:.0f}", _e(r["providers"]),
                         _e("; ".join(n for n in notes if n))])
        out += ["<details><summary>Runs that wrote these rows (their counts cover every date they touched)</summary>",
                _table(["run", "started (UTC)", "found", "scored", "skipped", "failed", "exit", "audio h",
                        "× real time", "providers", "notes"], rows, numeric=range(2, 9)), "</details>"]
    return out


def _flagged_table(night: Night, s: dict, ranked: pl.DataFrame, plotted: set, who: str, top: int) -> list[str]:
    """The ranked list (every flagged call; the plotted ones link to their section)."""
    out = ["<h2 id=\"flagged\">Flagged calls</h2>"]
    if s["scored"] == 0:
        return out + ["<p class=\"note\"><b>No call was scored</b> for these dates: see the errors and runs.</p>"]
    if ranked.is_empty():
        return out + [f"<p class=\"ok\"><b>Nothing flagged.</b> {s['scored']} call(s) scored, none with a problem "
                      f"flag{who} (valence drop, arousal spike, negative end, sustained negative).</p>"]
    several_days = night.first != night.last
    header = ["#", "call", *(["date"] if several_days else []), "flags", "largest drop / spike", "at",
              *[_e(c) for c in night.meta_cols]]
    rows = []
    for i, r in enumerate(ranked.iter_rows(named=True), 1):
        name = _e(r["call_id"])
        if (r["date"], r["call_id"]) in plotted:
            name = f'<a href="#call-{i}">{name}</a>'
        rows.append([str(i), name, *([_e(r["date"])] if several_days else []),
                     _badges(r["problems"], r["recoveries"]), _event_text(r),
                     f"<span class=\"nw\">{mmss(r['ev_t'])} <small>of {mmss(r['duration_s'])}</small></span>",
                     *[_e(r[c]) for c in night.meta_cols]])
    out += [f"<p class=\"muted\">Ranked by the number of problem flags{who}, then the largest drop or spike, then "
            "the longest negative stretch. Recovery (green) is listed, never counted.</p>",
            _table(header, rows, numeric=(0,))]
    if ranked.height > len(plotted):
        out.append(f"<p class=\"note\">Figures for the first {len(plotted)} of {ranked.height} flagged calls "
                   f"(--top {top}).</p>")
    return out


def _trend(rates: pl.DataFrame) -> list[str]:
    cols = ["any_problem", *PROBLEM_FLAGS, *GOOD_FLAGS]
    out = ["<h2 id=\"trend\">Flag rates per day</h2>"]
    if rates.height >= 2:
        out.append(f"<figure class=\"trend-plot\">{trend_figure(rates, 'trend')}</figure>")
    out.append(_table(["date", "calls", *[_flag_text(c) for c in cols]],
                      ([_e(r["date"]), str(r["calls"]), *[f"{100 * r[c]:.0f} %" for c in cols]]
                       for r in rates.iter_rows(named=True)), numeric=range(1, len(cols) + 2)))
    return out


def _call_section(i: int, r: dict, night: Night, figure: str) -> str:
    """One flagged call: metadata, flags and levels per speaker, the figure, its change events."""
    here = (pl.col("date") == r["date"]) & (pl.col("call_id") == r["call_id"])
    rows = night.calls.filter(here)
    meta = " · ".join(f"{_e(c)} <b>{_e(r[c])}</b>" for c in night.meta_cols if r[c] is not None)
    layout = rows["layout"].drop_nulls()
    out = [f"<section class=\"call\" id=\"call-{i}\"><h3>#{i} {_e(r['call_id'])}</h3>"
           f"<p class=\"muted\">{_e(r['date'])} · {mmss(r['duration_s'])}"
           f"{' · ' + _e(layout[0]) if len(layout) else ''}{' · ' + meta if meta else ''}</p>"]
    flag_rows = []
    for sp in speaker_order(rows["speaker"].to_list()):
        t = rows.filter(pl.col("speaker") == sp).row(0, named=True)
        badges = _badges([f"{sp}:{f}" for f in PROBLEM_FLAGS if t[f]], [sp] if t["recovery"] else [])
        flag_rows.append([_e(sp), badges or "<span class=\"muted\">none</span>",
                          _arrow(t["valence_start"], t["valence_end"]), _arrow(t["arousal_start"], t["arousal_end"]),
                          f"{t['longest_negative_s'] or 0:.0f} s", _line_text(t)])
    out.append(_table(["speaker", "flags", "valence start → end", "arousal start → end", "longest negative", "line"],
                      flag_rows))
    out.append(f"<figure class=\"call-plot\">{figure}</figure>")
    ev = night.events.filter(here)
    total = ev.height
    ev = ev.sort(pl.col("magnitude").abs(), descending=True).head(MAX_EVENT_ROWS).sort("t_change_s")
    if total > ev.height:
        out.append(f"<p class=\"muted\">The {ev.height} largest of {total} change events:</p>")
    if ev.height:
        out.append(_table(["at", "speaker", "change", "before → after", "span"],
                          ([mmss(e["t_change_s"]), _e(e["speaker"]), _e(_flag_text(e["kind"])),
                            _arrow(e["level_before"], e["level_after"]),
                            f"{mmss(e['t_start_s'])}–{mmss(e['t_end_s'])}"] for e in ev.iter_rows(named=True))))
    out.append("<p><a href=\"#top\">back to top</a></p></section>")
    return "".join(out)


def _errors(errors: pl.DataFrame) -> list[str]:
    groups = error_groups(errors)
    if groups.is_empty():
        return ["<h2 id=\"errors\">Errors</h2>", "<p class=\"muted\">No errors.</p>"]

    def ids(calls: list[str]) -> str:
        more = f" <small>+{len(calls) - 10} more</small>" if len(calls) > 10 else ""
        return ", ".join(_e(c) for c in calls[:10]) + more

    return ["<h2 id=\"errors\">Errors</h2>",
            _table(["stage", "error", "rows", "calls", "example message"],
                   ([_e(g["stage"]), _e(g["error"]), str(g["rows"]), ids(g["calls"]), _e(g["message"])]
                    for g in groups.iter_rows(named=True)), numeric=(2,))]


def render(night: Night, ranked: pl.DataFrame, figures: dict[tuple, str], rates: pl.DataFrame | None,
           speaker: str | None, top: int, generated: dt.datetime) -> str:
    """The whole page. ``figures`` maps (date, call_id) of the plotted calls to inline SVG."""
    s = summary(night)
    who = f" (flags of the {_e(speaker)} only)" if speaker else ""
    out = ["<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\">"
           "<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">"
           f"<title>Emotion report {_e(night.label)}</title><style>{_CSS}</style></head><body>",
           *_header(night, s, ranked.height, who, generated),
           *_flagged_table(night, s, ranked, set(figures), who, top),
           *(_trend(rates) if rates is not None else [])]
    if figures:
        out.append("<h2 id=\"calls\">Flagged calls, one by one</h2>")
        for i, r in enumerate(ranked.iter_rows(named=True), 1):
            figure = figures.get((r["date"], r["call_id"]))
            if figure is None:
                break
            out.append(_call_section(i, r, night, figure))
    out += [*_errors(night.errors),
            "<p class=\"muted\">Valence (negative ↔ positive) and arousal (calm ↔ agitated) on [-1, 1], times in "
            "original call time. Column meanings: docs/schema.md of cusemo-batch.</p></body></html>"]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------- API
def build(out: str | Path, date: dt.date | str | None = None, date_from: dt.date | str | None = None,
          date_to: dt.date | str | None = None, speaker: str | None = None, output: str | Path | None = None,
          top: int = DEFAULT_TOP) -> Path:
    """Write the report of a scored store ``out`` and return its path.

    ``date`` (one night) or ``date_from`` + ``date_to`` (inclusive; adds the per-day trend); neither:
    the latest night with scored calls (module docstring). ``speaker`` (e.g. ``client``): only that
    speaker's flags and events flag and rank a call -- figures still show every speaker, the agent
    being the context. ``top``: figures for the first ``top`` flagged calls only. ``output`` defaults
    to ``report-<date>.html`` (or ``report-<from>_<to>.html``) in the current directory.
    Raises :class:`ReportError` for a missing store, bad dates, no data, or an unknown speaker.
    """
    out = Path(out)
    if not (out / "calls").is_dir() and not (out / "runs").is_dir():
        raise ReportError(f"{out}: not a cusemo-batch store (no calls/ or runs/ folder)")
    if top < 0:
        raise ReportError("top must be >= 0")
    as_date = lambda d: d if isinstance(d, dt.date) or d is None else dt.date.fromisoformat(str(d))  # noqa: E731
    try:
        date, date_from, date_to = as_date(date), as_date(date_from), as_date(date_to)
    except ValueError as e:
        raise ReportError(f"bad date: {e}") from None
    if date is not None and (date_from or date_to):
        raise ReportError("give either a date or a range (from, to), not both")
    if (date_from is None) != (date_to is None):
        raise ReportError("a range needs both ends (from and to)")
    if date_from and date_from > date_to:
        raise ReportError(f"the range is empty: {date_from} is after {date_to}")
    first, last = (date_from, date_to) if date_from else (date or default_night(out),) * 2
    night = load_night(out, first, last)
    if night.calls.is_empty() and night.errors.is_empty() and night.runs.is_empty():
        have = partition_dates(out, "calls", rows_only=True)
        hint = f" (dates with calls: {have[0]} .. {have[-1]})" if have else ""
        raise ReportError(f"no calls, errors or runs for {night.label} in {out}{hint}")
    if speaker is not None and speaker not in set(night.calls["speaker"]):
        raise ReportError(f"no speaker {speaker!r} in the calls of {night.label} "
                          f"(speakers: {', '.join(speaker_order(night.calls['speaker'].to_list())) or 'none'})")

    ranked = rank_calls(night.calls, night.events, speaker, night.meta_cols)
    plotted = ranked.head(top).select(CALL_KEY)
    ts = load_timeseries(out, plotted)
    figures = {}
    for i, (day, cid) in enumerate(plotted.iter_rows(), 1):
        key = (pl.col("date") == day) & (pl.col("call_id") == cid)
        figures[(day, cid)] = call_figure(ts.filter(key), night.events.filter(key), salt=f"c{i}")
    rates = flag_rates(night.calls, speaker) if date_from else None
    page = render(night, ranked, figures, rates, speaker, top, dt.datetime.now(dt.timezone.utc))

    if output is None:
        output = f"report-{first}.html" if first == last else f"report-{first}_{last}.html"
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".{output.name}.tmp-{os.getpid()}")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, output)  # a mailer picking the file up never sees half a page
    return output
