"""``cusemo-batch train`` and ``cusemo-batch evaluate`` (need the ``train`` extra: torch)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .common import console, progress, require_torch, user_errors


def _training_errors():
    """Exception types that are the user's input problems, imported lazily (torch is heavy)."""
    from cusemo_batch.audio import AudioError
    from cusemo_batch.training.checkpoint import CheckpointError
    from cusemo_batch.training.config import ConfigError
    from cusemo_batch.training.corpus import CorpusError

    return (AudioError, CheckpointError, ConfigError, CorpusError, ValueError, FileNotFoundError)


def _parse_seeds(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise click.BadParameter(f"{text!r} is not a comma-separated list of integers", param_hint="--seeds")


@click.command()
@click.argument("corpus", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Run directory (checkpoints, metrics, summary). Re-running resumes unfinished seeds.")
@click.option("--config", "config_path", type=click.Path(path_type=Path),
              help="TOML config, or the name of one in training/configs (e.g. quick, label_rate_200).")
@click.option("--epochs", type=int, help="Override [train] epochs.")
@click.option("--seeds", help="Override [train] seeds, e.g. 42,24,12.")
@click.option("--batch-size", type=int, help="Override [train] batch_size.")
@click.option("--lr", type=float, help="Override [train] lr.")
@click.option("--threads", type=int, help="torch threads (default: torch's choice).")
@click.option("--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Seeds trained at once in separate processes (they share the threads).")
@click.option("--calls", "calls_file", type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Train on these calls only: a CSV/Parquet with a call_id column (e.g. the "
                   "selected.csv of `prepare select`, the paper's ICC > 0.7 rule) or one id per line.")
@click.option("--refit-from", "refit_from", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A finished run of this corpus: retrain its seeds on train + dev for the epochs and "
                   "learning rates dev chose there (its config; test stays held out).")
def train(corpus: Path, out: Path, config_path: Path | None, epochs: int | None, seeds: str | None,
          batch_size: int | None, lr: float | None, threads: int | None, jobs: int,
          calls_file: Path | None, refit_from: Path | None) -> None:
    """Train the CusEmo CRNN on a CORPUS in the CusEmo layout (one run per seed).

    Splits are by speaker when context.csv has a `speaker` column, else by call. Prints the test
    CCC of the best-dev checkpoint per seed and its mean (sd) over seeds.

    With --refit-from RUN, the final fit once dev has chosen: every seed of RUN retrains on RUN's
    train + dev calls for exactly its dev-chosen epochs, and the seed dev chose there is the one
    to export (docs/training.md).
    """
    require_torch()
    _train(corpus, out, config_path, epochs, seeds, batch_size, lr, threads, calls_file, jobs, refit_from)


def _train(corpus, out, config_path, epochs, seeds, batch_size, lr, threads, calls_file=None, jobs=1,
           refit_from=None) -> None:
    from cusemo_batch.training.config import from_dict, load_config
    from cusemo_batch.training.loop import read_call_list, run_training

    @user_errors(*_training_errors())
    def run():
        calls = read_call_list(calls_file) if calls_file is not None else None
        if calls is not None:
            console.print(f"call list {calls_file}: {len(calls)} call(s)")
        if refit_from is not None:
            if config_path is not None or epochs is not None or batch_size is not None or lr is not None:
                raise ValueError("--refit-from replays its run's own config: drop --config, --epochs, "
                                 "--batch-size and --lr")
            try:
                cfg = from_dict(json.loads((refit_from / "config.json").read_text())["config"])
            except (OSError, ValueError, KeyError):
                raise ValueError(f"{refit_from}: not a training run (no readable config.json)") from None
        else:
            cfg = load_config(config_path)
        over = {k: v for k, v in {"epochs": epochs, "seeds": _parse_seeds(seeds), "batch_size": batch_size,
                                  "lr": lr, "threads": threads}.items() if v is not None}
        if over:
            cfg = cfg.with_overrides(train=over)
        if refit_from is not None:
            console.print(f"refit of {refit_from}: its train + dev calls, each seed for its dev-chosen epochs")
        length = "epochs as dev chose" if refit_from is not None else f"{cfg.train.epochs} epochs"
        console.print(f"config {cfg.name}: {length}, seeds {list(cfg.train.seeds)}, "
                      f"label rate {cfg.data.label_rate_ms:g} ms, segments {cfg.data.segment_s:g} s, "
                      f"batch {cfg.train.batch_size}, alpha {cfg.loss.alpha:g}, beta {cfg.loss.beta:g}")
        summary = run_training(corpus, cfg, out, log=console.print,
                               progress_factory=(lambda d: progress(d, None)) if console.is_terminal else None,
                               calls=calls, jobs=jobs, refit_from=refit_from)
        _print_summary(summary)
        console.print(f"run directory: {out}  (best seed {summary['best_seed']}: "
                      f"{out / ('seed_' + str(summary['best_seed'])) / 'best.pt'})")

    run()


def _fmt(stat: dict | None) -> str:
    return f"{stat['mean']:.3f} ({stat['sd']:.3f})" if stat else "-"


def _print_summary(summary: dict) -> None:
    from rich.table import Table

    t = Table(title=f"CCC, mean (sd) over {len(summary['seeds'])} seed(s)")
    t.add_column("split / averaging")
    t.add_column("valence", justify="right")
    t.add_column("arousal", justify="right")
    for part in ("dev", "test"):
        t.add_row(f"{part}, concatenated calls", _fmt(summary.get(f"{part}_valence")), _fmt(summary.get(f"{part}_arousal")))
        t.add_row(f"{part}, mean per call", _fmt(summary.get(f"{part}_valence_per_call")),
                  _fmt(summary.get(f"{part}_arousal_per_call")))
    console.print(t)


@click.command()
@click.argument("target", type=click.Path(exists=True, path_type=Path))
@click.argument("corpus", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--split", "split_name", default="test", show_default=True,
              type=click.Choice(["train", "dev", "test", "all"]),
              help="Which calls to score; needs the run's split.json (else all calls are used).")
@click.option("--out", "out_json", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the metrics as JSON here (default: RUN_DIR/evaluate_<split>.json for a run dir).")
def evaluate(target: Path, corpus: Path, split_name: str, out_json: Path | None) -> None:
    """Test CCC of a RUN_DIR (every seed, mean (sd)) or of one CHECKPOINT on CORPUS.

    CCC is reported two ways: over the concatenation of all calls (the paper's) and as the mean of
    per-call CCCs (tracking within calls).
    """
    require_torch()
    from cusemo_batch.training.evaluation import evaluate_checkpoint, summarise

    @user_errors(*_training_errors())
    def run():
        if target.is_dir():
            ckpts = sorted(target.glob("seed_*/best.pt"))
            if not ckpts:
                raise ValueError(f"{target}: no seed_*/best.pt checkpoints (not a run directory?)")
            split_file = target / "split.json"
        else:
            ckpts = [target]
            split_file = target.parent.parent / "split.json"
        split = json.loads(split_file.read_text()) if split_file.is_file() else None
        if split is None and split_name != "all":
            console.print(f"note: no split.json next to {target}; evaluating on all calls of {corpus}")
        results = []
        for ck in ckpts:
            m = evaluate_checkpoint(ck, corpus, split_name, split)
            results.append({"seed": ck.parent.name, "checkpoint": str(ck), "test": m, "dev": {}})
            console.print(f"{ck}: {m['n_calls']} calls, CCC valence {m['valence']:.3f} arousal {m['arousal']:.3f} "
                          f"(per call {m['valence_per_call']:.3f} / {m['arousal_per_call']:.3f})")
        summary = summarise(results)
        summary["split"] = split_name if split is not None else "all"
        summary["per_checkpoint"] = results
        if len(results) > 1:
            _print_summary(summary)
        dest = out_json or (target / f"evaluate_{summary['split']}.json" if target.is_dir() else None)
        if dest:
            from cusemo_batch.files import atomic_write_text

            atomic_write_text(dest, json.dumps(summary, indent=2))
            console.print(f"wrote {dest}")

    run()
