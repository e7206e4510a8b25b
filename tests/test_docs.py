"""The docs check: README.md and docs/*.md say what the code does, and their examples run as written.

What is checked, and how a page marks its blocks:

* **Links.** Every relative link resolves to a file of the repository, and every `#anchor` to a heading of the page
  it points to (GitHub's heading slugs).
* **Commands parse.** Every `hpo-astro ...` command in a fenced ```bash, ```sh, ```shell or ```console block (also
  written `.venv/bin/hpo-astro ...` or `python -m hpo_astro ...`) parses against the real command line: the Typer
  app's Click command, `make_context` on the subcommand with the arguments. An unknown command or option, a bad
  value or a missing argument fails the test, which names the page, the line and the command. Lines ending in `\\`
  continue; `$ ` prompts, `# comments`, `VAR=value` prefixes, `&&`, `;` and `|` are understood; in a ```console
  block only the `$ ` lines are commands (the others are output).
* **Files exist.** Every file a command reads (`--config`, `--space`, `--data`, `--model`, a data file argument) is
  in the repository, or written earlier on the same page: by a command (`--out`, `--json`, `--gallery`, `> FILE`,
  `hpo-astro init NAME` writes NAME.toml) or by a file block. `--config NAME` without a suffix names a study file
  shipped with the package (`studies/NAME.toml`, installed as `hpo_astro.studies`). Scripts and test files that
  other commands name exist.
* **File blocks.** A block after `<!-- docs-check: file NAME -->` is the content of the file NAME: the commands
  after it on the page may read it, and a page's run blocks find it written in their folder. A study file
  (NAME.toml) must load as `run --config` loads it, and build its strategy's sampler.
* **Run blocks.** A block after `<!-- docs-check: run -->` runs as written, command by command, through
  `hpo_astro.cli.main` in this process, in a fresh folder per page (with `studies/` and `package/` linked in); each
  command must exit 0 (`<!-- docs-check: run exit=2 -->`: each must exit 2, for the bad-input examples). Only cheap
  commands are marked: the version and help, small simulated sets, one-epoch trainings, benchmarks replayed from
  the shipped table. Commands that train for minutes (the README's demo study, the paper's studies, benchmarks that
  train) or serve until Ctrl-C (the dashboard, the storage proxy) are only parse-checked.
* **Python.** Every ```python block of the README and docs/*.md runs as written: a page's blocks in order, in one
  namespace and a fresh folder (linked in as for run blocks), as a notebook would run them.
* **The reference is complete.** docs/commands.md has a section `hpo-astro COMMAND` for every command, naming each of
  its options; docs/studies.md names every study-file key; docs/python-api.md lists every name `hpo_astro` exports,
  and each resolves. The README stays under 200 lines, and its test command is the one `.ci/run` runs.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import pytest
import typer
import typer.main

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell", "console"}
MARKER = re.compile(r"^\s*<!--\s*docs-check:\s*(.*?)\s*-->\s*$")
FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w+-]*)\s*$")
README_LIMIT = 200
# Options whose value a command writes, not reads; every other path-valued option is read and must exist.
OUTPUTS = {"out", "json", "gallery", "artifacts"}
OUTPUT_FLAGS = {"--out", "--json", "--gallery"}
LINKED = ("studies", "package")  # linked into the folder of run blocks and python blocks (study files, the hub)

# Click's usage error: Typer vendors Click privately and exports only a subclass, `BadParameter`.
UsageError: type[Exception] = next(c for c in typer.BadParameter.__mro__ if c.__name__ == "UsageError")


def rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix() if path.is_relative_to(ROOT) else path.name


# --- reading the pages ------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Block:
    page: Path
    line: int  # of the opening fence
    lang: str
    lines: tuple[tuple[int, str], ...]  # (line number, text), indentation of the fence removed
    marker: str  # the docs-check marker before it, "" if none

    @property
    def text(self) -> str:
        return "".join(text + "\n" for _, text in self.lines)

    @property
    def where(self) -> str:
        return f"{rel(self.page)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """The fenced code blocks of a page, each with the `docs-check` marker on the last non-blank line before it."""
    found: list[Block] = []
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if not fence:
            i += 1
            continue
        indent, ticks, lang = fence.groups()
        before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.match(before)
        body: list[tuple[int, str]] = []
        j = i + 1
        while j < len(lines) and not (lines[j].strip().startswith(ticks) and not lines[j].strip().strip(ticks[0])):
            text = lines[j]
            body.append((j + 1, text[len(indent) :] if text.startswith(indent) else text.lstrip()))
            j += 1
        found.append(Block(page, i + 1, lang.lower(), tuple(body), marker.group(1) if marker else ""))
        i = j + 1
    return found


def outside_code(page: Path) -> Iterator[tuple[int, str]]:
    """The lines of a page outside its code blocks, numbered from 1."""
    inside: str | None = None
    for number, line in enumerate(page.read_text().splitlines(), 1):
        fence = FENCE.match(line)
        if inside is None and fence:
            inside = fence.group(2)
            continue
        if inside is not None:
            if line.strip().startswith(inside) and not line.strip().strip(inside[0]):
                inside = None
            continue
        yield number, line


def prose(page: Path) -> Iterator[tuple[int, str]]:
    """The lines of a page outside its code blocks, with inline code removed."""
    for number, line in outside_code(page):
        yield number, re.sub(r"`[^`]*`", "", line)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower().replace("`", ""))
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, line in outside_code(page):
        heading = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if heading:
            base = slug(heading.group(1))
            count = seen.get(base, 0)
            seen[base] = count + 1
            out.add(base if count == 0 else f"{base}-{count}")
    return out


def link_problems(page: Path) -> list[str]:
    problems = []
    for number, line in prose(page):
        for target in re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", line):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                problems.append(f"{rel(page)}:{number}: {target}: no such file")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                problems.append(f"{rel(page)}:{number}: {target}: no heading #{anchor} in {rel(file)}")
    return problems


# --- commands ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Command:
    block: Block
    line: int
    words: tuple[str, ...]  # the simple command: program and arguments, prefixes and redirections removed
    writes: tuple[str, ...]  # files it writes (`--out`, `> FILE`, ...)
    reads: tuple[str, ...]  # files it reads by redirection (`< FILE`)

    @property
    def where(self) -> str:
        return f"{rel(self.block.page)}:{self.line}"

    @property
    def cli_args(self) -> list[str] | None:
        """The arguments after `hpo-astro` when this is an hpo-astro command, else None."""
        words = list(self.words)
        if words and words[0] in ("hpo-astro", ".venv/bin/hpo-astro"):
            return words[1:]
        if len(words) > 2 and re.fullmatch(r"(\S*/)?python3?", words[0]) and words[1:3] == ["-m", "hpo_astro"]:
            return words[3:]
        return None

    def __str__(self) -> str:
        return shlex.join(self.words)


def logical_lines(block: Block) -> Iterator[tuple[int, str]]:
    """A shell block's command lines, continuations joined; in a console block only the `$ ` lines."""
    pending: tuple[int, str] | None = None
    for number, text in block.lines:
        if pending is None:
            if block.lang == "console":
                if not text.startswith("$ "):
                    continue
                text = text[2:]
            pending = (number, "")
        joined = pending[1] + text
        if joined.rstrip().endswith("\\"):
            pending = (pending[0], joined.rstrip()[:-1] + " ")
            continue
        yield pending[0], joined
        pending = None
    if pending is not None:
        yield pending


