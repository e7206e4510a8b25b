"""The Typer application: the `hpo-astro` app and its `data` sub-app, the global options, the error boundary that
turns bad input into one line (exit 2), how every command's help reads, and `main`, the console-script entry."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Annotated, Any

import typer
import typer.main
from typer.core import TyperGroup

from hpo_astro.cli.output import console, fail, note, program
from hpo_astro.errors import UserError, write_fault

# Click's usage error (an unknown option, a value out of range, a missing command): Typer vendors Click privately
# and exports only a subclass, `BadParameter`.
_UsageError: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def _polish(command: typer.core.TyperCommand | TyperGroup) -> None:
    """How a command's help reads, for every command: a docstring's line breaks are not sentence breaks (Rich help
    keeps them, so a command's summary in the list stopped mid-sentence), and a boolean flag takes no value, so it is
    shown as `--png`, not `--png <bool>`."""
    if command.help:
        command.help = _unwrap(command.help)
    for param in command.params:
        _as_flag(param)
    _as_flag(command.get_help_option(typer.Context(command)))
    for sub in getattr(command, "commands", {}).values():
        _polish(sub)


def _unwrap(text: str) -> str:
    """Paragraphs (blank-line separated) on one line each: the help formatter wraps them to the terminal."""
    import inspect

    paragraphs = re.split(r"\n\s*\n", inspect.cleandoc(text))
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in paragraphs)


def _as_flag(param: object) -> object:
    # Typer shows an option's value type unless it has a metavar; an empty one shows nothing.
    if getattr(param, "is_flag", False) and getattr(param, "metavar", "") is None:
        param.metavar = ""  # type: ignore[attr-defined]
    return param


def _command_path(root: TyperGroup, args: Sequence[str] | None, prog_name: str | None) -> str:
    """The words naming the command `args` ran (e.g. `hpo-astro data synth`), for an error raised while it parsed
    its options, which carries no context to say so. The only options before a command name are flags."""
    import sys

    words, command = [prog_name or program()], root
    for arg in sys.argv[1:] if args is None else args:
        sub = getattr(command, "commands", {}).get(arg)
        if sub is None and not arg.startswith("-"):
            break
        if sub is not None:
            words.append(arg)
            command = sub
    return " ".join(words)


def _store_fault(exc: BaseException) -> bool:
    """A database error past the checks made when the store was opened (a page damaged after its integrity check,
    a lock held past the busy timeout): bad input, one line. sqlalchemy is looked up only if already loaded."""
    import sqlite3
    import sys

    sqlalchemy_exc = sys.modules.get("sqlalchemy.exc")
    return isinstance(exc, sqlite3.DatabaseError) or (
        sqlalchemy_exc is not None and isinstance(exc, sqlalchemy_exc.DatabaseError)
    )


app = typer.Typer(
    help="Hyperparameter search for real/bogus CNNs on astronomical cutouts (Optuna studies).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
data_app = typer.Typer(help="Simulate, download and inspect ExRomana data files.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _print_version(value: bool) -> None:
    if value:
        from hpo_astro import __version__

        console.print(f"hpo-astro {__version__}", highlight=False)
        raise typer.Exit()


class _LibraryNotes(logging.Handler):
    """The library's INFO lines (e.g. that the default data set is being simulated), one plain line each on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        note(record.getMessage())


_library_notes = _LibraryNotes(logging.INFO)


@app.callback()
def _global_options(
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version and exit."),
    ] = False,
) -> None:
    logger = logging.getLogger("hpo_astro")
    logger.setLevel(logging.INFO)
    logger.addHandler(_library_notes)  # the same handler each time: added once per process


def main(args: Sequence[str] | None = None, prog_name: str | None = None, obj: Any = None) -> int:
    """The `hpo-astro` console script: run the command line `args` (default: the process's) and return its exit code.
    `obj` is handed to the commands as Click's context object (`hpo_astro.cli.output.injected_trainer` reads it).

    The one error boundary: bad input (a `UserError`, a usage error) is one `error:` line on stderr and exit code 2,
    a write the machine refused or a failing store one line and exit code 1, never a traceback; anything else is a
    bug and shows its traceback."""
    command = typer.main.get_command(app)  # the commands register themselves when `hpo_astro.cli` is imported
    _polish(command)
    try:
        try:
            returned = command.main(args=args, prog_name=prog_name, standalone_mode=False, obj=obj)
            return returned if isinstance(returned, int) else 0  # an int: the code of a `typer.Exit`
        except UserError as exc:  # bad input: exit 2; a write the machine refused (CannotWrite): exit 1
            fail(str(exc), code=exc.exit_code)
        except _UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":  # `hpo-astro` alone: the help is printed already
                return 2
            path = exc.ctx.command_path if getattr(exc, "ctx", None) else _command_path(command, args, prog_name)
            fail(f"{exc.format_message()} (see '{path} --help')")
        except typer.Abort:  # end of input at a prompt
            fail("aborted", code=1)
        except Exception as exc:  # a full disk or a failing store anywhere: one line too, never a traceback
            reason = write_fault(exc)
            if reason is not None:
                fail(f"cannot write: {reason}; free some space and re-run the same command", code=1)
            if not _store_fault(exc):
                raise
            fail(f"the study store failed: {' '.join(str(getattr(exc, 'orig', None) or exc).split()[:40])}")
    except typer.Exit as exc:  # `fail` said its one line
        return exc.exit_code
