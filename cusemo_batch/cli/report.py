"""``cusemo-batch report OUT``: one self-contained HTML page of a scored night (no torch, no onnxruntime)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import click

from cusemo_batch.report_data import DEFAULT_TOP

from .common import UserError, console

_DATE = click.DateTime(formats=["%Y-%m-%d"])


@click.command(epilog="""
\b
Examples:
  cusemo-batch report /warehouse/emotion                      # latest night with scored calls
  cusemo-batch report OUT --date 2026-11-24 --speaker client -o night.html
  cusemo-batch report OUT --from 2026-11-01 --to 2026-11-30   # adds flag rates per day
""")
@click.argument("out", metavar="OUT", type=click.Path(path_type=Path))
@click.option("--date", "date", type=_DATE, help="The night (partition date). Default: the latest night with "
              "scored calls (else the latest run's date).")
@click.option("--from", "date_from", type=_DATE, help="First date of a range (with --to); adds the per-day trend.")
@click.option("--to", "date_to", type=_DATE, help="Last date of a range (inclusive).")
@click.option("--speaker", help="Only this speaker's flags and events flag and rank a call, e.g. client "
              "(figures still show every speaker).")
@click.option("--top", type=click.IntRange(min=0), default=DEFAULT_TOP, show_default=True,
              help="Figures for the N most severe flagged calls (the table lists all).")
@click.option("--output", "-o", type=click.Path(dir_okay=False, path_type=Path),
              help="HTML file to write. Default: report-DATE.html (report-FROM_TO.html) here.")
def report(out: Path, date: dt.datetime | None, date_from: dt.datetime | None, date_to: dt.datetime | None,
           speaker: str | None, top: int, output: Path | None) -> None:
    """Write an HTML report of OUT (the --out of `score`): flagged calls ranked by severity, valence and
    arousal over call time per flagged call, the night's runs and errors. One file, no network."""
    if date and (date_from or date_to):
        raise UserError("give either --date or --from/--to, not both")
    if (date_from is None) != (date_to is None):
        raise UserError("a range needs both --from and --to")
    if not out.is_dir():
        raise UserError(f"{out}: no such folder (the --out of cusemo-batch score)")
    from importlib.util import find_spec

    if find_spec("matplotlib") is None:  # an optional dependency (the `prepare` extra)
        raise UserError("this command needs matplotlib: pip install matplotlib (or 'cusemo-batch[prepare]')")
    from cusemo_batch.report import ReportError, build

    day = lambda d: d.date() if d else None  # noqa: E731
    try:
        path = build(out, date=day(date), date_from=day(date_from), date_to=day(date_to), speaker=speaker,
                     output=output, top=top)
    except ReportError as e:
        raise UserError(str(e)) from None
    from rich.markup import escape

    console.print(escape(f"report written to {path} ({path.stat().st_size / 1e6:.2f} MB)"))
