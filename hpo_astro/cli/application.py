"""The Typer application: the `hpo-astro` app and its `data` sub-app, the global options, the error boundary that
turns bad input into one line (exit 2), how every command's help reads, and `main`, the console-script entry."""

from __future__ import annotations

import logging
import re
from typing import Annotated

import typer
from typer.core import TyperGroup

from hpo_astro.cli.output import console, fail, note
from hpo_astro.errors import UserError, write_fault

# Click's UsageError (Typer vendors Click, so reach it through a public subclass).
_UsageError: type[Exception] = typer.BadParameter.__mro__[1]


class _Group(TyperGroup):
    """Bad input anywhere below (a UserError, or a usage error such as an option out of range) becomes one line
    on stderr and exit code 2, with no traceback. Also how every command's help reads (see `_polish`)."""

    def make_context(self, info_name, args, parent=None, **extra):  # type: ignore[no-untyped-def,override]
        # The top level's own usage errors (an unknown option, a missing command) arise here, before `invoke`, where
        # Typer would draw them in a Rich box: one `error:` line too. Asking for help with no arguments stays help.
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except _UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":
                raise
            command = exc.ctx.command_path if getattr(exc, "ctx", None) else info_name
            fail(f"{exc.format_message()} (see '{command} --help')")

    def invoke(self, ctx: typer.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except typer.Exit:  # a command that has said its one line already (Click's Exit is a RuntimeError)
            raise
        except UserError as exc:  # bad input: exit 2; a write the machine refused (CannotWrite): exit 1
            fail(str(exc), code=exc.exit_code)
        except _UsageError as exc:
            if getattr(exc, "ctx", None):
                command = exc.ctx.command_path
            else:  # raised while the subcommand parsed its options: its help, not the group's
                command = " ".join(filter(None, [ctx.command_path, ctx.invoked_subcommand]))
            fail(f"{exc.format_message()} (see '{command} --help')")
        except Exception as exc:  # a full disk or a failing store anywhere: one line too, never a traceback
            reason = write_fault(exc)
            if reason is not None:
                fail(f"cannot write: {reason}; free some space and re-run the same command", code=1)
            if not _store_fault(exc):
                raise
            fail(f"the study store failed: {' '.join(str(getattr(exc, 'orig', None) or exc).split()[:40])}")

    def get_command(self, ctx: typer.Context, cmd_name: str):  # type: ignore[no-untyped-def,override]
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _polish(command, ctx)
        return command

    def get_params(self, ctx: typer.Context):  # type: ignore[no-untyped-def,override]
        return [_as_flag(param) for param in super().get_params(ctx)]  # the group's own: --version, --help


def _polish(command: typer.core.TyperCommand, ctx: typer.Context) -> None:
    """How a command's help reads, for every command (those added later too): a docstring's line breaks are not
    sentence breaks (Rich help keeps them, so a command's summary in the list stopped mid-sentence), and a boolean
    flag takes no value, so it is shown as `--png`, not `--png <bool>`."""
    if command.help:
        command.help = _unwrap(command.help)
    for param in command.params:
        _as_flag(param)
    _as_flag(command.get_help_option(ctx))


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
    cls=_Group,
    help="Hyperparameter search for real/bogus CNNs on astronomical cutouts (Optuna studies).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
data_app = typer.Typer(cls=_Group, help="Simulate, download and inspect ExRomana data files.", no_args_is_help=True)
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


def main() -> None:
    """The `hpo-astro` console script (the commands register themselves when `hpo_astro.cli` is imported)."""
    app()
