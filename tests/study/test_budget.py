"""Exact budgets: an interrupted run resumes to exactly n finished trials and never overshoots, a budget can be
extended, a trial that finds the budget taken is surplus, and a study interrupted while it is created resumes."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from helpers import SMALL_SPACE, assert_refused, fake_train, invoke, journal_url, load_study, study_config
from optuna.trial import TrialState

from hpo_astro.core.space import SearchSpace
from hpo_astro.core.train import TrainState
from hpo_astro.data.prepare import load_splits
from hpo_astro.store.record import CHECKPOINT_ATTR, internal_attr, trial_history
from hpo_astro.store.storage import artifact_store
from hpo_astro.study.objective import SURPLUS_ATTR, Objective
from hpo_astro.study.run import RunEvents, run_study


def test_interrupted_run_resumes_to_exactly_n(tmp_path: Path, small_file: Path) -> None:
    cfg = study_config(tmp_path, small_file, n_trials=5)

    def interrupt(number: int, state: TrainState) -> None:
        if number == 2 and state.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, RunEvents(on_epoch=interrupt), train=fake_train)
    study = load_study(cfg.storage, "random")
    # never left RUNNING: failed, and re-queued with its parameters and its epoch-1 checkpoint
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL, TrialState.WAITING]
    interrupted, queued = study.trials[2], study.trials[3]
    assert queued.params == interrupted.params and internal_attr(queued, CHECKPOINT_ATTR)["epoch"] == 1
    result = run_study(cfg, train=fake_train)
    assert result.finished == 5 and result.ran == 3
    retried = result.study.trials[3]
    assert retried.state == TrialState.COMPLETE and retried.user_attrs["resumed_from_epoch"] == 1
    assert sorted(retried.intermediate_values) == [1, 2, 3] and len(trial_history(retried)) == 3
    again = run_study(cfg, train=fake_train)
    assert again.finished == 5 and again.ran == 0  # never overshoots
    assert len(again.study.get_trials(states=(TrialState.COMPLETE,))) == 5


@pytest.mark.parametrize(("interval", "checkpointed"), [(0, 3), (3600, 1)])
def test_checkpoints_after_the_first_epoch_then_every_interval(
    interval: int, checkpointed: int, tmp_path: Path, small_file: Path
) -> None:
    """`checkpoint_interval`: 0 writes every epoch; a long interval writes only after the first epoch, and the
    interrupted trial resumes from there to the same end."""
    cfg = study_config(tmp_path, small_file, n_trials=1, max_epochs=6, checkpoint_interval=interval)

    def interrupt(number: int, state: TrainState) -> None:
        if state.epoch == 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, RunEvents(on_epoch=interrupt), train=fake_train)
    study = load_study(cfg.storage, "random")
    assert internal_attr(study.trials[-1], CHECKPOINT_ATTR)["epoch"] == checkpointed
    result = run_study(cfg, train=fake_train)
    retried = result.study.trials[-1]
    assert retried.state == TrialState.COMPLETE and retried.user_attrs["resumed_from_epoch"] == checkpointed
    assert sorted(retried.intermediate_values) == [1, 2, 3, 4, 5, 6]


def test_budget_can_be_extended(tmp_path: Path, small_file: Path) -> None:
    run_study(study_config(tmp_path, small_file, n_trials=2), train=fake_train)
    result = run_study(study_config(tmp_path, small_file, n_trials=4), train=fake_train)
    assert result.finished == 4 and result.study.user_attrs["n_trials"] == 4


def test_a_trial_that_finds_the_budget_taken_is_marked_surplus(tmp_path: Path, small_file: Path) -> None:
    """The second trial of a study whose budget (1) is already taken fails as surplus, recorded as data on the trial
    (the run loop does not count it as a failure of the configuration); its reason stays readable."""
    cfg = study_config(tmp_path, small_file, space=SearchSpace.from_dict(SMALL_SPACE))
    store = artifact_store(tmp_path / "a")
    objective = Objective(cfg, load_splits(small_file), target=1, store=store, train=fake_train)
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=2, catch=(Exception,))
    done, surplus = study.trials
    assert done.state == TrialState.COMPLETE and SURPLUS_ATTR not in done.user_attrs
    assert surplus.state == TrialState.FAIL and surplus.user_attrs[SURPLUS_ATTR] is True
    assert surplus.user_attrs["fail_reason"] == "_SurplusTrial: the budget of 1 trials is already taken by other trials"


@pytest.mark.parametrize("written", [0, 1, 3, 8])
def test_a_study_interrupted_while_its_configuration_is_written_resumes(
    written: int, tmp_path: Path, small_file: Path, fake_training: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C after `written` of the study's attributes are committed: the half-written study is not "a different
    study": `worker` says how to finish it, and re-running the same command completes and runs it."""
    store = journal_url(tmp_path)
    args = ["run", "--n-trials", 2, "--data", small_file, "--max-epochs", 1, "--storage", store]
    calls = []
    original = optuna.Study.set_user_attr

    def interrupted(self: optuna.Study, key: str, value: object) -> None:
        if len(calls) == written:
            raise KeyboardInterrupt
        calls.append(key)
        original(self, key, value)

    with monkeypatch.context() as mp:
        mp.setattr(optuna.Study, "set_user_attr", interrupted)
        first = invoke(*args)
    assert first.exit_code == 130 and "resume with" in first.stderr
    study = load_study(store, "random")
    assert len(study.user_attrs) == written and not study.trials
    expected = "interrupted while being created" if written else "no recorded configuration"
    assert_refused(invoke("worker", "--study", "random", "--storage", store), expected)
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    assert "2/2 finished trials" in again.stdout
    assert invoke(*args).exit_code == 0  # and the completed study is recognised as the same one
