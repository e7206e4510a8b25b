"""The AblationSampler as an OptunaHub sampler package (`package/samplers/ablation/` at the repository's root): loaded
the ways OptunaHub loads a registry package (from a registry on disk, and from a git repository laid out as a
registry), run on a toy objective and on a table as an OptunaHub benchmark problem, and its README's front matter
and API list checked against what the registry and the class require."""

from __future__ import annotations

import inspect
import os
import re
import runpy
import shutil
import subprocess
from pathlib import Path
from typing import Any

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from hpo_astro.samplers import AblationSampler
from hpo_astro.samplers.ablation import EXHAUSTED_KEY

optunahub = pytest.importorskip("optunahub")  # the `hub` extra (in `dev`)

optuna.logging.set_verbosity(optuna.logging.WARNING)
REGISTRY_ROOT = Path(__file__).resolve().parents[2] / "package"  # optunahub.load_module reads package/<package>
PACKAGE = "samplers/ablation"
FOLDER = REGISTRY_ROOT / PACKAGE


def objective(trial: optuna.Trial) -> float:
    x = trial.suggest_int("x", -2, 2)
    y = trial.suggest_categorical("y", ["flat", "steep"])
    return x**2 * (3 if y == "steep" else 1)


def run_plan(module: Any) -> optuna.Study:
    """The README's example: 5 + 2 slots from the baseline x=1, y=steep; the study stops by itself."""
    sampler = module.AblationSampler({"x": [-2, -1, 0, 1, 2], "y": ["flat", "steep"]}, baseline={"x": 1, "y": "steep"})
    study = optuna.create_study(sampler=sampler)
    study.optimize(objective)
    return study


def test_load_local_module_loads_the_package_and_it_runs_a_study() -> None:
    module = optunahub.load_local_module(package=PACKAGE, registry_root=str(REGISTRY_ROOT))
    assert module.__name__ == "optunahub_registry.package.samplers.ablation"
    assert module.AblationSampler is AblationSampler and module.EXHAUSTED_KEY == EXHAUSTED_KEY  # re-exported
    assert sorted(module.__all__) == ["AblationSampler", "EXHAUSTED_KEY"]
    study = run_plan(module)
    assert [t.params for t in study.trials] == [
        *({"x": x, "y": "steep"} for x in (-2, -1, 0, 1, 2)),
        {"x": 1, "y": "flat"},
        {"x": 1, "y": "steep"},
    ]
    assert all(t.state == TrialState.COMPLETE for t in study.trials) and study.best_params == {"x": 0, "y": "steep"}


def test_the_repository_is_a_registry_that_load_module_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`optunahub.load_module(package, repo_owner=, repo_name=, ref=)` fetches `package/<package>` from a git
    repository: a repository holding this folder where OptunaHub's registry holds its packages serves it. Here a
    local repository (file://) of the package stands in for the project's repository on GitHub."""
    git = shutil.which("git")
    if git is None:
        pytest.skip("git is not installed (load_module fetches with git)")
    repo = tmp_path / "hosts" / "owner" / "hpo-astro"
    shutil.copytree(FOLDER, repo / "package" / PACKAGE, ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    identity = ["-c", "user.name=t", "-c", "user.email=t@example.org"]
    for args in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-qm", "the package"]):
        subprocess.run([git, *identity, *args], cwd=repo, env=env, check=True)
    monkeypatch.setenv("OPTUNAHUB_CACHE_HOME", str(tmp_path / "cache"))
    module = optunahub.load_module(
        PACKAGE, repo_owner="owner", repo_name="hpo-astro", ref="main", base_url=f"file://localhost{tmp_path}/hosts"
    )
    assert module.AblationSampler is AblationSampler
    assert Path(module.__file__).is_relative_to(tmp_path / "cache")  # fetched, not this checkout's folder
    assert len(run_plan(module).trials) == 7


def test_the_sampler_runs_on_a_table_as_a_benchmark_problem() -> None:
    """Both halves of the issue together: the hub package's sampler on the shipped table's `BaseProblem`."""
    from hpo_astro.tabular.problem import TableProblem

    module = optunahub.load_local_module(package=PACKAGE, registry_root=str(REGISTRY_ROOT))
    problem = TableProblem("astro-small")
    space = {name: list(dist.choices) for name, dist in problem.search_space.items()}
    sampler = module.AblationSampler(space, baseline={"lr": 1e-3, "dropout_rate": 0.1}, greedy=True, seed=0)
    study = optuna.create_study(directions=problem.directions, sampler=sampler)
    study.optimize(problem)
    assert len(study.trials) == sampler.n_slots == sum(len(v) for v in space.values()) == 17
    for trial in study.trials:
        assert trial.value == problem.evaluate(trial.params)
    best_lr = max(study.trials[:4], key=lambda t: t.value).params["lr"]  # the first sweep's (ties: the earlier)
    assert all(t.params["lr"] == best_lr for t in study.trials[4:])  # greedy: adopted by every later sweep


def test_the_readme_front_matter_is_what_the_registry_requires() -> None:
    """OptunaHub's header check (author, title, description: strings; tags, optuna_versions: lists of strings; the
    MIT License), a sampler package's `sampler` tag, and the files a registry package holds."""
    text = (FOLDER / "README.md").read_text()
    match = re.match(r"---\n(.*?)\n---\n", text, re.DOTALL)
    assert match, "README.md starts with a front matter block"
    header = yaml.safe_load(match.group(1))
    for key in ("author", "title", "description", "license"):
        assert isinstance(header[key], str) and header[key], key
    for key in ("tags", "optuna_versions"):
        assert isinstance(header[key], list) and all(isinstance(v, str) for v in header[key]), key
    assert header["license"] == "MIT License" and "sampler" in header["tags"]
    assert (FOLDER / "LICENSE").read_text().startswith("MIT License")
    assert {"__init__.py", "README.md", "LICENSE", "example.py"} <= {p.name for p in FOLDER.iterdir()}


def test_the_readme_lists_the_constructors_arguments() -> None:
    """The README's signature line is the class's (names and defaults), and it explains every argument."""
    text = (FOLDER / "README.md").read_text()
    line = re.search(r"`AblationSampler\((.*)\)`", text)
    assert line is not None
    signature = inspect.signature(AblationSampler)
    documented = [part.strip() for part in line.group(1).split(", ")]
    expected = [
        name if p.default is inspect.Parameter.empty else f"{name}={p.default!r}"
        for name, p in signature.parameters.items()
    ]
    assert documented == expected
    for name in signature.parameters:
        assert f"- `{name}`:" in text, name


def test_the_example_runs(capsys: pytest.CaptureFixture[str]) -> None:
    runpy.run_path(str(FOLDER / "example.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "7 trials; best {'x': 0, 'y': 'steep'} = 0.0" in out and "17 trials on astro-small" in out