def commands(block: Block) -> list[Command]:
    """The simple commands of a shell block (split at `&&`, `||`, `;`, `|`, `&`)."""
    out = []
    for number, line in logical_lines(block):
        lexer = shlex.shlex(line, posix=True, punctuation_chars=";&|<>")
        lexer.whitespace_split = True
        lexer.commenters = "#"
        tokens = list(lexer)
        current: list[str] = []
        for token in [*tokens, ";"]:
            if token in (";", "&&", "||", "|", "&", ";;"):
                if current:
                    out.append(_simple(block, number, current))
                current = []
            else:
                current.append(token)
    return out


def _simple(block: Block, number: int, tokens: list[str]) -> Command:
    words: list[str] = []
    writes: list[str] = []
    reads: list[str] = []
    it = iter(tokens)
    for token in it:
        if token in (">", ">>", ">|"):
            writes.append(next(it, ""))
        elif token == "<":
            reads.append(next(it, ""))
        elif not words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", token):
            continue  # VAR=value before the program
        else:
            words.append(token)
    for k, word in enumerate(words):
        if word in OUTPUT_FLAGS and k + 1 < len(words):
            writes.append(words[k + 1])
        elif word.split("=", 1)[0] in OUTPUT_FLAGS and "=" in word:
            writes.append(word.split("=", 1)[1])
    if words[:1] in (["hpo-astro"], [".venv/bin/hpo-astro"]) and words[1:2] == ["init"]:
        writes += [f"{name}.toml" for name in words[2:] if not name.startswith("-")]
    return Command(block, number, tuple(words), tuple(writes), tuple(reads))


