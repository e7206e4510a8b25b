"""What the command line writes for the user: its two consoles, one-line notes and failures, and the command lines
it prints for them to paste (`program`, `resume_command`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.console import Console

from hpo_astro.errors import UserError

if TYPE_CHECKING:
    from hpo_astro.core.train import TrainFn

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

QUIET, NORMAL, VERBOSE = -1, 0, 1
_verbosity = NORMAL  # set by the global -q / -v options (`set_verbosity`) for the command being run


def set_verbosity(level: int) -> None:
    """How much the command writes: QUIET (no progress bar nor per-trial lines, no notes), NORMAL, VERBOSE (and
    above: Optuna's own lines too)."""
    global _verbosity
    _verbosity = level


def verbosity() -> int:
    return _verbosity


def apply_verbosity(verbose: int, quiet: bool, *, reset: bool = False) -> None:
    """The -v (counted) and -q options as given: they set the verbosity, and the library's notes (its INFO lines)
    go with it; neither given keeps the level set so far, or NORMAL with `reset` (the global options)."""
    import logging

    if verbose and quiet:
        raise UserError("-v/--verbose and -q/--quiet contradict each other: give one")
    if not (verbose or quiet or reset):
        return
    set_verbosity(QUIET if quiet else NORMAL + verbose)
    level = logging.WARNING if quiet else logging.DEBUG if verbose > 1 else logging.INFO
    logging.getLogger("hpo_astro").setLevel(level)


_live: list[Console] = []  # the console of the live display on the terminal, while one runs (`live_display`)


def note(message: str) -> None:
    """One plain line on stderr: progress the library reports, a skipped study, a warning. While a live display runs
    on the terminal, through its console instead, which prints the line above the display (Rich writes a console's
    lines past its own redirection of stderr: on the same terminal they would land inside the display)."""
    (_live[-1] if _live else err_console).print(message, markup=False, highlight=False)


@contextlib.contextmanager
def live_display(live: Console) -> Iterator[None]:
    """While the block runs, `note` prints through `live` (a live display's console) if it is a terminal's."""
    if not live.is_terminal:
        yield
        return
    _live.append(live)
    try:
        yield
    finally:
        _live.remove(live)


def fail(message: str, code: int = 2) -> NoReturn:
    """End the command with one `error:` line on stderr and exit code `code` (2: bad input; 1: the run failed)."""
    message = " ".join(message.split())
    err_console.print(f"error: {message}", style="red", highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(code)


def program() -> str:
    """How the user ran hpo-astro, so that the commands printed for them work where they are: `hpo-astro` when
    that is what the shell finds on PATH, else the path they typed (e.g. `.venv/bin/hpo-astro`)."""
    import shutil
    import sys

    typed = sys.argv[0] if sys.argv else ""
    if Path(typed).name != "hpo-astro":  # python -m hpo_astro.cli, or a test runner
        return "hpo-astro"
    on_path = shutil.which("hpo-astro")
    if on_path and Path(on_path).resolve() == Path(typed).resolve():
        return "hpo-astro"
    return typed


def resume_command() -> str:
    """The command line that ran this process, as the user can paste it to resume after an interrupt."""
    import shlex
    import sys

    return " ".join(shlex.quote(a) for a in [program(), *sys.argv[1:]])


def injected_trainer(ctx: typer.Context) -> TrainFn | None:
    """The trainer the caller handed to the app as Click's context object: `main(args, obj={"train": fn})` (e.g. a
    fast stand-in in tests, a wrapped trainer in a notebook); None, the real trainer."""
    obj = ctx.find_root().obj
    return obj.get("train") if isinstance(obj, dict) else None
