"""``cusemo-batch experiment run|report|tune``: the paper's ablations, significance, Optuna tuning.

The quick profile (``--quick`` on run and tune; not the paper's protocol, see
``training.experiments.QUICK_PROFILE``) runs all three paper grids in ~10-20 min on a 2-core CPU:
seeds 42 and 24 (tune: the one training seed), a narrower CRNN (conv 16/32/32, LSTM 64, MLP
64/32; the paper's kernels, pools and layers), 4 epochs, lr 3e-3, gradient clipping at 1, 50 s
segments where the grid does not vary segment_s, a seeded subset of 30 calls, 1 torch thread
(steady on a shared machine; --threads 2 on an idle one).
Explicit options (--seeds, --epochs, --max-calls, --set ...) win over it.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import click

from .common import console, progress, require_torch, user_errors
from .train import _parse_seeds, _training_errors

_QUICK_HELP = ("Quick profile (minutes on a 2-core CPU, not the paper's protocol): 2 seeds, narrower CRNN "
               "16/32/32-64-64/32, 4 epochs, lr 3e-3, 50 s segments unless varied, 30 calls, 1 thread.")


def _parse_sets(items: tuple[str, ...]) -> dict:
    """``--set data.alpha_target=intensity`` -> ``{"data.alpha_target": "intensity"}`` (TOML values)."""
    out = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{item!r} is not KEY=VALUE", param_hint="--set")
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text  # a bare string
        out[key.strip()] = value
    return out


def _overrides(sets, epochs, max_calls, threads, alpha_target, beta_target) -> dict:
    over = _parse_sets(sets)
    for key, value in (("train.epochs", epochs), ("data.max_calls", max_calls), ("train.threads", threads),
                       ("data.alpha_target", alpha_target), ("data.beta_target", beta_target)):
        if value is not None:
            over[key] = value
    return over


def _common_options(fn):
    for opt in reversed([
        click.option("--epochs", type=int, help="Override [train] epochs in every cell."),
        click.option("--max-calls", type=int, help="Override [data] max_calls (a seeded subset; 0 = all)."),
        click.option("--threads", type=int, help="torch threads."),
        click.option("--alpha-target", help="Interval context column for the alpha task (default: the config's, "
                                            "empathy; bootstrapped corpora: intensity)."),
        click.option("--beta-target", help="Binary context column for the beta task (default: gender)."),
        click.option("--set", "sets", multiple=True, metavar="KEY=VALUE",
                     help="Override any config key in every cell, e.g. --set train.lr=3e-4 (repeatable)."),
        click.option("--quick", is_flag=True, help=_QUICK_HELP),
    ]):
        fn = opt(fn)
    return fn


@click.group()
def experiment() -> None:
    """Rerun the paper's ablations (grids x seeds), report them with significance tests, tune weights."""


@experiment.command("run")
@click.argument("grids", nargs=-1, required=True)
@click.argument("corpus", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Experiment directory: one sub-directory per grid, one training run per cell.")
@click.option("--seeds", help="Override the grid's seeds, e.g. 42,24.")
@click.option("--dry-run", is_flag=True, help="List the cells and their settings; train nothing.")
@_common_options
def run_cmd(grids: tuple[str, ...], corpus: Path, out: Path, seeds: str | None, dry_run: bool, epochs, max_calls,
            threads, alpha_target, beta_target, sets, quick: bool) -> None:
    """Train every cell x seed of one or more GRIDS on CORPUS (resumable).

    GRID is a grid TOML file or the name of a shipped one: label_rate (Table II), segment_batch
    (Table III), alpha_beta (Table IV). A finished cell is never retrained; an interrupted one
    resumes at its first unfinished seed. Then: cusemo-batch experiment report OUT.
    """
    require_torch()
    from cusemo_batch.training.experiments import run_grid
    from cusemo_batch.training.grids import context_tasks, load_grid

    @user_errors(*_training_errors())
    def run():
        over = _overrides(sets, epochs, max_calls, threads, alpha_target, beta_target)
        loaded = [load_grid(g, quick=quick, overrides=over, seeds=_parse_seeds(seeds)) for g in grids]
        if len({g.name for g in loaded}) != len(loaded):
            raise ValueError("two grids have the same name")
        for g in loaded:  # check every grid before training anything
            context_tasks(corpus, [c.cfg for c in g.cells])
        for g in loaded:
            cfg = g.cells[g.baseline].cfg
            console.print(f"[bold]{g.title}[/] ({g.name}): {len(g.cells)} cells x {len(g.seeds)} seeds "
                          f"{list(g.seeds)}; {cfg.train.epochs} epochs, lr {cfg.train.lr:g}, segments "
                          f"{cfg.data.segment_s:g} s, batch {cfg.train.batch_size} unless varied"
                          + (f", {cfg.data.max_calls} calls" if cfg.data.max_calls else "")
                          + (" [quick profile]" if quick else ""))
            if dry_run:
                for c in g.cells:
                    mark = " (baseline)" if c.index == g.baseline else ""
                    console.print(f"  {out / g.name / c.name}{mark}")
        if dry_run:
            return
        from rich.markup import escape

        for g in loaded:
            run_grid(g, corpus, out, log=lambda line: console.print(escape(line)),
                     progress_factory=(lambda d: progress(d, None)) if console.is_terminal else None)
        console.print(f"done; report: cusemo-batch experiment report {out}")

    run()


@experiment.command("report")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "-o", "dest", type=click.Path(file_okay=False, path_type=Path),
              help="Where to write report.md, report.json and <grid>.png (default: RUN_DIR).")