@functools.cache
def root_command() -> object:
    """The `hpo-astro` command line as Click sees it (the Typer app's command group)."""
    from hpo_astro.cli import app

    return typer.main.get_command(app)


def parse(args: list[str]) -> tuple[object, dict[str, object]]:
    """Parse `hpo-astro ARGS` as the real command line would, down to the subcommand, without running it: the
    subcommand and its parsed parameters. A usage error raises Click's UsageError; `--help` and `--version` (which
    print and exit while parsing) return the command they were given to."""
    command: object = root_command()
    exit_types = (typer.Exit, *[c for c in UsageError.__mro__ if c.__name__ == "Exit"])
    try:
        ctx = command.make_context("hpo-astro", list(args))  # type: ignore[attr-defined]
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        while hasattr(command, "commands") and rest:
            name, command, rest = command.resolve_command(ctx, rest)  # type: ignore[attr-defined]
            ctx = command.make_context(name, rest, parent=ctx)  # type: ignore[attr-defined]
            rest = [*getattr(ctx, "_protected_args", []), *ctx.args] if hasattr(command, "commands") else []
    except exit_types:  # --help, --version
        return command, {}
    except Exception as exc:
        if type(exc).__name__ == "Exit":  # Click's own Exit (vendored by Typer)
            return command, {}
        raise
    return command, dict(ctx.params)


def packaged_study(name: str) -> bool:
    """`--config NAME`: a study file shipped with the package by name (the repository's `studies/`, installed as
    `hpo_astro.studies`)."""
    return "/" not in name and not Path(name).suffix and (ROOT / "studies" / f"{name}.toml").is_file()


def exists(value: str, written: set[str]) -> bool:
    if os.path.isabs(value):
        return Path(value).exists()
    normal = os.path.normpath(value)
    if (ROOT / normal).exists() or normal in written:
        return True
    return any(normal.startswith(w.rstrip("/") + "/") for w in written)


def read_paths(params: dict[str, object]) -> list[tuple[str, str]]:
    """(parameter, value) for every path the parsed command reads: its path-valued parameters but the outputs."""
    out = []
    for name, value in params.items():
        for item in value if isinstance(value, list | tuple) else [value]:
            if isinstance(item, Path) and name not in OUTPUTS:
                out.append((name, str(item)))
    return out


def repo_paths(words: tuple[str, ...]) -> list[str]:
    """The words of a non-hpo-astro command that name files of the repository (scripts, tests, study files)."""
    top = {p.name for p in ROOT.iterdir() if p.name not in (".venv", ".git")}
    return [
        w
        for w in words
        if "/" in w and not w.startswith("-") and "://" not in w and "=" not in w and w.split("/")[0] in top
    ]


def page_commands(page: Path) -> list[tuple[Command, frozenset[str]]]:
    """The page's commands in order, each with the files written before it on the page (commands, file blocks)."""
    written: set[str] = set()
    out = []
    for block in blocks(page):
        if block.marker.startswith("file "):
            written.add(os.path.normpath(block.marker.split(None, 1)[1]))
            continue
        if block.lang not in SHELL:
            continue
        for command in commands(block):
            out.append((command, frozenset(written)))
            written |= {os.path.normpath(w) for w in command.writes if w}
    return out


