"""Attacks and faults a hostile user tries: files too small to split, output paths that cannot be written, weights
files that would run code, a full disk. Each ends with one `error:` line and nothing half-written."""

from __future__ import annotations

import errno
import os
import pickle
from pathlib import Path

import optuna
import pytest
from conftest import assert_refused, invoke
from optuna.trial import TrialState

from hpo_astro.data import exromana, simulate


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three records (2 TP, 1 FP): a valid file, too small for a 70/15/15 split with both classes in each part."""
    records = simulate.simulate_records(n=12, seed=1)
    return exromana.save({"TP": records["TP"][:2], "FP": records["FP"][:1]}, tmp_path_factory.mktemp("d") / "3.npy")


def test_a_file_too_small_to_split_is_refused_before_the_store_is_opened(tiny_file: Path, tmp_path: Path) -> None:
    db = tmp_path / "optuna.db"
    result = invoke("run", "-n", 2, "--data", tiny_file, "--max-epochs", 1, "--storage", f"sqlite:///{db}")
    assert_refused(result, "too few records to split")
    assert not db.exists()
    assert_refused(invoke("train", "--data", tiny_file, "--out", tmp_path / "run"), "at least 6 records of each class")


def test_train_out_that_cannot_be_a_directory(small_file: Path, tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.write_text("a file the user keeps")
    result = invoke("train", "--data", small_file, "--max-epochs", 1, "--out", taken)
    assert_refused(result, f"cannot write the model to {taken}")
    assert taken.read_text() == "a file the user keeps"


class _RunsCode:
    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))  # type: ignore[attr-defined]


def test_predict_refuses_weights_whose_pickle_would_run_code(store: str, tmp_path: Path, small_file: Path) -> None:
    model = tmp_path / "model"
    assert invoke("export", "--study", "tpe", "--out", model, "--storage", store).exit_code == 0
    marker = tmp_path / "pwned"
    payload = _RunsCode()
    payload.marker = marker  # type: ignore[attr-defined]
    (model / "model.pt").write_bytes(pickle.dumps(payload))
    result = invoke("predict", "--model", model, "--data", small_file, "--out", tmp_path / "s.csv")
    assert_refused(result, "cannot load the weights")
    assert not marker.exists() and not (tmp_path / "s.csv").exists()


def test_export_out_below_a_file(store: str, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    result = invoke("export", "--study", "tpe", "--out", tmp_path / "file" / "model", "--storage", store)
    assert_refused(result, "cannot write the model")
