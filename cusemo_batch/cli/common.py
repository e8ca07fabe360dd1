"""Shared CLI plumbing: one rich console, one-line user errors with exit code 2, progress bars."""

from __future__ import annotations

import functools
import sys
from contextlib import contextmanager
from typing import Callable, Iterator, TypeVar

import click
from rich.console import Console

F = TypeVar("F", bound=Callable)

# rich switches to plain output (no colour, no live bars) when stdout is not a terminal.
console = Console(highlight=False, soft_wrap=True)
err_console = Console(stderr=True, highlight=False, soft_wrap=True)


class UserError(click.ClickException):
    """A mistake in the user's input (flags, files, config): one line on stderr, exit code 2."""

    exit_code = 2

    def show(self, file=None) -> None:  # noqa: D401 - click API
        from rich.markup import escape

        # escape: messages quote config sections like "[train]", which rich would eat as markup
        err_console.print(f"[bold red]error:[/] {escape(self.format_message())}", soft_wrap=True)


def user_errors(*types: type[BaseException]) -> Callable[[F], F]:
    """Turn the listed domain exceptions into :class:`UserError` (no traceback for user mistakes)."""

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except types as e:
                raise UserError(str(e)) from None

        return wrapper  # type: ignore[return-value]

    return deco


def require_torch() -> None:
    """Fail with a one-line install hint when the ``train`` extra is missing.

    Looks the package up without importing it: importing torch costs seconds, and the command
    that needs it imports it anyway.
    """
    from importlib.util import find_spec

    if find_spec("torch") is None:
        raise UserError("this command needs torch: pip install 'cusemo-batch[train]' (CPU build: see README)")


def is_tty() -> bool:
    return sys.stdout.isatty()


@contextmanager
def progress(description: str, total: int | None) -> Iterator[Callable[[int], None]]:
    """Progress bar on a TTY; nothing on a pipe (callers log plain lines there instead)."""
    if not console.is_terminal:
        yield lambda n=1: None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeRemainingColumn(), console=console, transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
