"""The packaged study files (`hpo_astro.study.packaged`): `--config quick-demo` and `hpo-astro init` find the
repository's studies/ in the package, and the built wheel ships them: installed from the wheel alone, outside this
tree, `python -m hpo_astro --version`, `hpo-astro init` and `--config quick-demo` work."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest
from helpers import assert_refused, invoke, load_study, store_url

from hpo_astro.study.config import load_config
from hpo_astro.study.packaged import is_study_name, packaged_file, packaged_names, resolve_study_file

ROOT = Path(__file__).resolve().parents[2]
STUDIES = ROOT / "studies"


def test_the_packaged_studies_are_the_studies_folder() -> None:
    """One copy: the package's study files are the repository's studies/*.toml, byte for byte."""
    names = packaged_names()
    assert names == sorted(p.stem for p in STUDIES.glob("*.toml")) and "quick-demo" in names
    for name in names:
        assert packaged_file(name).read_bytes() == (STUDIES / f"{name}.toml").read_bytes()


def test_a_bare_name_is_the_packaged_file_and_a_path_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert resolve_study_file("quick-demo") == packaged_file("quick-demo")
    assert load_config("quick-demo") == load_config(STUDIES / "quick-demo.toml")
    for path in ("quick-demo.toml", "sub/quick-demo", "./x.toml"):  # a path stays a path, found or not
        assert not is_study_name(path) and resolve_study_file(path) == Path(path)
    (tmp_path / "quick-demo").write_text('strategy = "random"\nn_trials = 2\n')  # a file here wins over the name
    assert resolve_study_file("quick-demo") == Path("quick-demo")
    assert load_config("quick-demo").strategy == "random"


def test_run_config_by_name(tmp_path: Path, small_file: Path, fake_training: None) -> None:
    store = store_url(tmp_path)
    result = invoke(
        "run", "--config", "quick-demo", "-n", 2, "--max-epochs", 1, "--data", small_file, "--storage", store
    )
    assert result.exit_code == 0, result.output
    study = load_study(store, "demo")  # the demo's study name, from the packaged file
    assert len(study.trials) == 2


def test_an_unknown_name_is_one_line_listing_the_packaged_ones(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    listing = ", ".join(packaged_names())
    assert_refused(
        invoke("run", "--config", "quick-dmo"),
        f"'quick-dmo' is no file here and no packaged study; packaged: {listing}",
    )
    assert_refused(invoke("run", "--config", "missing.toml"), "study file not found: missing.toml")  # a path
    assert_refused(
        invoke("init", "quick-dmo"), f"no packaged study file named 'quick-dmo'; the packaged ones: {listing}"
    )
    assert list(tmp_path.iterdir()) == []


def test_init_lists_copies_and_keeps_an_existing_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    for args in ([], ["--list"]):
        listed = invoke("init", *args)
        assert listed.exit_code == 0 and listed.stdout.split() == packaged_names()
    first = invoke("init", "quick-demo")
    assert first.exit_code == 0, first.output
    assert "run --config quick-demo.toml" in first.stdout
    copy = tmp_path / "quick-demo.toml"
    assert copy.read_bytes() == (STUDIES / "quick-demo.toml").read_bytes()
    copy.write_text("# edited\n")
    assert_refused(invoke("init", "quick-demo"), "quick-demo.toml already exists; pass --force")
    assert copy.read_text() == "# edited\n"
    assert invoke("init", "quick-demo", "--force").exit_code == 0
    assert copy.read_bytes() == (STUDIES / "quick-demo.toml").read_bytes()
    (tmp_path / "mine").mkdir()
    assert invoke("init", "bohb.toml", "--out", "mine").exit_code == 0  # into a folder; `.toml` on the name is fine
    assert invoke("init", "qmc", "--out", "mine/sobol.toml").exit_code == 0
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["bohb.toml", "sobol.toml"]
    assert load_config(tmp_path / "mine" / "sobol.toml") == load_config(STUDIES / "qmc.toml")


# --- the built wheel, installed alone --------------------------------------------------------------------------


def _ok(*args: object, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a command; its standard output, or a failure that shows its standard error."""
    done = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def _build_wheel(tmp_path: Path) -> Path:
    """The wheel of a copy of this tree (the build writes build/ and *.egg-info beside its sources: not here)."""
    source = tmp_path / "src"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("hpo_astro", "studies"):
        shutil.copytree(ROOT / folder, source / folder, ignore=ignore)
    for file in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / file, source / file)
    flags = ["-q", "--no-deps", "--no-index", "--no-build-isolation"]  # this environment's setuptools, offline
    _ok(sys.executable, "-m", "pip", "wheel", *flags, "-w", tmp_path / "dist", source)
    (wheel,) = (tmp_path / "dist").glob("hpo_astro-*.whl")
    return wheel


def _venv_with(wheel: Path, tmp_path: Path) -> Path:
    """A new virtual environment with only the wheel installed (no dependencies); torch and the other dependencies
    are this environment's, seen through a path file. Its own site-packages come first; this environment's
    hpo-astro (an editable install) is not on its path: an editable install's finder is a .pth file's code, and the
    .pth files of a folder added by a path file are not run."""
    venv = tmp_path / "venv"
    _ok(sys.executable, "-m", "venv", "--without-pip", venv)
    python = venv / "bin" / "python"
    site = _ok(python, "-I", "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip()
    Path(site, "outer.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _ok(sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", "--no-index", wheel)
    return venv


def test_the_wheel_ships_the_study_files_and_runs_from_them(tmp_path: Path) -> None:
    wheel = _build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "hpo_astro").rglob("*.py")}
    assert modules - names == set(), "modules missing from the wheel: add their package to pyproject.toml's list"
    assert {f"hpo_astro/studies/{p.name}" for p in STUDIES.glob("*.toml")} <= names
    assert {f"hpo_astro/tables/{p.name}" for p in (ROOT / "hpo_astro" / "tables").glob("*.json.gz")} <= names
    assert not any(n.startswith(("studies/", "tests/")) for n in names)  # nothing at the top but the package

    venv = _venv_with(wheel, tmp_path)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}

    def run(*args: object) -> str:
        return _ok(*args, cwd=work, env=env)

    python = venv / "bin" / "python"
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert run(python, "-I", "-m", "hpo_astro", "--version").strip() == f"hpo-astro {version}"
    where = run(
        python, "-I", "-c", "import hpo_astro.study.config as c; print(c.__file__, c.resolve_study_file('quick-demo'))"
    )
    module, demo = where.split()
    site = str(venv / "lib")
    assert module.startswith(site) and demo.startswith(site) and demo.endswith("hpo_astro/studies/quick-demo.toml")
    assert "wrote quick-demo.toml" in run(venv / "bin" / "hpo-astro", "init", "quick-demo")
    assert (work / "quick-demo.toml").read_bytes() == (STUDIES / "quick-demo.toml").read_bytes()
