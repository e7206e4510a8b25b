"""The command line's conventions, on every command: fixed choices are closed (a bad one: one line, exit 2), the
strategy's help names every registry strategy, -h is --help, a default is shown one way, `(default: VALUE)`, every
value has a placeholder (URL, NAME, SECONDS...) instead of Typer's `<str>` or `<list[str]>`, and shell completion
is on."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
import typer
from helpers import assert_refused, cli_commands, invoke

from hpo_astro.cli import app, main

WIDE = "400"  # columns: no help line wraps, so a page reads as one line per option


def _commands() -> Iterator[tuple[list[str], typer.core.TyperCommand]]:
    """Every command and group, with its words on the command line (`data synth`...); the top level as []."""
    yield [], typer.main.get_command(app)
    yield from cli_commands()


@pytest.fixture
def pages(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], typer.core.TyperCommand, str]]:
    """Every command's --help page, on a terminal wide enough for each option's help to stay on one line."""
    monkeypatch.setenv("COLUMNS", WIDE)
    out = []
    for words, command in _commands():
        result = invoke(*words, "--help")
        assert result.exit_code == 0, (words, result.output)
        out.append((words, command, result.stdout))
    return out


def _option_lines(page: str) -> list[str]:
    return [line for line in page.splitlines() if re.match(r"│\s*\*?\s+-", line)]


@pytest.mark.parametrize(
    ("args", "choices"),
    [
        (["run", "--pruner", "sometimes"], "'none', 'median', 'hyperband', 'successive-halving'"),
        (["benchmark", "--pruner", "sometimes"], "'none', 'median', 'hyperband', 'successive-halving'"),
        (["run", "--stack-runs", "maybe"], "'auto', 'on', 'off'"),
        (["status", "--format", "xml"], "'table', 'json'"),
        (["compare", "--format", "xml"], "'table', 'markdown', 'csv', 'json'"),
        (["predict", "--model", "m", "--data", "d", "--split", "dev"], "'all', 'train', 'val', 'test'"),
    ],
)
def test_a_fixed_choice_outside_its_values_is_one_line(args: list[str], choices: str) -> None:
    assert_refused(invoke(*args), f"is not one of {choices}")


def test_the_strategy_help_and_completion_name_every_registry_strategy(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """--strategy also takes a sampler class by import path, so it is not a closed choice: its help lists the
    registry (cmaes was missing from it) and the shell completes its names."""
    from hpo_astro.study.defaults import STRATEGY_NAMES
    from hpo_astro.study.strategies import STRATEGIES

    assert tuple(STRATEGIES) == STRATEGY_NAMES
    monkeypatch.setenv("COLUMNS", WIDE)
    (line,) = [line for line in invoke("run", "--help").stdout.splitlines() if "--strategy" in line]
    assert all(re.search(rf"\b{name}\b", line) for name in STRATEGY_NAMES), line
    assert "package.module:ClassName" in line
    monkeypatch.setenv("_HPO_ASTRO_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", "hpo-astro run --strategy b")
    monkeypatch.setenv("COMP_CWORD", "3")
    with pytest.raises(SystemExit):
        main([], prog_name="hpo-astro")
    assert capsys.readouterr().out.split() == ["bayesian", "bohb"]


def test_dash_h_is_help_on_every_command() -> None:
    for words, _ in _commands():
        short, long = invoke(*words, "-h"), invoke(*words, "--help")
        assert short.exit_code == long.exit_code == 0, (words, short.output)
        assert short.stdout == long.stdout and "Usage: hpo-astro" in short.stdout, words
        assert re.search(r"--help\s+-h\s", short.stdout), words


def test_defaults_are_shown_one_way(pages: list[tuple[list[str], typer.core.TyperCommand, str]]) -> None:
    """`(default: VALUE)` in the option's help, whether Typer knows the default or the help explains it; never
    Typer's `[default: VALUE]` beside others' `(default: ...)`, `default 10` or `(default)`."""
    checked = 0
    for words, command, page in pages:
        assert "[default" not in page, words
        for line in _option_lines(page):  # "the default store" is prose; "default: 1", "(default 10)" are not
            assert not re.search(r"(?<!\()\bdefault\s*[:0-9]|\(default\)|\(default [^:]", line), (words, line)
        for param in command.params:
            if not isinstance(param, typer.core.TyperOption) or param.is_flag or param.count:
                continue
            if param.default in (None, "", []) or param.hidden:
                continue
            shown = getattr(param.default, "value", param.default)
            (line,) = [line for line in _option_lines(page) if re.match(rf"│\s*\*?\s+{param.opts[0]}\b", line)]
            assert f"(default: {shown})" in line, (words, line)
            checked += 1
    assert checked > 20  # the storage, seed, port... of many commands


def test_every_value_has_a_placeholder(pages: list[tuple[list[str], typer.core.TyperCommand, str]]) -> None:
    """A value is shown by what it is (`--storage URL`, `--study NAME`, `--timeout SECONDS`), a fixed choice by its
    values (`<table|json>`); never by a Python type (`<str>`, `<list[str]>`, `<int range>`, `<path>`)."""
    named = {"--storage": "URL", "--study": "NAME", "--timeout": "SECONDS", "--data": "FILE", "--out": ""}
    for words, _, page in pages:
        assert not re.search(r"<(str|int|float|path|bool|list\[|int range|float range)", page), (words, page)
        for line in _option_lines(page):
            option = re.search(r"--[a-z-]+", line)
            assert option is not None
            placeholder = named.get(option.group())
            if placeholder:
                assert re.search(rf"{option.group()}\s+{placeholder}\b", line), (words, line)
    assert any("--top" in page and re.search(r"--top\s+N\b", page) for words, _, page in pages if words == ["status"])


def test_shell_completion_is_enabled(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """--install-completion and --show-completion (Typer's), and the completion they install answers: option names
    and a fixed choice's values."""
    monkeypatch.setenv("COLUMNS", WIDE)
    top = invoke("--help").stdout
    assert "--install-completion" in top and "--show-completion" in top
    monkeypatch.setenv("SHELL", "/bin/bash")
    with pytest.raises(SystemExit) as shown:  # Typer's callback prints the script and exits
        main(["--show-completion"], prog_name="hpo-astro")
    assert shown.value.code == 0
    assert "_HPO_ASTRO_COMPLETE=complete_bash" in capsys.readouterr().out
    monkeypatch.setenv("_HPO_ASTRO_COMPLETE", "complete_bash")
    for words, expected in (("hpo-astro status --for", ["--format"]), ("hpo-astro status --format j", ["json"])):
        monkeypatch.setenv("COMP_WORDS", words)
        monkeypatch.setenv("COMP_CWORD", str(len(words.split()) - 1))
        with pytest.raises(SystemExit):
            main([], prog_name="hpo-astro")
        assert capsys.readouterr().out.split() == expected
