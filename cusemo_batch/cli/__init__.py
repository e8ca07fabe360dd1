"""The ``cusemo-batch`` command line: a thin layer over the library API.

Commands import heavy modules (torch, onnxruntime, the training package) lazily, inside the
command, so ``--help`` never loads them and scoring never imports torch; the option defaults come
from the option dataclasses, which costs numpy and polars at start-up (~0.3 s). Exit codes: 0 ok, 1 some items failed, 2 usage or input
error, 3 output locked by another run.
"""

from __future__ import annotations

import click

from cusemo_batch import __version__


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="cusemo-batch")
def main() -> None:
    """Continuous speech-emotion (valence, arousal) analytics for call-center recordings."""


def _register() -> None:
    from .corpus import corpus
    from .experiment import experiment
    from .export import export_cmd, info_cmd
    from .prepare import prepare
    from .report import report
    from .score import score
    from .train import evaluate, train

    main.add_command(score)
    main.add_command(corpus)
    main.add_command(train)
    main.add_command(evaluate)
    main.add_command(export_cmd)
    main.add_command(info_cmd)
    main.add_command(prepare)
    main.add_command(experiment)
    main.add_command(report)


_register()