@click.option("--pairing", type=click.Choice(["seeds", "calls"]), default="seeds", show_default=True,
              help="Wilcoxon pairs: seeds (each seed's test CCC in both rows, the paper's) or calls (each "
                   "test call's CCC, averaged over seeds).")
@click.option("--no-plots", is_flag=True, help="Skip the PNG plots.")
def report_cmd(run_dir: Path, dest: Path | None, pairing: str, no_plots: bool) -> None:
    """Tables of an experiment directory: test CCC mean (sd) over seeds, best per column, Wilcoxon p
    against the baseline row; Markdown + JSON + one PNG per grid."""
    from cusemo_batch.training.grid_report import make_report, pairing_text

    @user_errors(ValueError, FileNotFoundError, KeyError)
    def run():
        rep = make_report(run_dir, dest, pairing=pairing, plots=not no_plots)
        for g in rep["grids"]:
            _print_grid(g)
            console.print(pairing_text(g).replace("**", ""))
            if g["context"].get("text"):
                console.print(g["context"]["text"].replace("`", ""))
            console.print()
        where = dest or run_dir
        console.print(f"wrote {where / 'report.md'}, {where / 'report.json'}"
                      + ("" if no_plots else ", " + ", ".join(str(where / f"{g['name']}.png") for g in rep["grids"])))

    run()


def _print_grid(g: dict) -> None:
    from rich.table import Table

    from cusemo_batch.training.grid_report import format_p
    from cusemo_batch.training.grids import fmt_value

    keys = [k for a in g["axes"] for k in a["keys"]]
    quick = " (quick profile)" if (g["settings"] or {}).get("quick") else ""
    t = Table(title=f"{g['title']}{quick}: test CCC, mean (sd) over seeds; * = best")
    for k in keys:
        t.add_column(k.partition(".")[2])
    for c in ("valence", "arousal", "p valence", "p arousal", "seeds"):
        t.add_column(c, justify="right")
    has_ref = any(r["paper"] for r in g["rows"])
    if has_ref:
        t.add_column("paper V / A", justify="right")
    for r in g["rows"]:
        cells = [fmt_value(r["values"][k]) for k in keys]
        for dim in ("valence", "arousal"):
            s = r[f"test_{dim}"]
            cells.append("-" if not s else f"{s['mean']:.3f} ({s['sd']:.3f})" + (" *" if r["best"][dim] else ""))
        for dim in ("valence", "arousal"):
            w = r["wilcoxon"][dim]
            cells.append("baseline" if w is None else ("n/a" if w["p"] is None else format_p(w["p"])))
        cells.append(f"{r['n_seeds']}/{len(g['seeds'])}")
        if has_ref:
            p = r["paper"] or {}
            cells.append(f"{p.get('valence', float('nan')):.3f} / {p.get('arousal', float('nan')):.3f}")
        t.add_row(*cells)
    console.print(t)


@experiment.command("tune")
@click.argument("corpus", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--param", "params", multiple=True, type=click.Choice(["alpha", "beta"]), default=("alpha",),
              show_default=True, help="Weight(s) to tune (repeat for both).")