def command_problems(command: Command, written: frozenset[str]) -> list[str]:
    problems = []
    args = command.cli_args
    if args is not None:
        try:
            _, params = parse(args)
        except UsageError as exc:
            return [f"{command.where}: `{command}` does not parse: {exc.format_message()}"]  # type: ignore[attr-defined]
        for name, value in read_paths(params):
            if name in ("space", "config") and packaged_study(value):
                continue
            if not exists(value, set(written)):
                problems.append(f"{command.where}: `{command}` reads {value} (--{name}), which nothing provides")
    else:
        for value in [*repo_paths(command.words), *command.reads]:
            if not exists(value, set(written)):
                problems.append(f"{command.where}: `{command}` names {value}, which does not exist")
    return problems


ALL_COMMANDS = [(command, written) for page in PAGES for command, written in page_commands(page)]


@pytest.mark.parametrize(("command", "written"), ALL_COMMANDS, ids=[c.where for c, _ in ALL_COMMANDS])
def test_every_command_in_the_docs_parses_and_finds_its_files(command: Command, written: frozenset[str]) -> None:
    assert command_problems(command, written) == []


def test_every_link_resolves() -> None:
    assert [problem for page in PAGES for problem in link_problems(page)] == []


# --- examples that run -----------------------------------------------------------------------------------------


