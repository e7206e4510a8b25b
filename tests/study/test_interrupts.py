"""Ctrl-C and SIGTERM: through the real command, while a checkpoint is written and while the sampler chooses; the
trial is failed and re-queued, and the same command resumes. And the logging set up for them when a run starts."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from helpers import SMALL_SPACE, fake_train, invoke, load_study, patience, study_config
from optuna.trial import TrialState

from hpo_astro.core.space import SearchSpace
from hpo_astro.store.record import CHECKPOINT_ATTR, internal_attr
from hpo_astro.study import run as run_module
from hpo_astro.study.run import run_study


def _cheap_space(folder: Path) -> Path:
    path = folder / "cheap.toml"
    path.write_text("[space]\nconv_layers = [1]\nfc_layers = [1]\nbatch_size = [64]\nlr = [1e-2, 1e-3]\n")
    return path


def test_ctrl_c_marks_the_trial_failed_and_the_same_command_resumes(tmp_path: Path, small_file: Path) -> None:
    db = tmp_path / "optuna.db"
    cmd = [
        sys.executable,
        "-m",
        "hpo_astro.cli",
        "run",
        "--strategy",
        "random",
        "--n-trials",
        "3",
        "--data",
        str(small_file),
        "--max-epochs",
        "3",
        "--storage",
        f"sqlite:///{db}",
        "--seed",
        "1",
        "--config",  # small, fast configurations: the subject is the signal, not the training
        str(_cheap_space(tmp_path)),
    ]
    env = {**os.environ, "HPO_ASTRO_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + patience(120)
    while time.time() < deadline:  # wait until a trial is running, then interrupt it
        if db.exists() and _count(db, "RUNNING") > 0:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=patience(60))
    assert proc.returncode == 130, err
    assert "resume with: hpo-astro run --strategy random --n-trials 3" in err
    assert "Traceback" not in err  # an interrupt is not an error
    assert _count(db, "RUNNING") == 0 and _count(db, "FAIL") == 1
    done = invoke(*cmd[3:])  # the same command, in this process (a process start costs seconds of imports)
    assert done.exit_code == 0, done.output
    assert _count(db, "COMPLETE") + _count(db, "PRUNED") == 3 and _count(db, "RUNNING") == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_a_checkpoint_is_written_stops_the_run(
    sig: signal.Signals, tmp_path: Path, small_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal landing inside `torch.save` used to come out of its zip writer as a RuntimeError: the trial was
    recorded as an ordinary failure and the run carried on (exit 0), the signal lost. It must stop the run with the
    checkpoint whole, the trial failed and re-queued, and the same call must then finish the budget from it."""
    real = tempfile.TemporaryFile
    fired: list[bool] = []

    class SignalOnSecondCheckpoint:  # the file torch.save writes epoch 2's checkpoint into
        def __init__(self, *args: object, **kwargs: object) -> None:
            self.file = real(*args, **kwargs)
            self.writes = 0

        def write(self, data: bytes) -> int:
            self.writes += 1
            if len(checkpoints) == 2 and self.writes == 2 and not fired:
                fired.append(True)
                os.kill(os.getpid(), sig)  # delivered here, in the middle of the zip writer
            return self.file.write(data)

        def __getattr__(self, name: str) -> object:
            return getattr(self.file, name)

        def __enter__(self) -> SignalOnSecondCheckpoint:
            checkpoints.append(self)
            return self

        def __exit__(self, *exc: object) -> None:
            self.file.close()

    checkpoints: list[SignalOnSecondCheckpoint] = []
    cfg = study_config(
        tmp_path,
        small_file,
        n_trials=2,
        max_epochs=4,
        space=SearchSpace.from_dict({"conv_layers": [1]}),
        checkpoint_interval=0,  # a checkpoint every epoch: the signal lands in epoch 2's
    )
    # Only this patch is undone afterwards: undoing every patch would also undo the fixture's cache redirection
    # (HPO_ASTRO_CACHE), and the resumed run below would write into the user's own cache.
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):
        patch.setattr(tempfile, "TemporaryFile", SignalOnSecondCheckpoint)
        run_study(cfg)
    assert fired
    study = load_study(cfg.storage, cfg.study_name)
    (failed,) = study.get_trials(states=(TrialState.FAIL,))
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING]  # failed and re-queued
    assert internal_attr(failed, CHECKPOINT_ATTR)["epoch"] == 2  # the checkpoint being written when the signal came
    result = run_study(cfg)
    retry = [t for t in result.study.trials if t.system_attrs.get("retry_history")]
    assert len(retry) == 1 and retry[0].user_attrs["resumed_from_epoch"] == 2
    assert result.finished == 2 and len(result.study.get_trials(states=(TrialState.COMPLETE,))) == 2


