"""The morning report's figures: valence and arousal over call time per flagged call, the flag-rate
trend; matplotlib without pyplot, written as compact inline SVG.
"""

from __future__ import annotations

import io
import re
from typing import Sequence

import numpy as np
import polars as pl

from .report_data import COLORS, EXTRA_COLORS, decimate, silence_runs, speaker_order


# ------------------------------------------------------------------------------------------ figures
def _color(speaker: str, speakers: list[str]) -> str:
    if speaker in COLORS:
        return COLORS[speaker]
    others = [s for s in speakers if s not in COLORS]
    return EXTRA_COLORS[others.index(speaker) % len(EXTRA_COLORS)]


def mmss(seconds: float | None) -> str:
    if seconds is None or not np.isfinite(seconds):
        return "–"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


_RC = {"svg.fonttype": "none", "text.parse_math": False, "font.size": 8, "font.family": "sans-serif",
       "font.sans-serif": ["DejaVu Sans", "Arial", "Helvetica"], "axes.spines.top": False,
       "axes.spines.right": False, "axes.titlesize": 8, "legend.fontsize": 7.5, "legend.frameon": False}


def _svg(fig, salt: str) -> str:
    """The figure as compact inline SVG for an HTML page.

    Measured on a night of 50 flagged 5-6 minute calls (the demo calls repeated 6x, as in
    tests/test_report.py), whole page: inline SVG as written here (text as text, relative path data
    on a 0.1 pt grid, min/max decimation) 1.59 MB, crisp at any zoom; base64 PNG at 90 dpi 6.12 MB
    (RGBA) or 1.94 MB (64-colour palette, visibly soft), at 120 dpi 2.37 MB (palette). Hence SVG,
    the only one under the 2 MB e-mail budget without losing legibility. ``salt`` makes matplotlib's clip/
    marker ids unique per figure (they share one HTML document); group ids and the XML prolog,
    metadata and namespace URLs are dropped (HTML parses inline SVG without them).
    """
    import matplotlib

    buf = io.StringIO()
    with matplotlib.rc_context({**_RC, "svg.hashsalt": salt}):
        fig.savefig(buf, format="svg")
    s = buf.getvalue()
    s = s[s.index("<svg"):]
    s = re.sub(r"<metadata>.*?</metadata>\s*", "", s, flags=re.S)
    s = re.sub(r'\s+xmlns(:\w+)?="[^"]*"', "", s)
    s = s.replace("xlink:href=", "href=")
    s = re.sub(r'<g id="[^"]*"', "<g", s)
    s = re.sub(r"\s*\n\s*", "\n", s)
    s = re.sub(r' d="([^"]*)"', lambda m: f' d="{_path_data(m.group(1))}"', s)
    # geometry to 0.1 pt (below a pixel); text, styles and opacities keep every digit
    s = re.sub(r' (x|y|transform)="[^"]*"', lambda m: re.sub(r"(\d\.\d)\d+", r"\1", m.group(0)), s)
    s = re.sub(r' transform="rotate\(-0 [^)]*\)"', "", s)  # unrotated text
    s = re.sub(r"font-family: [^;\"]*;? ?", "", s)  # the page's CSS sets it once for every figure
    return s.strip()


def _path_data(d: str) -> str:
    """SVG path data of straight segments as relative moves on a 0.1 pt grid (about half the bytes).

    Rounding the absolute positions first and writing their differences keeps the error at 0.05 pt
    however long the path. Paths with curves (markers) are returned unchanged.
    """
    tokens = d.replace(",", " ").split()
    if not tokens or any(t[0].isalpha() and t not in ("M", "L", "z", "Z") for t in tokens):
        return " ".join(tokens)
    out, cmd, x0, y0, last = [], "", 0, 0, ""
    start = (0, 0)  # "z" returns the pen to the start of the subpath
    i = 0
    while i < len(tokens):
        t = tokens[i]
        if t in ("z", "Z"):
            out.append("z")
            last, (x0, y0) = "z", start
            i += 1
            continue
        if t in ("M", "L"):
            cmd = t
            i += 1
        x, y = round(float(tokens[i]) * 10), round(float(tokens[i + 1]) * 10)
        i += 2
        c = "m" if cmd == "M" else "l"
        if not out:  # the first move is absolute
            c, dx, dy = "M", x, y
        else:
            dx, dy = x - x0, y - y0
        num = f"{_dec(dx)}{'' if dy < 0 else ' '}{_dec(dy)}"
        out.append(num if c == last == "l" else c + num)
        last, x0, y0 = c, x, y
        if c in ("M", "m"):
            start = (x, y)
    joined = ""
    for part in out:  # a separator only where two numbers would run together
        joined += part if not joined or part[0] in "-Mmlz" or joined[-1] == "z" else " " + part
    return joined


