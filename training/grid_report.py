"""Experiment reports: mean (sd) over seeds per cell, Wilcoxon against the baseline row, Markdown and plots."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from cusemo_batch.files import atomic_path, atomic_write_text

from .grids import PAIRINGS, context_text, fmt_value
from .significance import wilcoxon_test

Log = Callable[[str], None]


# ----------------------------------------------------------------------------------------- report
def _seed_results(cell_dir: Path, seeds: Iterable[int]) -> dict[int, dict]:
    out = {}
    for s in seeds:
        f = cell_dir / f"seed_{s}" / "result.json"
        if f.is_file():
            out[int(s)] = json.loads(f.read_text())
    return out


def _msd(vals: list[float]) -> dict | None:
    vals = [v for v in vals if v is not None and np.isfinite(v)]
    if not vals:
        return None
    return {"mean": float(np.mean(vals)), "sd": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
            "n": len(vals), "values": vals}


def _per_call_means(cell_dir: Path) -> dict[str, dict[str, float]]:
    """call -> mean over seeds of that call's test CCC, per dimension."""
    f = cell_dir / "test_per_call.json"
    if not f.is_file():
        return {}
    d = json.loads(f.read_text())
    out: dict[str, dict[str, float]] = {}
    for dim in ("valence", "arousal"):
        acc: dict[str, list[float]] = {}
        for per in d["seeds"].values():
            for cid, v in per[dim].items():
                if v is not None:
                    acc.setdefault(cid, []).append(v)
        out[dim] = {cid: float(np.mean(v)) for cid, v in acc.items()}
    return out


def grid_report(gdir: Path, pairing: str = "seeds") -> dict:
    """The report of one grid run directory (reads only JSON; no training, no torch)."""
    if pairing not in PAIRINGS:
        raise ValueError(f"pairing must be one of {PAIRINGS}")
    rec = json.loads((gdir / "grid.json").read_text())
    seeds = rec["seeds"]
    rows = []
    for i, c in enumerate(rec["cells"]):
        cdir = gdir / c["name"]
        res = _seed_results(cdir, seeds)
        row = {"cell": c["name"], "values": c["values"], "seeds_done": sorted(res), "n_seeds": len(res),
               "baseline": i == rec["baseline"], "wall_s": rec.get("wall_s", {}).get(c["name"])}
        for part in ("test", "dev"):
            for dim in ("valence", "arousal", "valence_per_call", "arousal_per_call"):
                row[f"{part}_{dim}"] = _msd([r[part].get(dim) for r in res.values() if r.get(part)])
        row["_seed_values"] = {dim: {s: r["test"].get(dim) for s, r in res.items() if r.get("test")}
                               for dim in ("valence", "arousal")}
        row["_call_values"] = _per_call_means(cdir)
        ref = rec.get("reference") or {}
        row["paper"] = {k: ref[k][i] for k in ("valence", "arousal", "valence_sd", "arousal_sd") if k in ref} or None
        rows.append(row)
    base = rows[rec["baseline"]]
    for row in rows:
        row["wilcoxon"] = {}
        for dim in ("valence", "arousal"):
            if row is base:
                row["wilcoxon"][dim] = None
                continue
            if pairing == "seeds":
                a, b = row["_seed_values"][dim], base["_seed_values"][dim]
            else:
                a, b = row["_call_values"].get(dim, {}), base["_call_values"].get(dim, {})
            keys = sorted(set(a) & set(b), key=str)
            row["wilcoxon"][dim] = wilcoxon_test([a[k] for k in keys], [b[k] for k in keys])
    best = {}
    for dim in ("valence", "arousal"):
        scored = [(r[f"test_{dim}"]["mean"], r["cell"]) for r in rows if r[f"test_{dim}"]]
        best[dim] = max(scored)[1] if scored else None
    for row in rows:
        row["best"] = {dim: row["cell"] == best[dim] for dim in ("valence", "arousal")}
        row.pop("_seed_values")
        row.pop("_call_values")
    n_pairs = [w["n"] for r in rows for w in r["wilcoxon"].values() if w]
    context = dict(rec.get("context") or {})
    if "bootstrapped" in context:
        context["text"] = context_text(context)
    return {
        "name": rec["name"], "title": rec["title"], "grid_file": rec.get("grid_file"),
        "axes": rec["axes"], "seeds": seeds, "baseline": base["cell"], "pairing": pairing,
        "pairs": (min(n_pairs) if n_pairs else 0, max(n_pairs) if n_pairs else 0),
        "corpus": rec.get("corpus"), "context": context, "settings": rec.get("settings", {}),
        "reference_source": (rec.get("reference") or {}).get("source"), "notes": rec.get("notes", ""),
        "best": best, "rows": rows, "wall_s_total": round(sum(v for v in rec.get("wall_s", {}).values()), 1),
        "config_example": rec["cells"][rec["baseline"]]["config"],
    }


