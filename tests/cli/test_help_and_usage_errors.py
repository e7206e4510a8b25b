"""The command line guides: --version, one `error:` line for every usage error (the top level's included), flags shown
as flags, help that is not broken mid-sentence, a word before the long first simulation, what to do after a run, and
files for the user that follow the umask."""

from __future__ import annotations

import inspect
import os
import re
import shlex
import stat
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
from helpers import assert_refused, cli_commands, invoke

from hpo_astro import __version__
from hpo_astro.data import prepare, simulate

SIMULATING = "simulating the default data set, once"


def test_version() -> None:
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"hpo-astro {__version__}"


@pytest.mark.parametrize("module", ["hpo_astro", "hpo_astro.cli"])
def test_python_dash_m_runs_the_command_line(module: str) -> None:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"hpo-astro {__version__}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--xyzzy"], "No such option: --xyzzy (see 'hpo-astro --help')"),
        (["bogus"], "No such command 'bogus'. (see 'hpo-astro --help')"),
        (["data", "--bogus"], "No such option: --bogus (see 'hpo-astro data --help')"),
        (["compare", "--format"], "Option '--format' requires an argument. (see 'hpo-astro compare --help')"),
        (["run", "--n-trials", "x"], "(see 'hpo-astro run --help')"),
    ],
)
def test_every_usage_error_is_one_line(args: list[str], message: str) -> None:
    result = invoke(*args)
    assert_refused(result, message)
    assert "╭" not in result.output  # no Rich box


def _commands() -> Iterator[tuple[list[str], typer.core.TyperCommand]]:
    """Every command, with its words on the command line (`data synth`...)."""
    yield from cli_commands()


def test_boolean_flags_are_shown_as_flags() -> None:
    seen = []
    for words in [[], *(w for w, _ in _commands())]:
        result = invoke(*words, "--help")
        assert result.exit_code == 0, result.output
        assert "<bool>" not in result.stdout, words
        seen.append(result.stdout)
    assert any(re.search(r"--png\s+Also write every figure", page) for page in seen)


def test_no_command_summary_stops_mid_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    """Rich help keeps a docstring's line breaks: `compare` was listed as "... precision, recall," with "F1, ..." on
    the next line, however wide the terminal. On a wide terminal each summary is now one line."""
    monkeypatch.setenv("COLUMNS", "300")
    for group in ([], ["data"]):
        listing = invoke(*group, "--help").stdout
        for words, command in _commands():
            if words[:-1] != group:
                continue
            summary = " ".join(inspect.cleandoc(command.help or "").split("\n\n")[0].split())
            assert any(summary in line for line in listing.splitlines()), (words, summary)


def _small_default_data(monkeypatch: pytest.MonkeyPatch, records: dict) -> None:
    """The default data set, simulated in no time: the small session set stands for the 4,676 records."""
    monkeypatch.setattr(simulate, "simulate_records", lambda n, seed: records)


def test_the_first_run_says_it_simulates_the_data(
    tmp_path: Path,
    small_records: dict,
    fake_training: None,
    isolated_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _small_default_data(monkeypatch, small_records)
    args = ["run", "-n", 1, "--max-epochs", 1, "--storage", f"sqlite:///{tmp_path / 'optuna.db'}"]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    assert first.stderr.count(SIMULATING) == 1
    assert str(prepare.default_data_file()) in first.stderr  # where it is cached
    again = invoke(*args[:2], 2, *args[3:])
    assert again.exit_code == 0 and SIMULATING not in again.stderr


def test_a_run_ends_with_the_next_commands_as_the_user_types_them(
    tmp_path: Path, small_file: Path, fake_training: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [".venv/bin/hpo-astro"])  # run without activating the venv
    result = invoke("run", "-n", 1, "--max-epochs", 1, "--data", small_file, "--study", "my study")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    steps = [line.split("#")[0].strip() for line in lines[lines.index("next:") + 1 :]]
    assert steps == [
        ".venv/bin/hpo-astro dashboard",
        ".venv/bin/hpo-astro report --study 'my study' --out reports/my-study",
        ".venv/bin/hpo-astro compare",
    ]
    other = f"sqlite:///{tmp_path / 'other.db'}"
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "bin" / "hpo-astro")])
    result = invoke("run", "-n", 1, "--max-epochs", 1, "--data", small_file, "--storage", other)
    steps = [line.split("#")[0].strip() for line in result.stdout.splitlines() if "--storage" in line]
    assert len(steps) == 3 and all(s.startswith(f"{tmp_path / 'bin' / 'hpo-astro'} ") for s in steps)
    # the printed commands work: the dashboard one, run here
    from hpo_astro.results import dashboard as dashboard_module

    served: list[str] = []
    monkeypatch.setattr(dashboard_module, "run_server", lambda *a, **k: served.append("served"))
    assert invoke(*shlex.split(steps[0])[1:]).exit_code == 0 and served


@pytest.fixture(params=[0o022, 0o027], ids=["umask-022", "umask-027"])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    previous = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_written_for_the_user_follow_the_umask(
    umask: int,
    tmp_path: Path,
    small_file: Path,
    small_records: dict,
    isolated_cache: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """They were written under a temporary name made 0600 by mkstemp and renamed into place with that mode."""
    expected = 0o666 & ~umask
    synth = invoke("data", "synth", "--out", tmp_path / "sim.npz", "--n", 60, "--seed", 1)
    assert synth.exit_code == 0, synth.output
    info = invoke("data", "info", small_file, "--gallery", tmp_path / "gallery.png")
    assert info.exit_code == 0, info.output
    _small_default_data(monkeypatch, small_records)
    prepare.load_splits()  # the default data set and its preprocessed tensors, cached
    cached = [prepare.default_data_file(), *(isolated_cache / "prepared").glob("*.npz")]
    assert len(cached) == 2
    for path in [tmp_path / "sim.npz", tmp_path / "gallery.png", *cached]:
        assert _mode(path) == expected, path


def test_the_command_line_choices_are_the_library_names() -> None:
    """The fixed choices (`Literal` types in light modules, for the parser) name exactly what the library knows."""
    from typing import get_args

    from hpo_astro.report import FormatName
    from hpo_astro.report.compare import FORMATS
    from hpo_astro.results import SplitName
    from hpo_astro.results.export import SPLIT_NAMES
    from hpo_astro.study.defaults import OBJECTIVE_NAMES, PrunerName
    from hpo_astro.study.objectives import OBJECTIVES
    from hpo_astro.study.strategies import PRUNERS

    assert get_args(PrunerName) == tuple(PRUNERS)
    assert tuple(OBJECTIVES) == OBJECTIVE_NAMES  # --objective's help and completion
    assert get_args(FormatName) == FORMATS == ("table", "markdown", "csv", "json")
    assert get_args(SplitName) == SPLIT_NAMES == ("all", "train", "val", "test")
    for args, choices in (
        (["compare", "--format", "xml"], "'table', 'markdown', 'csv', 'json'"),
        (["predict", "--model", "m", "--data", "d", "--split", "dev"], "'all', 'train', 'val', 'test'"),
    ):
        assert_refused(invoke(*args), f"is not one of {choices}")


def test_the_command_line_starts_without_torch_or_optuna() -> None:
    """`hpo-astro --help` and a typo answer at once: importing the command line imports neither torch, Optuna,
    SQLAlchemy nor NumPy (each command imports what it needs when it runs)."""
    import subprocess
    import sys

    code = "import sys, hpo_astro.cli; print(sorted({'torch', 'optuna', 'sqlalchemy', 'numpy'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
