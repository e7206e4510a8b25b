"""What the command line writes for the user: its two consoles, one-line notes and failures, and the command lines
it prints for them to paste (`program`, `resume_command`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

import typer
from rich.console import Console

if TYPE_CHECKING:
    from hpo_astro.core.train import TrainFn

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


def note(message: str) -> None:
    """One plain line on stderr: progress the library reports, a skipped study, a warning."""
    err_console.print(message, markup=False, highlight=False)


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
