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


# ------------------------------------------------------------------------ how calls are found
def names(text: str) -> tuple[str, ...]:
    """``"agent, client"`` -> ``("agent", "client")`` (empty items dropped)."""
    return tuple(s.strip() for s in text.split(",") if s.strip())


def role_pairs(text: str, flag: str = "--roles") -> dict[str, str]:
    """``"SPEAKER_00=agent,SPEAKER_01=client"`` -> a dict; a malformed item is a usage error."""
    out = {}
    for item in names(text):
        if "=" not in item:
            raise click.BadParameter(f"{item!r} is not LABEL=ROLE", param_hint=flag)
        k, v = item.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def discovery_options(verb: str) -> Callable[[F], F]:
    """The flags that say how calls are laid out (``score``, ``prepare rank-f0``), with the defaults
    of :class:`~cusemo_batch.calls.DiscoveryOptions`; :func:`discovery_from` turns them back into one."""
    from cusemo_batch.calls import LAYOUTS, DiscoveryOptions

    d = DiscoveryOptions()
    flags = [
        click.option("--layout", type=click.Choice(LAYOUTS), default=d.layout, show_default=True,
                     help="Force one layout instead of detecting it per call."),
        click.option("--channels", default=",".join(d.channels), show_default=True,
                     help="Speaker of each channel of stereo files."),
        click.option("--roles", default="", help="RTTM label to role, e.g. SPEAKER_00=agent,SPEAKER_01=client."),
        click.option("--speaker-name", default=d.speaker_name, show_default=True,
                     help="Speaker of mono files without RTTM."),
        click.option("--speakers", default="", help=f"Roles to {verb}, e.g. client (default: every speaker found)."),
        click.option("--follow-symlinks", is_flag=True, help="Follow symlinks that point outside CALLS."),
    ]

    def apply(f: F) -> F:
        for flag in reversed(flags):
            f = flag(f)
        return f

    return apply


def discovery_from(layout: str, channels: str, roles: str, speaker_name: str, speakers: str,
                   follow_symlinks: bool, **extra):
    """The :class:`~cusemo_batch.calls.DiscoveryOptions` of :func:`discovery_options`' flags."""
    from cusemo_batch.calls import DiscoveryOptions

    return DiscoveryOptions(layout=layout, channels=names(channels), speaker_name=speaker_name,
                            roles=role_pairs(roles), speakers=names(speakers), follow_symlinks=follow_symlinks,
                            **extra)

