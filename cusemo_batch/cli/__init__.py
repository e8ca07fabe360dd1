"""The ``cusemo-batch`` command line: a thin layer over the library API.

Commands import heavy modules (torch, onnxruntime) lazily, inside the command, so ``--help`` is
instant and scoring never imports torch. Exit codes: 0 ok, 1 some items failed, 2 usage or input
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
    try:
        from .corpus import corpus
    except ImportError as e:  # its flags' defaults come from cusemo_batch.training; see _unavailable
        corpus = _unavailable("corpus", e)
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



def _unavailable(name: str, error: ImportError) -> click.Command:
    """A stand-in for a command whose module cannot be imported -- e.g. ``python -m cusemo_batch``
    run inside a source checkout over a non-editable install, where the local ``cusemo_batch/``
    shadows the installed one and has no ``training`` subpackage -- so the other commands still work."""
    from .common import UserError

    @click.command(name, context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
                   add_help_option=False)
    def stand_in() -> None:
        raise UserError(f"`{name}` is unavailable here ({error}); install with `pip install -e .` "
                        "or run from outside the source tree")

    stand_in.help = f"(unavailable here: {error})"
    return stand_in


_register()