def _dec(tenths: int) -> str:
    """An integer count of 0.1 pt as the shortest decimal: 12 -> 1.2, -5 -> -.5, 30 -> 3."""
    sign, v = ("-" if tenths < 0 else ""), abs(tenths)
    whole, frac = divmod(v, 10)
    return f"{sign}{whole or ''}.{frac}" if frac else f"{sign}{whole}"


def _label_rows(spans: Sequence[tuple[float, float]], rows: int = 4) -> list[int | None]:
    """Greedy placement of labels that occupy ``(lo, hi)`` of call time, in time order: the first of
    ``rows`` rows free at ``lo``; None when every row is taken (the event is drawn, not labelled)."""
    free_from: list[float] = []
    out: list[int | None] = []
    for lo, hi in spans:
        k = next((i for i, f in enumerate(free_from) if f < lo), len(free_from))
        if k >= rows:
            out.append(None)
            continue
        free_from[k:k + 1] = [hi]
        out.append(k)
    return out


def _bands(spans: list[tuple[float, float]]):
    """One compound path of full-height rectangles (x in data, y in axes coordinates)."""
    from matplotlib.path import Path as MplPath

    verts, codes = [], []
    for a, b in spans:
        verts += [(a, 0), (b, 0), (b, 1), (a, 1), (a, 0)]
        codes += [MplPath.MOVETO, MplPath.LINETO, MplPath.LINETO, MplPath.LINETO, MplPath.CLOSEPOLY]
    return MplPath(verts, codes)


_EVENT_LABEL = {"valence_drop": "drop", "valence_rise": "rise", "arousal_spike": "spike", "arousal_drop": "drop"}


