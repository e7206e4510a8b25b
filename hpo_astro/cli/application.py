"""The Typer application: the `hpo-astro` app and its `data` sub-app, the global options (-v/-q, --version, shell
completion), the error boundary that turns bad input into one line (exit 2), how every command's help reads (-h as
well as --help, defaults in one style), and `main`, the console-script entry."""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Annotated, Any

import typer
import typer.main
from typer.core import TyperGroup

from hpo_astro.cli.options import QuietOpt, VerboseOpt
from hpo_astro.cli.output import apply_verbosity, console, fail, note, program
from hpo_astro.errors import UserError, write_fault

# Click's usage error (an unknown option, a value out of range, a missing command): Typer vendors Click privately
# and exports only a subclass, `BadParameter`.
_UsageError: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")
HELP_OPTIONS = ["-h", "--help"]


def _polish(command: typer.core.TyperCommand | TyperGroup) -> None:
    """How a command's help reads, for every command: a docstring's line breaks are not sentence breaks (Rich help
    keeps them, so a command's summary in the list stopped mid-sentence), a boolean flag takes no value, so it is
    shown as `--png`, not `--png <bool>`, and a default is shown one way, `(default: VALUE)` in its help text."""
    if command.help:
        command.help = _unwrap(command.help)
    for param in command.params:
        _as_flag(param)
        _placeholder(param, command)
        _default_in_help(param)
    # The help option is made once per command, and cached: with both names, whatever context asks first.
    _as_flag(command.get_help_option(typer.Context(command, help_option_names=HELP_OPTIONS)))
    for sub in getattr(command, "commands", {}).values():
        _polish(sub)


def _unwrap(text: str) -> str:
    """Paragraphs (blank-line separated) on one line each: the help formatter wraps them to the terminal."""
    import inspect

    paragraphs = re.split(r"\n\s*\n", inspect.cleandoc(text))
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in paragraphs)


def _default_in_help(param: object) -> None:
    """An option's default as its help text says the others: `(default: VALUE)`, not Typer's `[default: VALUE]`
    (an option whose help already names its default, or with no default to show, keeps its help as it is)."""
    if not isinstance(param, typer.core.TyperOption) or not param.show_default:
        return
    param.show_default = False
    default, help_text = param.default, param.help or ""
    if default in (None, "", []) or param.is_flag or param.count or "(default: " in help_text:
        return
    shown = default.value if hasattr(default, "value") else default
    param.help = f"{help_text.removesuffix('.')} (default: {shown})."


def _as_flag(param: object) -> object:
    # Typer shows an option's value type unless it has a metavar; an empty one shows nothing (a counted -v too).
    if (getattr(param, "is_flag", False) or getattr(param, "count", False)) and getattr(param, "metavar", "") is None:
        param.metavar = ""  # type: ignore[attr-defined]
    return param


# The placeholder of a value whose declaration names none (each should: URL, NAME, SECONDS...), by its type, instead
# of Typer's `<str>`, `<list[str]>`, `<int range>`; a fixed choice keeps its list of values, `<table|json>`.
_TYPE_PLACEHOLDERS = {"str": "TEXT", "path": "PATH", "int": "N", "float": "NUMBER"}


def _placeholder(param: object, command: typer.core.TyperCommand | TyperGroup) -> None:
    if not hasattr(param, "display_type"):
        return
    shown = param.display_type(typer.Context(command)).strip("<>")
    if "|" in shown:
        return
    if isinstance(param, typer.core.TyperArgument):  # its name (SRC, PATH) is its placeholder: no `<path>` beside it
        param.display_type_rich = lambda ctx: None  # type: ignore[method-assign]
        return
    if param.metavar is not None:  # type: ignore[attr-defined]
        return
    kind = shown.removeprefix("list[").removesuffix("]").removesuffix(" range")
    param.metavar = _TYPE_PLACEHOLDERS.get(kind, "VALUE")


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
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    context_settings={"help_option_names": HELP_OPTIONS},
)
data_app = typer.Typer(
    help="Simulate, download and inspect ExRomana data files.",
    no_args_is_help=True,
    context_settings={"help_option_names": HELP_OPTIONS},
)
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
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    logging.getLogger("hpo_astro").addHandler(_library_notes)  # the same handler each time: added once per process
    apply_verbosity(verbose, quiet, reset=True)  # a command's own -v / -q may change it again


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