@click.option("--trials", default=10, show_default=True, help="Complete trials wanted in the study (the paper: 10).")
@click.option("--seed", default=12, show_default=True,
              help="TPE sampler seed, and the training seed of every trial unless --train-seeds (the paper: 12).")
@click.option("--train-seeds", help="Training seeds per trial, e.g. 42,24 (objective = their mean dev CCC).")
@click.option("--objective", type=click.Choice(["valence", "arousal", "mean"]), default="mean", show_default=True,
              help="Dev CCC to maximise.")
@click.option("--range", "range_", type=(float, float), default=(0.0, 1.0), show_default=True,
              metavar="LOW HIGH", help="Search range of each weight.")
@click.option("--log-scale", is_flag=True, help="Sample the weight on a log scale (LOW > 0).")
@click.option("--startup-trials", type=int,
              help="Random trials before TPE starts modelling (Optuna's default: 10, so 10 trials = random search).")
@click.option("--config", "config_path", default="default", show_default=True,
              help="Base config (name in training/configs or path). Epochs default to 60, the paper's.")
@click.option("--out", "-o", type=click.Path(file_okay=False, path_type=Path),
              help="Run directory: study.db (SQLite), trials/<params>/ runs, tune.json "
                   "(default: runs/tune_<params>_<objective>). Re-running resumes the study.")
@_common_options
def tune_cmd(corpus: Path, params, trials: int, seed: int, train_seeds, objective: str, range_, log_scale: bool,
             startup_trials, config_path: str, out: Path | None, epochs, max_calls, threads, alpha_target,
             beta_target, sets, quick: bool) -> None:
    """Optuna TPE over the auxiliary weight(s) on CORPUS; objective = dev CCC of the best checkpoint.

    Prints the best value with its dev and test CCC. The study is stored in SQLite under the run
    directory, so it can be resumed (same command) and inspected (optuna.load_study).
    """
    require_torch()
    from cusemo_batch.training.config import load_config
    from rich.markup import escape

    from cusemo_batch.training.grids import QUICK_PROFILE, nest
    from cusemo_batch.training.tuning import tune

    @user_errors(*_training_errors())
    def run():
        cfg = load_config(config_path)
        if quick:
            cfg = cfg.with_overrides(**QUICK_PROFILE)
        elif epochs is None:
            cfg = cfg.with_overrides(train={"epochs": 60})
        over = _overrides(sets, epochs, max_calls, threads, alpha_target, beta_target)
        if over:
            cfg = cfg.with_overrides(**nest(over))
        cfg = cfg.with_overrides(train={"seeds": list(_parse_seeds(train_seeds) or (seed,))})
        dest = out or Path("runs") / f"tune_{'_'.join(params)}_{objective}"
        console.print(f"tuning {', '.join(params)} in [{range_[0]:g}, {range_[1]:g}]{' (log)' if log_scale else ''}: "
                      f"{trials} trials, TPE seed {seed}, objective dev CCC {objective}; per trial "
                      f"{cfg.train.epochs} epochs, seeds {list(cfg.train.seeds)}"
                      + (" [quick profile]" if quick else ""))
        res = tune(corpus, dest, cfg, params=params, trials=trials, seed=seed, objective=objective,
                   low=range_[0], high=range_[1], log_scale=log_scale, startup_trials=startup_trials,
                   log=lambda line: console.print(escape(line)))
        b = res["best"]
        if res["context"].get("text"):
            console.print(res["context"]["text"].replace("`", ""))
        vals = ", ".join(f"{k} = {v:.4g}" for k, v in b["params"].items())
        console.print(f"[bold]best: {vals}[/] (trial {b['number']} of {res['n_complete']}): dev CCC {objective} "
                      f"{b['dev_objective']:.3f} (valence {_n(b.get('dev_valence'))}, arousal "
                      f"{_n(b.get('dev_arousal'))}); test CCC valence {_n(b.get('test_valence'))}, arousal "
                      f"{_n(b.get('test_arousal'))}")
        console.print(f"paper: {res['paper']}")
        console.print(f"study: {res['storage']} (name {res['study']}); summary: {dest / 'tune.json'}")

    run()


def _n(v) -> str:
    return "-" if v is None else f"{v:.3f}"

