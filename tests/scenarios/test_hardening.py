"""Attacks and faults a hostile user tries: files too small to split, output paths that cannot be written, weights
files that would run code, a full disk. Each ends with one `error:` line and nothing half-written."""

from __future__ import annotations

import errno
import os
import pickle
from pathlib import Path

import optuna
import pytest
from helpers import assert_refused, invoke, patience
from optuna.trial import TrialState

from hpo_astro.data import exromana, simulate
from hpo_astro.store.record import WORKER_ATTR, internal_attr


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


# --- a full disk ----------------------------------------------------------------------------------------------


def test_a_full_disk_stops_the_run_with_one_line_and_the_same_command_resumes(
    tmp_path: Path, small_file: Path, monkeypatch: pytest.MonkeyPatch, fake_training: None
) -> None:
    """The third checkpoint write fails with ENOSPC: the run stops (it does not burn the budget on failures), the
    trial is re-queued with its last whole checkpoint, and once there is space the same command ends with exactly
    the budget."""
    store = f"sqlite:///{tmp_path / 'optuna.db'}"
    args = ["run", "-n", 3, "--data", small_file, "--max-epochs", 3, "--storage", store, "--study", "full"]
    args += ["--checkpoint-interval", 0]  # a checkpoint every epoch: the write count below depends on it
    writes = []
    original = optuna.artifacts.FileSystemArtifactStore.write

    def full_disk(self: optuna.artifacts.FileSystemArtifactStore, artifact_id: str, content_body: object) -> None:
        writes.append(artifact_id)
        if len(writes) == 5:  # trial 0: 3 checkpoints + its best weights; trial 1: its first checkpoint
            raise OSError(errno.ENOSPC, "No space left on device")
        original(self, artifact_id, content_body)

    with monkeypatch.context() as mp:
        mp.setattr(optuna.artifacts.FileSystemArtifactStore, "write", full_disk)
        result = invoke(*args)
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: cannot write: No space left on device"), result.stderr
    assert "re-run the same command" in lines[0] and "Traceback" not in result.output
    study = optuna.load_study(study_name="full", storage=store)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    assert study.trials[2].params == study.trials[1].params
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    study = optuna.load_study(study_name="full", storage=store)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 3
    assert study.trials[2].state == TrialState.COMPLETE


def test_a_real_write_limit_never_gives_a_traceback(tmp_path: Path, small_file: Path) -> None:
    """The operating system refuses writes beyond 256 KB (RLIMIT_FSIZE, as a full disk refuses them): whichever write
    fails first (the store's journal, a checkpoint), `run` ends with one `error:` line, and without the limit the
    same command ends with exactly the budget."""
    import resource
    import signal
    import subprocess
    import sys

    from hpo_astro.data.prepare import load_splits

    load_splits(small_file)  # the preprocessed tensors are cached before the limit applies

    def limit_writes() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
        resource.setrlimit(resource.RLIMIT_FSIZE, (256 << 10, 256 << 10))

    store = f"sqlite:///{tmp_path / 'optuna.db'}"
    cheap = tmp_path / "cheap.toml"  # small, fast configurations: the subject is the writes, not the training
    cheap.write_text("[space]\nconv_layers = [1]\nfc_layers = [1]\nbatch_size = [256]\nlr = [1e-2, 1e-3]\n")
    command = [sys.executable, "-m", "hpo_astro.cli", "run", "-n", 2, "--data", small_file, "--max-epochs", 2]
    command = [str(c) for c in [*command, "--config", cheap, "--storage", store, "--study", "limited"]]
    limited = subprocess.run(command, capture_output=True, text=True, preexec_fn=limit_writes, timeout=patience(300))
    assert limited.returncode == 1, limited.stderr
    assert "Traceback" not in limited.stderr
    errors = [line for line in limited.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "cannot write" in errors[0], limited.stderr
    again = invoke(*command[3:])  # the same command, without the limit, in this process (a start costs seconds)
    assert again.exit_code == 0, again.output
    study = optuna.load_study(study_name="limited", storage=store)
    assert len(study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))) == 2


# --- two commands on one study --------------------------------------------------------------------------------


def test_two_run_commands_on_one_study_at_once_do_not_repeat_each_other(tmp_path: Path, small_file: Path) -> None:
    """Two `hpo-astro run` processes started together with the same seed: each trial's sampler seed follows the
    study's progress, so every configuration differs (one process seed, as before, gave each process the same draws).
    """
    import subprocess
    import sys

    from hpo_astro.data.prepare import load_splits

    load_splits(small_file)  # both processes find the tensors cached
    study_file = tmp_path / "cheap.toml"
    study_file.write_text(
        'strategy = "random"\nn_trials = 10\nmax_epochs = 2\n[space]\nconv_layers = [1]\nfc_layers = [1]\n'
        "batch_size = [256]\nlr = [1e-1, 1e-2, 1e-3, 1e-4]\nweight_decay = [1e-2, 1e-3, 1e-4, 1e-5]\n"
        'dropout_rate = [0.0, 0.05, 0.1, 0.2, 0.3]\nactivation = ["ReLU", "LeakyReLU", "GELU", "Tanh"]\n'
    )
    store = f"sqlite:///{tmp_path / 'optuna.db'}"
    invoke("run", "--config", study_file, "--data", small_file, "--storage", store, "-n", 1)  # the schema exists
    command = [sys.executable, "-m", "hpo_astro.cli", "run", "--config", study_file, "--data", small_file]
    command = [str(c) for c in [*command, "--storage", store]]
    processes = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    for process in processes:
        _, err = process.communicate(timeout=patience(300))
        assert process.returncode == 0, err.decode()
    study = optuna.load_study(study_name="random", storage=store)
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(finished) == 10
    ran_by = {internal_attr(t, WORKER_ATTR) for t in finished}
    assert len(ran_by) == 3  # the first command, then both concurrent ones ran trials
    assert len({tuple(sorted(t.params.items())) for t in finished}) == 10


@pytest.mark.parametrize("where", ["a directory", "below a file"])
def test_compare_checks_its_output_before_evaluating_or_caching(where: str, store: str, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    out = tmp_path if where == "a directory" else tmp_path / "file" / "table.csv"
    result = invoke("compare", "--storage", store, "--format", "csv", "--out", out)
    assert_refused(result, f"cannot write {out}")
    assert "compare_cache" not in optuna.load_study(study_name="tpe", storage=store).user_attrs


def test_an_output_the_full_disk_refuses_is_exit_1_a_bad_path_exit_2(
    store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`cannot write` has two causes: the user's path (exit 2, as any bad input) or the machine (exit 1)."""
    import hpo_astro.io

    (tmp_path / "file").write_text("x")
    assert_refused(invoke("compare", "--storage", store, "--out", tmp_path / "file" / "t.csv"), "cannot write")

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(hpo_astro.io.os, "replace", full)
    result = invoke("compare", "--storage", store, "--format", "csv", "--out", tmp_path / "t.csv")
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().splitlines()[-1].startswith("error: cannot write")
    assert "No space left on device" in result.stderr and "Traceback" not in result.output
    assert not list(tmp_path.glob(".t.csv.*.part"))
