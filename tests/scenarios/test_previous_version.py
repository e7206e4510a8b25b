"""A study store written by the previous version of hpo-astro still opens, resumes and compares.

`tests/fixtures/previous-version/` holds what commit 8e9bda2 (the release before the package was reshaped into
layers) wrote: `old.db` and its artifact folder, made in an empty folder with
`hpo-astro run --config cheap.toml -n 2 --max-epochs 2 --data small.npy --storage sqlite:///old.db --study old
--seed 4`, where cheap.toml is `CHEAP_SPACE` below and small.npy is `simulate_records(n=240, seed=7)` saved by
`exromana.save` (the tests' `small_file`: the same data, so the same fingerprint)."""

from __future__ import annotations

import shutil
from pathlib import Path

import optuna
from helpers import invoke
from optuna.trial import TrialState

FIXTURE = Path(__file__).parent / "fixtures" / "previous-version"
CHEAP_SPACE = (
    "[space]\nconv_layers = [1]\nfc_layers = [1]\nfc_width = [32]\nbatch_size = [256]\nlr = [1e-2, 1e-3, 1e-4]\n"
)


def test_a_store_of_the_previous_version_opens_resumes_and_compares(tmp_path: Path, small_file: Path) -> None:
    for item in FIXTURE.iterdir():
        copy = shutil.copytree if item.is_dir() else shutil.copy2
        copy(item, tmp_path / item.name)
    store = f"sqlite:///{tmp_path / 'old.db'}"
    status = invoke("status", "--storage", store)
    assert status.exit_code == 0, status.output
    assert "old" in status.stdout and "random" in status.stdout
    compare = invoke("compare", "--storage", store, "--data", small_file)
    assert compare.exit_code == 0, compare.output
    assert "old" in compare.stdout
    study_file = tmp_path / "cheap.toml"
    study_file.write_text(CHEAP_SPACE)
    args = ["--config", study_file, "--max-epochs", 2, "--data", small_file, "--storage", store, "--seed", 4]
    resumed = invoke("run", *args, "--study", "old", "-n", 3)
    assert resumed.exit_code == 0, resumed.output
    assert "resuming study" in resumed.stdout and "3/3 finished trials (1 run by this process)" in resumed.stdout
    study = optuna.load_study(study_name="old", storage=store)
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 3
    exported = invoke("export", "--storage", store, "--study", "old", "--out", tmp_path / "model", "--data", small_file)
    assert exported.exit_code == 0, exported.output