def find_grid_dirs(out_dir: Path) -> list[Path]:
    out_dir = Path(out_dir)
    if (out_dir / "grid.json").is_file():
        return [out_dir]
    dirs = sorted(p.parent for p in out_dir.glob("*/grid.json"))
    if not dirs:
        raise ValueError(f"{out_dir}: no grid.json (not an experiment run directory?)")
    return dirs


def _f(stat: dict | None, bold: bool = False) -> str:
    if not stat:
        return "–"
    s = f"{stat['mean']:.3f} ({stat['sd']:.3f})"
    return f"**{s}**" if bold else s


def _p(w: dict | None) -> str:
    if w is None:
        return "baseline"
    if w["p"] is None:
        return f"n/a ({w.get('note', '')})"
    return format_p(w["p"])


def format_p(p: float) -> str:
    """A p-value for tables: three decimals, scientific notation below 0.001 (the exact test's floor is 0.03 for 6 pairs)."""
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def pairing_text(g: dict) -> str:
    lo, hi = g["pairs"]
    n = f"n = {lo}" if lo == hi else f"n = {lo}–{hi}"
    if g["pairing"] == "seeds":
        what = (f"paired by **seed** (the test CCC of the same seed in both rows, the paper's pairing; "
                f"seeds {', '.join(map(str, g['seeds']))}; {n} pairs)")
    else:
        what = (f"paired by **test call** (each call's CCC of the best checkpoints, averaged over the "
                f"{len(g['seeds'])} seeds; {n} calls; this asks whether the rows differ on these test calls, "
                f"not across training runs, and calls of one speaker are not independent)")
    text = (f"p: two-sided Wilcoxon signed-rank test (`scipy.stats.wilcoxon`, zero differences dropped) "
            f"of each row against the baseline row `{g['baseline']}`, {what}.")
    if lo and lo < 6:
        text += (f" With {lo} pairs the smallest two-sided p the exact test can give is {min(1.0, 2 / 2 ** lo):.3g}"
                 f" (2/2^{lo}), so no difference can reach p < 0.05 here: these p-values say nothing"
                 f" about significance. The paper used 6 seeds (smallest p = 0.031).")
    return text


def format_markdown(report: dict) -> str:
    """The Markdown report of several grids (``report = {"grids": [...], ...}``)."""
    lines = ["# Experiment report", ""]
    if report.get("header"):
        lines += [report["header"], ""]
    for g in report["grids"]:
        lines += _grid_markdown(g)
    return "\n".join(lines).rstrip() + "\n"


def _grid_markdown(g: dict) -> list[str]:
    keys = [k for a in g["axes"] for k in a["keys"]]
    short = [k.partition(".")[2] for k in keys]
    has_ref = any(r["paper"] for r in g["rows"])
    s = g["settings"] or {}
    cfg = g["config_example"]
    lines = [f"## {g['title']} (grid `{g['name']}`)", ""]
    if g["context"].get("text"):
        lines += [f"*{g['context']['text']}*", ""]
    lines.append(f"Test CCC (over the concatenated test calls), mean (sd) over {len(g['seeds'])} seeds"
                 f" ({', '.join(map(str, g['seeds']))}); the best mean per column in **bold**. Protocol: "
                 + protocol_text(cfg, keys)
                 + (" — **quick profile, not the paper's protocol**" if s.get("quick") else "") + ".")
    lines.append("")
    head = short + ["valence", "arousal", "p valence", "p arousal", "seeds"]
    if has_ref:
        head += ["paper valence", "paper arousal"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "|".join("---" if i < len(short) else "---:" for i in range(len(head))) + "|")
    for r in g["rows"]:
        cells = [fmt_value(r["values"][k]) for k in keys]
        if r["baseline"]:
            cells[0] += " (baseline)"
        cells += [_f(r["test_valence"], r["best"]["valence"]), _f(r["test_arousal"], r["best"]["arousal"]),
                  _p(r["wilcoxon"]["valence"]), _p(r["wilcoxon"]["arousal"]),
                  f"{r['n_seeds']}/{len(g['seeds'])}"]
        if has_ref:
            p = r["paper"] or {}
            for dim in ("valence", "arousal"):
                v = p.get(dim)
                sd = p.get(f"{dim}_sd")
                cells.append("–" if v is None else f"{v:.3f}" + (f" ({sd:.3f})" if sd is not None else ""))
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", pairing_text(g)]
    if has_ref and g.get("reference_source"):
        lines += ["", f"Paper columns: {g['reference_source']}; CusEmo call-center data, the paper's protocol."]
    if g.get("notes"):
        lines += ["", g["notes"]]
    missing = [r["cell"] for r in g["rows"] if r["n_seeds"] < len(g["seeds"])]
    if missing:
        lines += ["", f"Unfinished cells (fewer seeds than planned): {', '.join(missing)}."]
    lines += ["", f"![{g['name']}]({g['name']}.png)", ""]
    return lines


