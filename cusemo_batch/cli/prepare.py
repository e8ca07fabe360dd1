"""``cusemo-batch prepare ...``: corpus curation (agreement, selection, silence compression, F0 ranking).

Thin layer over :mod:`cusemo_batch.curation`; heavy modules (openSMILE, matplotlib) are imported
inside the commands. Exit codes: 0 ok, 1 some files failed (the others were processed), 2 input error.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Sequence

import click

from cusemo_batch.curation.f0 import DEFAULT_TRACKER, MIN_VOICED_S, TRACKERS
from cusemo_batch.curation.select import CONSENSUS_METHODS, SELECT_DIMENSIONS, SelectionRule
from cusemo_batch.silence import KEEP_SILENCE_S, MIN_SILENCE_S

from .common import console, discovery_from, discovery_options, err_console, progress, user_errors

_RULE = SelectionRule()  # the flags' defaults are the rule's


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def _p(p: float | None) -> str:
    if p is None or math.isnan(p):
        return "-"
    return f"{p:.3f}" if p >= 0.001 else f"{p:.1e}"


def _table(title: str, columns: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """A rich table on a terminal, plain aligned text otherwise (logs, pipes)."""
    cells = [[_fmt(v) for v in r] for r in rows]
    if console.is_terminal:
        from rich.table import Table

        t = Table(title=title, title_justify="left")
        for i, c in enumerate(columns):
            t.add_column(c, justify="left" if i == 0 or not cells or not _numeric(cells, i) else "right")
        for r in cells:
            t.add_row(*r)
        console.print(t)
        return
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    console.print(title)
    console.print("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip(), markup=False)
    for r in cells:
        console.print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip(), markup=False)


def _numeric(cells, i: int) -> bool:
    try:
        [float(r[i]) for r in cells if r[i] != "-"]
        return True
    except ValueError:
        return False


@click.group()
def prepare() -> None:
    """Curate a corpus as in the CusEmo paper: agreement, selection, silence compression, F0 ranking."""


# ------------------------------------------------------------------------------------- agreement
@prepare.command("agreement")
@click.argument("corpus_dir", metavar="CORPUS", type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for the Parquet tables and the PNG figures.")
@click.option("--min-annotators", default=2, show_default=True, type=click.IntRange(min=2))
@click.option("--plots/--no-plots", default=True, show_default=True, help="Save distribution plots (PNG).")
@user_errors(ValueError, OSError)
def agreement_cmd(corpus_dir: Path, out: Path, min_annotators: int, plots: bool) -> None:
    """Inter-annotator agreement per call and dimension, and for the context variables.

    Per call: ICC(3,1) (two-way mixed, consistency, single measures; time bins = targets,
    annotators = judges), ICC(3,k), Pearson r, Krippendorff's alpha (interval). Context variables
    rated per annotator in context.csv: Pearson r with p-value, Krippendorff's alpha.
    Writes OUT/agreement_calls.parquet, agreement_summary.parquet, agreement_context.parquet and
    OUT/icc_3_1_distribution.png (+ context_agreement.png).
    """
    import polars as pl

    from cusemo_batch.curation import agreement as ag
    from cusemo_batch.files import atomic_path
    from cusemo_batch.training.corpus import read_corpus

    corpus = read_corpus(corpus_dir, min_annotators=min_annotators)
    per_call = ag.corpus_agreement(corpus)
    summary = ag.summarise(per_call)
    ctx_path = Path(corpus_dir) / "context.csv"
    context = ag.context_agreement(ctx_path) if ctx_path.is_file() else pl.DataFrame(schema=ag.CONTEXT_SCHEMA)
    out.mkdir(parents=True, exist_ok=True)
    for name, df in (("agreement_calls", per_call), ("agreement_summary", summary), ("agreement_context", context)):
        with atomic_path(out / f"{name}.parquet") as tmp:
            df.write_parquet(tmp)
    figures = []
    if plots:
        figures.append(ag.plot_icc(per_call, out))
        if ctx_path.is_file():
            fig = ag.plot_context(ag.context_pairs(ctx_path), out)
            if fig:
                figures.append(fig)

    rows = []
    for role, dim in dict.fromkeys(zip(summary["role"].to_list(), summary["dimension"].to_list())):
        sub = {r["statistic"]: r for r in summary.iter_rows(named=True) if r["role"] == role and r["dimension"] == dim}
        i = sub["icc_3_1"]
        rows.append([role, dim, i["n_calls"], i["mean"], i["sd"], i["min"], i["max"],
                     sub["icc_3_k"]["mean"], sub["pearson_r"]["mean"], sub["alpha"]["mean"]])
    n_calls = per_call["call_id"].n_unique()
    _table(f"Agreement per call ({n_calls} calls): ICC(3,1) mean, sd, min, max; means of ICC(3,k), r, alpha",
           ["role", "dimension", "calls", "ICC mean", "sd", "min", "max", "ICC(3,k)", "r", "alpha"], rows)
    undefined = int(summary.filter(pl.col("statistic") == "icc_3_1")["n_undefined"].sum()) if summary.height else 0
    if undefined:
        console.print(f"note: {undefined} call-dimension(s) have undefined ICC (flat tracks) and are left out")
    if context.height:
        _table("Context variables between annotators",
               ["variable", "level", "calls", "Pearson r", "p", "alpha", "agree"],
               [[r["variable"], r["level"], r["n_calls"], r["pearson_r"], _p(r["pearson_p"]), r["alpha"],
                 r["percent_agreement"]] for r in context.iter_rows(named=True)])
    else:
        console.print("context: no call has two annotators' context rows (consolidated or missing context.csv)")
    for w in corpus.warnings:
        err_console.print(f"warning: {w}")
    console.print(f"wrote {out}/agreement_{{calls,summary,context}}.parquet"
                  + "".join(f", {f.name}" for f in figures))


# ---------------------------------------------------------------------------------------- select
@prepare.command("select")
@click.argument("corpus_dir", metavar="CORPUS", type=click.Path(path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder for selected.csv, selection.parquet, selection.json and gold/<call_id>.csv.")
@click.option("--min-icc", default=_RULE.min_icc, show_default=True, type=click.FloatRange(-1, 1),
              help="Keep calls whose ICC(3,1) is strictly greater (the paper: > 0.7).")
@click.option("--dimension", type=click.Choice(SELECT_DIMENSIONS), default=_RULE.dimension,
              show_default=True, help="Dimension(s) whose ICC must pass.")
@click.option("--gold", type=click.Choice(CONSENSUS_METHODS), default=_RULE.gold, show_default=True,
              help="Gold standard over the annotators (the paper: mean).")
@click.option("--role", default=_RULE.role, show_default=True,
              help="Keep calls of this role (context.csv `role`); 'any' keeps all roles.")
@click.option("--min-annotators", default=2, show_default=True, type=click.IntRange(min=2))
@user_errors(ValueError, OSError)
def select_cmd(corpus_dir: Path, out: Path, min_icc: float, dimension: str, gold: str, role: str,
               min_annotators: int) -> None:
    """Select the calls to train on (the paper's rule) and write their gold standard.

    Default rule = the paper: client calls with valence ICC(3,1) > 0.7, gold = mean of the
    annotators. Gold files: time_s (bin end), valence, arousal in [-1, 1] at the tracks' bin width.
    """
    from cusemo_batch.curation.select import SelectionRule, write_selection
    from cusemo_batch.training.corpus import read_corpus

    rule = SelectionRule(min_icc=min_icc, dimension=dimension, role=None if role in ("any", "all", "") else role,
                         gold=gold)
    corpus = read_corpus(corpus_dir, min_annotators=min_annotators)
    selection, s = write_selection(corpus, rule, out)
    role_txt = f"{rule.role} calls" if s["role_filter_applied"] else "calls"
    if rule.role is not None and not s["role_filter_applied"]:
        console.print(f"note: the corpus has no role information; --role {rule.role} not applied")
    dims = "valence and arousal" if dimension == "both" else dimension
    rows = [["calls in corpus", s["calls"]], [role_txt, s["calls_of_role"]],
            [f"selected ({dims} ICC(3,1) > {min_icc:g})", s["selected"]],
            ["share selected", "-" if s["selected_share_of_role"] is None
             else f"{100 * s['selected_share_of_role']:.0f} %"],
            ["selected audio", f"{s['selected_hours']:.2f} h"],
            ["duration range", f"{_fmt(s['duration_min_s'], 1)} - {_fmt(s['duration_max_s'], 1)} s"],
            ["gender", ", ".join(f"{g}: {n}" for g, n in sorted(s["gender"].items())) or "-"],
            ["gold standard", f"{gold} of the annotators"]]
    rows += [[f"rejected: {k}", v] for k, v in sorted(s["rejected_by_reason"].items())]
    _table("Selection", ["", "value"], rows)
    console.print(f"wrote {out}/selected.csv, selection.parquet, selection.json and "
                  f"{s['selected']} gold file(s) in {out}/gold/")


# ------------------------------------------------------------------------------ compress-silence
@prepare.command("compress-silence")
@click.argument("src", metavar="IN", type=click.Path(exists=True, path_type=Path))
@click.argument("dst", metavar="OUT", type=click.Path(path_type=Path))
@click.option("--min-silence", default=MIN_SILENCE_S, show_default=True, type=click.FloatRange(min=0.1),
              help="Silences longer than this (seconds) are compressed.")
@click.option("--keep", default=KEEP_SILENCE_S, show_default=True, type=click.FloatRange(min=0.0),
              help="Seconds of each long silence kept (half at each end).")
@click.option("--per-file", is_flag=True,
              help="Compress each file on its own speech (default: the files of one call share one speech mask).")
@click.option("--map-format", type=click.Choice(["parquet", "json"]), default="parquet", show_default=True)
@user_errors(ValueError, OSError)
def compress_silence_cmd(src: Path, dst: Path, min_silence: float, keep: float, per_file: bool,
                         map_format: str) -> None:
    """Replace every silence longer than --min-silence by --keep seconds of it (the paper: 3 s -> 1 s).

    IN is an audio file (OUT: a file, or a folder to put it in) or a CALLS folder (OUT: a folder,
    same layout). Next to each output X.flac goes X.timemap.parquet (compressed_start_s,
    original_start_s, duration_s per kept segment) to map compressed times back to the original;
    an RTTM next to a mono call is rewritten in compressed time. Uses the scorer's voice activity
    detection and compression (cusemo_batch.silence).
    """
    from cusemo_batch.curation.compress import compress_path

    if keep >= min_silence:
        raise click.BadParameter("--keep must be shorter than --min-silence")
    with progress("compressing silences", None) as advance:
        results, errors = compress_path(src, dst, min_silence, keep, joint=not per_file,
                                        map_format=map_format, progress=advance)
    base = src if src.is_dir() else src.parent
    rows = []
    for r in results:
        try:
            name = str(r.source.relative_to(base))
        except ValueError:
            name = str(r.source)
        rows.append([name, r.channels, r.original_s, r.compressed_s, r.removed_s, r.n_cuts])
    if rows:
        _table("Silence compression (seconds)", ["file", "ch", "original", "compressed", "removed", "cuts"], rows)
    tot_o = sum(r.original_s for r in results)
    tot_c = sum(r.compressed_s for r in results)
    share = 100 * (1 - tot_c / tot_o) if tot_o else 0.0
    console.print(f"{len(results)} file(s): {tot_o / 60:.1f} min -> {tot_c / 60:.1f} min ({share:.1f} % removed); "
                  f"time maps *.timemap.{map_format} in {dst}")
    for e in errors:
        err_console.print(f"error: {e['file']}: {e['message']}", markup=False)
    if errors:
        sys.exit(1)


# --------------------------------------------------------------------------------------- rank-f0
@prepare.command("rank-f0")
@click.argument("calls_dir", metavar="CALLS", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Parquet file with one ranked row per call and speaker.")
@click.option("--min-voiced", default=MIN_VOICED_S, show_default=True, type=click.FloatRange(min=0),
              help="Speakers with less voiced speech (seconds) are listed but not ranked.")
@click.option("--top", default=20, show_default=True, type=click.IntRange(min=0), help="Rows to print.")
@discovery_options("rank")
@click.option("--tracker", type=click.Choice(list(TRACKERS)), default=DEFAULT_TRACKER, show_default=True,
              help="F0 tracker: pyin (librosa, ISC licence) or opensmile (eGEMAPS, the paper's; research "
                   "licence, no commercial use; needs the opensmile extra).")
@user_errors(ValueError, OSError, ImportError)
def rank_f0_cmd(calls_dir: Path, out: Path, min_voiced: float, top: int, layout: str, channels: str, roles: str,
                speaker_name: str, speakers: str, follow_symlinks: bool, tracker: str) -> None:
    """Rank calls by F0 variability to choose varied calls to annotate.

    Ranking key f0_sd_st = standard deviation of F0 in semitones re 27.5 Hz over voiced frames;
    f0_cv = sd / mean (eGEMAPS' stddevNorm) is reported too. The default tracker is pYIN (librosa)
    because openSMILE's licence forbids commercial use; --tracker opensmile gives the paper's eGEMAPS
    measure (on call-length tracks the two rankings agree moderately, Spearman 0.73-0.74: docs/training.md,
    Choosing calls to annotate).
    """
    from cusemo_batch.curation.f0 import make_tracker, rank_f0
    from cusemo_batch.files import atomic_path

    opts = discovery_from(layout, channels, roles, speaker_name, speakers, follow_symlinks)
    trk = make_tracker(tracker)  # before the progress bar: a missing package is a user error, not a crash
    with progress(f"F0 ({tracker})", None) as advance:
        ranking, errors = rank_f0(calls_dir, opts, min_voiced_s=min_voiced, progress=advance, tracker=trk)
    with atomic_path(out) as tmp:
        ranking.write_parquet(tmp)
    shown = ranking.head(top)
    if shown.height:
        _table(f"F0 variability ({tracker}), most varied first ({ranking.height} speaker tracks"
               f"{', top ' + str(top) if ranking.height > top else ''})",
               ["rank", "call", "speaker", "F0 sd (st)", "F0 CV", "mean (st)", "voiced s"],
               [[r["rank"], r["call_id"], r["speaker"], r["f0_sd_st"], r["f0_cv"], r["f0_mean_st"], r["voiced_s"]]
                for r in shown.iter_rows(named=True)])
    unranked = ranking.filter(ranking["rank"].is_null()).height
    if unranked:
        console.print(f"{unranked} speaker track(s) with < {min_voiced:g} s of voiced speech are not ranked")
    console.print(f"wrote {out}")
    if errors.height:
        epath = out.with_name((out.stem if out.suffix else out.name) + ".errors.parquet")
        with atomic_path(epath) as tmp:
            errors.write_parquet(tmp)
        for e in errors.iter_rows(named=True):
            err_console.print(f"error: {e['call_id']}: {e['message']}", markup=False)
        console.print(f"{errors.height} call(s) failed; see {epath}")
        sys.exit(1)


__all__ = ["prepare"]