def test_a_signal_while_the_sampler_chooses_waits_for_training(
    tmp_path: Path, small_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Outside training, signals are deferred: one arriving while the sampler chooses (or while Optuna starts the
    trial's heartbeat thread) takes effect when training starts, so the trial is failed and re-queued with its
    parameters, and no heartbeat thread is left running (one left behind kept the process from ever exiting)."""
    import threading

    class SignalWhileChoosing(optuna.samplers.RandomSampler):
        def sample_independent(self, study, trial, name, distribution):  # type: ignore[no-untyped-def]
            if trial.number == 1 and name == "conv_layers":
                os.kill(os.getpid(), signal.SIGINT)
            return super().sample_independent(study, trial, name, distribution)

    cfg = study_config(tmp_path, small_file, n_trials=3, space=SearchSpace.from_dict(SMALL_SPACE))
    with monkeypatch.context() as patch, pytest.raises(KeyboardInterrupt):  # undone alone: see the test above
        patch.setattr(run_module, "make_sampler", lambda cfg: SignalWhileChoosing(seed=0))
        run_study(cfg, train=fake_train)
    study = load_study(cfg.storage, cfg.study_name)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    assert study.trials[2].params == study.trials[1].params  # chosen in full, then re-queued
    assert "fail_reason" not in study.trials[1].user_attrs  # an interrupt, not an error
    heartbeats = [t for t in threading.enumerate() if "heartbeat" in str(getattr(t, "_target", "")).lower()]
    assert not heartbeats
    assert run_study(cfg, train=fake_train).finished == 3


def _count(db: Path, state: str) -> int:
    with sqlite3.connect(db) as con:
        try:
            return con.execute("SELECT COUNT(*) FROM trials WHERE state = ?", (state,)).fetchone()[0]
        except sqlite3.OperationalError:
            return 0  # tables not created yet


def test_importing_the_library_leaves_logging_alone_and_a_run_configures_it() -> None:
    """Optuna's verbosity and the filter that drops the tracebacks of interrupts are set when a run starts, not when
    `hpo_astro` is imported (an import must not change the caller's logging); setting them up twice adds one filter."""
    code = """
import logging, optuna
optuna.logging.set_verbosity(optuna.logging.DEBUG)
import hpo_astro.cli, hpo_astro.study.run, hpo_astro.study.create, hpo_astro.study.workers
optimize = logging.getLogger("optuna.study._optimize")
assert optuna.logging.get_verbosity() == optuna.logging.DEBUG and not optimize.filters
from hpo_astro.study.interrupts import configure_logging
configure_logging()
configure_logging()
assert optuna.logging.get_verbosity() == optuna.logging.WARNING and len(optimize.filters) == 1
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=patience(120))
    assert done.returncode == 0, done.stderr


def test_a_signal_that_comes_once_the_trial_has_ended_requeues_nothing_and_says_so(
    tmp_path: Path, small_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal after training (while the trial's result is written) is deferred and acts once Optuna has recorded
    the trial: nothing was interrupted, so nothing is re-queued, and the run does not claim it was."""
    from hpo_astro.cli.study import _interrupted
    from hpo_astro.study import objective

    recorded = objective._record_run

    def record_then_signal(trial: optuna.Trial, result: object) -> None:
        recorded(trial, result)
        os.kill(os.getpid(), signal.SIGINT)  # after training: deferred until the trial has ended

    monkeypatch.setattr(objective, "_record_run", record_then_signal)
    cfg = study_config(tmp_path, small_file, n_trials=2, max_epochs=1)
    with pytest.raises(run_module.Interrupted) as stopped:
        run_study(cfg, train=fake_train)
    assert not stopped.value.requeued and stopped.value.state == "complete"
    assert (
        _interrupted(stopped.value) == "trial #0 had already ended (complete) when the signal came: nothing to re-queue"
    )
    study = load_study(cfg.storage, cfg.study_name)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE]  # no retry queued