def protocol_text(cfg: dict, varied: list[str]) -> str:
    """The settings shared by every row (the varied keys left out), from a cell's config dict."""
    m = cfg.get("model", {})
    parts = []
    if m.get("conv_channels"):
        parts.append(f"CRNN conv {'/'.join(map(str, m['conv_channels']))}, LSTM {m.get('lstm_hidden')}, "
                     f"MLP {'/'.join(map(str, m.get('mlp_sizes', [])))}")
    for key, text in (("train.epochs", "{} epochs"), ("train.lr", "lr {:g}"), ("data.label_rate_ms", "{:g} ms labels"),
                      ("data.segment_s", "{:g} s segments"), ("train.batch_size", "batch {}"),
                      ("data.max_calls", "a subset of {} calls")):
        section, _, name = key.partition(".")
        value = cfg.get(section, {}).get(name)
        if key not in varied and value not in (None, 0):
            parts.append(text.format(value))
    return ", ".join(parts)


def plot_grid(g: dict, path: Path) -> None:
    """CCC vs the varied axis (one point per cell), error bars = sd over seeds; paper values hollow."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = g["rows"]
    keys = [k for a in g["axes"] for k in a["keys"]]
    labels = ["\n".join(f"{k.partition('.')[2]}={fmt_value(r['values'][k])}" for k in keys) if len(keys) > 1
              else fmt_value(r["values"][keys[0]]) for r in rows]
    x = np.arange(len(rows))
    fig = Figure(figsize=(max(6.5, 0.9 * len(rows) + 3.5), 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for dim, colour, dx in (("valence", "tab:blue", -0.08), ("arousal", "tab:red", 0.08)):
        m = np.array([r[f"test_{dim}"]["mean"] if r[f"test_{dim}"] else np.nan for r in rows])
        sd = np.array([r[f"test_{dim}"]["sd"] if r[f"test_{dim}"] else np.nan for r in rows])
        ax.errorbar(x + dx, m, yerr=sd, fmt="o-", color=colour, capsize=4, label=f"{dim} (ours)")
        ref = [r["paper"].get(dim) if r["paper"] else None for r in rows]
        if any(v is not None for v in ref):
            ax.plot(x + dx, [np.nan if v is None else v for v in ref], "o--", color=colour, mfc="none",
                    alpha=0.6, label=f"{dim} (paper)")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_xlabel(", ".join(a["name"] for a in g["axes"]))
    ax.set_ylabel("test CCC, mean ± sd over seeds")
    title = g["title"] + (" — quick profile" if (g["settings"] or {}).get("quick") else "")
    if g["context"].get("bootstrapped"):
        title += "\n(acted-speech pseudo-calls, not call-center data)"
    ax.set_title(title, fontsize=9)
    ax.axhline(0, color="grey", lw=0.5)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def make_report(out_dir: str | Path, dest: str | Path | None = None, pairing: str = "seeds",
                header: str = "", plots: bool = True) -> dict:
    """Report every grid under ``out_dir``: ``report.md``, ``report.json`` and ``<grid>.png`` in ``dest``."""
    out_dir = Path(out_dir)
    dest = Path(dest) if dest else out_dir
    grids = sorted((grid_report(d, pairing) for d in find_grid_dirs(out_dir)), key=lambda g: (g["title"], g["name"]))
    report = {"pairing": pairing, "header": header, "grids": grids,
              "generated_by": f"cusemo-batch experiment report {out_dir}"
                              + (f" --pairing {pairing}" if pairing != "seeds" else "")}
    dest.mkdir(parents=True, exist_ok=True)
    atomic_write_text(dest / "report.md", format_markdown(report))
    atomic_write_text(dest / "report.json", json.dumps(report, indent=2))
    if plots:
        for g in grids:
            plot_grid(g, dest / f"{g['name']}.png")
    return report
