"""``cusemo-batch corpus ...``: build and check corpora in the CusEmo layout."""

from __future__ import annotations

from pathlib import Path

import click

from .common import console, progress, user_errors


@click.group()
def corpus() -> None:
    """Build and check annotated corpora (CusEmo layout)."""


@corpus.command("from-categorical")
@click.argument("manifest", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--out", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Corpus folder to create (CusEmo layout).")
# The defaults are BootstrapConfig's, written out: importing cusemo_batch.training when the CLI
# starts would tie every command to the training package (tests/test_cli.py keeps them equal).
@click.option("--seed", default=0, show_default=True, help="Seed for grouping, pauses and simulated raters.")
@click.option("--min-call-s", default=30.0, show_default=True, help="Shortest pseudo-call (seconds).")
@click.option("--max-call-s", default=75.0, show_default=True, help="Longest pseudo-call (seconds).")
@click.option("--speakers", default="", help="Comma-separated speaker ids to use (default: all).")
@click.option("--max-calls-per-speaker", default=0, show_default=True, help="0 = no limit.")
@click.option("--map", "map_path", type=click.Path(dir_okay=False, exists=True, path_type=Path),
              help="TOML with [emotions] name = [valence, arousal] and [intensity] name = scale.")
@user_errors(ValueError, OSError)
def from_categorical(manifest: Path, out: Path, seed: int, min_call_s: float, max_call_s: float,
                     speakers: str, max_calls_per_speaker: int, map_path: Path | None) -> None:
    """Bootstrap pseudo-calls with continuous tracks from a categorical emotional-speech MANIFEST.

    MANIFEST is a CSV with file,speaker,gender,emotion,intensity,... (paths relative to it), e.g.
    ../shared/data/ravdess/manifest.csv. Categories become valence/arousal targets through a
    documented map; two simulated raters per call write Darma-style tracks. Splits by speaker.
    """
    from cusemo_batch.training.categorical import BootstrapConfig, build_corpus

    if min_call_s <= 0 or max_call_s < min_call_s:
        raise click.BadParameter("need 0 < --min-call-s <= --max-call-s")
    if out.exists() and any(out.iterdir()):
        raise click.BadParameter(f"{out} exists and is not empty", param_hint="--out")
    cfg = BootstrapConfig(seed=seed, min_call_s=min_call_s, max_call_s=max_call_s,
                          speakers=tuple(s for s in speakers.split(",") if s),
                          max_calls_per_speaker=max_calls_per_speaker)
    with progress("building pseudo-calls", None) as advance:
        summary = build_corpus(manifest, out, cfg, map_path, progress=advance)
    console.print(f"wrote {summary['calls']} pseudo-calls from {summary['speakers']} speakers "
                  f"({summary['hours']:.2f} h) to {out}")


@corpus.command("check")
@click.argument("corpus_dir", type=click.Path(path_type=Path))
@click.option("--min-annotators", default=2, show_default=True)
@user_errors(ValueError, OSError)
def check(corpus_dir: Path, min_annotators: int) -> None:
    """Validate a corpus and list every problem with its file and line."""
    from cusemo_batch.training.corpus import read_corpus

    c = read_corpus(corpus_dir, min_annotators=min_annotators)
    for w in c.warnings:
        console.print(f"warning: {w}")
    hours = sum(x.duration_s for x in c.calls) / 3600
    console.print(f"ok: {len(c.calls)} calls, {hours:.2f} h, context columns: {', '.join(c.context_columns) or '-'}")