# ~65 lines: one matplotlib figure drawn in order (axes, silences, traces, events, legend); the
# pieces share the axes and the colour map, and read best in drawing order.
def call_figure(ts: pl.DataFrame, events: pl.DataFrame, salt: str) -> str:
    """Valence and arousal of one call over call time, every speaker: raw windows (thin), smoothed
    (thick), compressed silences shaded in the speaker's colour, change events marked and labelled."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch, PathPatch
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    speakers = speaker_order(ts["speaker"].to_list())
    with matplotlib.rc_context(_RC):
        # fixed margins, not a layout engine: ~2x faster per figure, and the texts are short and known
        fig = Figure(figsize=(9, 3.9))
        fig.subplots_adjust(left=0.075, right=0.985, top=0.9, bottom=0.12, hspace=0.1)
        axes = dict(zip(("valence", "arousal"), fig.subplots(2, 1, sharex=True)))
        handles = []
        for sp in speakers:
            d = ts.filter(pl.col("speaker") == sp).sort("t_start_s")
            color = _color(sp, speakers)
            mid = ((d["t_start_s"] + d["t_end_s"]) / 2).to_numpy()
            gaps = silence_runs(d["t_start_s"].to_list(), d["t_end_s"].to_list(), d["valence"].to_list())
            for dim, ax in axes.items():
                ax.plot(*decimate(mid, d[dim].fill_null(np.nan).to_numpy()), color=color, lw=0.6, alpha=0.45)
                ax.plot(*decimate(mid, d[f"{dim}_smooth"].fill_null(np.nan).to_numpy()), color=color, lw=1.8)
                if gaps:  # one compound path per speaker, not one element per silence
                    ax.add_patch(PathPatch(_bands(gaps), transform=ax.get_xaxis_transform(), color=color,
                                           alpha=0.09, lw=0))
            handles.append(Line2D([], [], color=color, lw=1.8, label=f" {sp}"))
        span = max(float(ts["t_end_s"].max() or 1.0), 1.0)
        for dim, ax in axes.items():
            ev = events.filter(pl.col("dimension") == dim).sort("t_change_s")
            if ev.is_empty():
                continue
            colors = [_color(sp, speakers) for sp in ev["speaker"]]
            tx = ax.get_xaxis_transform()  # x in call time, y in axes fraction
            ax.vlines(ev["t_change_s"].to_list(), 0, 1, colors=colors, linestyles="--", lw=0.9, transform=tx)
            # label extent: ~3.9 pt per 7 pt character over a ~580 pt wide plot; right of the line, or
            # left of it in the last fifth of the call; the change span bar shares the row
            right = [t > 0.8 * span for t in ev["t_change_s"]]
            width = [(len(sp) + 14) * 0.0068 * span for sp in ev["speaker"]]
            levels = _label_rows([(min(a, t - w) if r else a, max(b, t) if r else max(b, t + w)) for a, t, b, w, r
                                  in zip(ev["t_start_s"], ev["t_change_s"], ev["t_end_s"], width, right)])
            ys = [0.93 - 0.13 * (k if k is not None else 0) for k in levels]
            ax.hlines(ys, ev["t_start_s"].to_list(), ev["t_end_s"].to_list(), colors=colors, lw=2.5, alpha=0.5,
                      transform=tx)
            for row, k, y, color, r in zip(ev.iter_rows(named=True), levels, ys, colors, right):
                if k is None:  # no free row: marked, not labelled (the events table lists it)
                    continue
                mark = "▼" if row["magnitude"] < 0 else "▲"
                ax.text(row["t_change_s"], y, f" {mark} {row['speaker']} {_EVENT_LABEL.get(row['kind'], row['kind'])} "
                        f"{row['magnitude']:+.2f} ", color=color, fontsize=7, va="center",
                        ha="right" if r else "left", transform=tx)
        for dim, ax in axes.items():
            ax.set_ylim(-1.05, 1.05)
            ax.set_ylabel(dim)
            ax.axhline(0, color="#999999", lw=0.6)
            ax.yaxis.set_major_locator(MaxNLocator(5))
            ax.grid(axis="y", color="#eeeeee", lw=0.5)
        axes["arousal"].xaxis.set_major_formatter(FuncFormatter(lambda v, _: mmss(v)))
        axes["arousal"].set_xlabel("call time (m:ss)")
        handles += [Line2D([], [], color="#777777", lw=0.6, label=" raw 0.5 s windows"),
                    Line2D([], [], color="#777777", lw=1.8, label=" smoothed"),
                    Patch(color="#777777", alpha=0.2, lw=0, label=" compressed silence"),
                    Line2D([], [], color="#777777", ls="--", lw=0.9, label=" change event")]
        fig.legend(handles=handles, loc="upper center", ncol=len(handles), bbox_to_anchor=(0.53, 1.0))
    return _svg(fig, salt)


def trend_figure(rates: pl.DataFrame, salt: str) -> str:
    """Share of calls with each flag, per day."""
    import matplotlib
    from matplotlib.figure import Figure
    from matplotlib.ticker import PercentFormatter

    with matplotlib.rc_context(_RC):
        fig = Figure(figsize=(9, 2.6))
        fig.subplots_adjust(left=0.075, right=0.8, top=0.95, bottom=0.24)
        ax = fig.subplots()
        x = rates["date"].to_list()
        styles = {"any_problem": ("#222222", "-", 2.0), "valence_drop": ("#c0392b", "-", 1.2),
                  "arousal_spike": ("#d35400", "-", 1.2), "negative_end": ("#8e44ad", "-", 1.2),
                  "sustained_negative": ("#1f5fa8", "-", 1.2), "recovery": ("#2e7d32", "--", 1.2)}
        for col, (color, ls, lw) in styles.items():
            ax.plot(x, (rates[col] * 100).to_list(), color=color, ls=ls, lw=lw, marker="o", ms=3,
                    label=col.replace("_", " "))
        ax.set_ylim(0, 105)
        ax.yaxis.set_major_formatter(PercentFormatter())
        ax.set_ylabel("calls with the flag")
        ax.grid(axis="y", color="#eeeeee", lw=0.5)
        if len(x) <= 14:
            ax.set_xticks(x, [d.isoformat() for d in x])
        else:
            import matplotlib.dates as mdates

            ax.xaxis.set_major_locator(mdates.DayLocator(interval=-(-len(x) // 10)))
            ax.xaxis.set_major_formatter(mdates.DateFormatter("%Y-%m-%d"))
        fig.autofmt_xdate()
        fig.legend(loc="center right")
    return _svg(fig, salt)