def _workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in LINKED:
        if (ROOT / name).is_dir():
            (tmp_path / name).symlink_to(ROOT / name, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    return tmp_path


RUN_PAGES = [p for p in PAGES if any(b.marker.startswith("run") for b in blocks(p))]


@pytest.mark.parametrize("page", RUN_PAGES, ids=[rel(p) for p in RUN_PAGES])
def test_the_blocks_marked_run_run_as_written(
    page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from hpo_astro.cli import main

    folder = _workdir(tmp_path, monkeypatch)
    for block in blocks(page):
        if block.marker.startswith("file "):
            (folder / block.marker.split(None, 1)[1]).write_text(block.text)
        if not block.marker.startswith("run"):
            continue
        expected = int(m.group(1)) if (m := re.search(r"exit=(\d+)", block.marker)) else 0
        for command in commands(block):
            args = command.cli_args
            assert args is not None, f"{command.where}: a run block holds hpo-astro commands only: `{command}`"
            code = main(args, prog_name="hpo-astro")
            out = capsys.readouterr()
            assert code == expected, f"{command.where}: `{command}` exited {code}, not {expected}:\n{out.err[-2000:]}"


PYTHON_PAGES = [p for p in PAGES if any(b.lang == "python" for b in blocks(p))]


@pytest.mark.parametrize("page", PYTHON_PAGES, ids=[rel(p) for p in PYTHON_PAGES])
def test_the_python_examples_run_as_written(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _workdir(tmp_path, monkeypatch)
    namespace: dict[str, object] = {"__name__": "__main__"}
    for block in blocks(page):
        if block.lang != "python":
            continue
        code = compile("\n" * (block.line) + block.text, str(page), "exec")  # tracebacks name the page's lines
        exec(code, namespace)


STUDY_FILES = [b for page in PAGES for b in blocks(page) if b.marker.startswith("file ") and b.marker.endswith(".toml")]


@pytest.mark.parametrize("block", STUDY_FILES, ids=[b.where for b in STUDY_FILES])
def test_the_study_files_in_the_docs_load(block: Block, tmp_path: Path) -> None:
    """A study file a page shows (a file block named *.toml) is one `run --config` takes: it loads, validates and
    builds its strategy's sampler."""
    from hpo_astro.study.config import load_config
    from hpo_astro.study.strategies import make_sampler

    path = tmp_path / block.marker.split(None, 1)[1]
    path.write_text(block.text)
    cfg = load_config(path)
    make_sampler(cfg.merged(n_trials=cfg.n_trials or 1, storage=f"sqlite:///{tmp_path / 'x.db'}").validate())


# --- the reference is complete ---------------------------------------------------------------------------------


def cli_commands(command: object | None = None, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], object]]:
    command = command or root_command()
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        yield (*path, name), sub
        yield from cli_commands(sub, (*path, name))


def sections(page: Path) -> dict[str, str]:
    """Heading text (backticks removed) -> the text under it, down to the next heading of its level or above."""
    lines = page.read_text().splitlines()
    heads = [(i, len(m.group(1)), m.group(2).replace("`", "").strip()) for i, line in enumerate(lines)
             if (m := re.match(r"^(#{1,6})\s+(.*)$", line))]  # fmt: skip
    out = {}
    for k, (i, level, title) in enumerate(heads):
        end = next((j for j, lvl, _ in heads[k + 1 :] if lvl <= level), len(lines))
        out[title] = "\n".join(lines[i:end])
    return out


def test_the_command_reference_names_every_command_and_option() -> None:
    page = ROOT / "docs" / "commands.md"
    text = sections(page)
    missing = []
    for path, command in cli_commands():
        title = "hpo-astro " + " ".join(path)
        if title not in text:
            missing.append(f"no section '## `{title}`'")
            continue
        for param in command.params:  # type: ignore[attr-defined]
            for option in [*param.opts, *param.secondary_opts]:
                named = re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", text[title])
                if option.startswith("--") and option != "--help" and not named:
                    missing.append(f"{title}: {option}")
    assert missing == [], f"{rel(page)} lacks: " + "; ".join(missing)


def test_the_study_file_keys_are_documented() -> None:
    from hpo_astro.study.config import StudyConfig

    text = (ROOT / "docs" / "studies.md").read_text()
    keys = [f.name for f in dataclasses.fields(StudyConfig)]
    assert [k for k in keys if f"`{k}`" not in text] == []


def test_the_python_api_page_lists_every_exported_name_and_each_resolves() -> None:
    import importlib

    import hpo_astro

    text = (ROOT / "docs" / "python-api.md").read_text()
    assert [name for name in hpo_astro.LAZY if not re.search(rf"`{name}[`(]", text)] == []
    for name, home in hpo_astro.LAZY.items():
        assert getattr(hpo_astro, name) is getattr(importlib.import_module(home), name)


def test_the_readme_is_short_and_runs_the_ci_test_command() -> None:
    readme = ROOT / "README.md"
    assert len(readme.read_text().splitlines()) < README_LIMIT
    first = blocks(readme)[0]
    install, tests = [text for _, text in first.lines]
    assert install.startswith("python3 -m venv .venv && .venv/bin/pip install")
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in [line.strip() for line in ci if not line.lstrip().startswith("#")]


# --- the checks can fail ----------------------------------------------------------------------------------------


def test_the_checks_see_a_bad_command_a_missing_file_and_a_broken_link(tmp_path: Path) -> None:
    with pytest.raises(UsageError):
        parse(["run", "--no-such-option"])
    with pytest.raises(UsageError):
        parse(["no-such-command"])
    assert parse(["--version"])[1] == {}
    page = tmp_path / "page.md"
    page.write_text(
        "# Title\n\n[a](page.md#title) [b](missing.md) [c](page.md#nowhere) `[d](inline.md)`\n\n"
        "<!-- docs-check: run -->\n```console\n$ FOO=1 hpo-astro run \\\n    --config x.toml  # a comment\nout\n"
        "$ hpo-astro data synth --out a.npz && hpo-astro data info a.npz | head > b.txt\n```\n"
    )
    assert [p.split(": ", 1)[1] for p in link_problems(page)] == [
        "missing.md: no such file",
        "page.md#nowhere: no heading #nowhere in page.md",
    ]
    (block,) = blocks(page)
    assert block.marker == "run"
    found = commands(block)
    assert [c.words for c in found] == [
        ("hpo-astro", "run", "--config", "x.toml"),
        ("hpo-astro", "data", "synth", "--out", "a.npz"),
        ("hpo-astro", "data", "info", "a.npz"),
        ("head",),
    ]
    assert [c.line for c in found] == [7, 10, 10, 10] and found[3].writes == ("b.txt",)
    problems = command_problems(found[0], frozenset())
    assert len(problems) == 1 and "reads x.toml (--config)" in problems[0]
    assert command_problems(found[2], frozenset({"a.npz"})) == []
    assert (
        slug("One evaluation or three seeds, and racing (measured)")
        == "one-evaluation-or-three-seeds-and-racing-measured"
    )
