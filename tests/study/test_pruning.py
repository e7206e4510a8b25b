"""Pruning and the objective's values: the pruning callback, every pruner, the objectives and their directions, and
non-finite metrics."""

from __future__ import annotations

from pathlib import Path

import optuna
import pytest
from helpers import fake_train, study_config
from optuna.trial import TrialState

from hpo_astro.core.space import SearchSpace
from hpo_astro.data.prepare import load_splits
from hpo_astro.store.record import trial_history
from hpo_astro.store.storage import artifact_store
from hpo_astro.study.config import StudyConfig
from hpo_astro.study.objective import Objective, finite_metric
from hpo_astro.study.run import run_study
from hpo_astro.study.strategies import make_pruner


def test_pruning_callback_prunes_and_keeps_the_metrics(tmp_path: Path, small_file: Path) -> None:
    """Real training under a pruner that must prune: accuracy is never above 2."""
    cfg = study_config(tmp_path, small_file, max_epochs=4)
    objective = Objective(cfg, load_splits(small_file), target=10, store=artifact_store(tmp_path / "a"))
    study = optuna.create_study(
        direction="maximize",
        pruner=optuna.pruners.ThresholdPruner(lower=2.0),
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    study.optimize(objective, n_trials=2)
    for t in study.trials:
        assert t.state == TrialState.PRUNED
        assert list(t.intermediate_values) == [1]  # stopped right after the first report
        assert len(trial_history(t)) == 1 and t.user_attrs["stop_reason"] == "pruned"
        assert "val_metrics" in t.user_attrs


@pytest.mark.parametrize("pruner", ["median", "hyperband", "successive-halving"])
def test_each_pruner_prunes_worse_trials(pruner: str, tmp_path: Path, small_file: Path) -> None:
    cfg = study_config(tmp_path, small_file, pruner=pruner, n_trials=16, max_epochs=9, seed=3)
    result = run_study(cfg, train=fake_train)
    pruned = result.study.get_trials(states=(TrialState.PRUNED,))
    assert result.finished == 16 and pruned
    assert all(t.user_attrs["stop_reason"] == "pruned" for t in pruned)
    assert any(len(trial_history(t)) < 9 for t in pruned)  # stopped early, not only at the end


def test_pruner_none_never_prunes(tmp_path: Path, small_file: Path) -> None:
    cfg = study_config(tmp_path, small_file, pruner="none", n_trials=12, max_epochs=9)
    result = run_study(cfg, train=fake_train)
    assert not result.study.get_trials(states=(TrialState.PRUNED,))


def test_pruner_factory() -> None:
    space = SearchSpace.paper()
    assert isinstance(make_pruner(StudyConfig(pruner="none")), optuna.pruners.NopPruner)
    assert isinstance(make_pruner(StudyConfig(pruner="median")), optuna.pruners.MedianPruner)
    hb = make_pruner(StudyConfig(pruner="hyperband", max_epochs=27, space=space))
    assert isinstance(hb, optuna.pruners.HyperbandPruner) and hb._max_resource == 27
    assert isinstance(make_pruner(StudyConfig(pruner="successive-halving")), optuna.pruners.SuccessiveHalvingPruner)


# --- objectives ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("objective", "direction", "metric"),
    [("accuracy", "MAXIMIZE", "accuracy"), ("loss", "MINIMIZE", "loss"), ("roc_auc", "MAXIMIZE", "roc_auc")],
)
def test_objectives(objective: str, direction: str, metric: str, tmp_path: Path, small_file: Path) -> None:
    result = run_study(study_config(tmp_path, small_file, objective=objective, n_trials=2, max_epochs=1))
    assert result.study.direction.name == direction
    for t in result.study.trials:
        assert t.value == pytest.approx(t.user_attrs["val_metrics"][metric])
        assert t.intermediate_values[1] == pytest.approx(trial_history(t)[0][f"val_{metric}"])


def test_a_non_finite_metric_is_the_worst_value_never_the_best() -> None:
    assert finite_metric(float("nan"), maximize=True) == 0.0
    assert finite_metric(float("nan"), maximize=False) == 1e9
    assert finite_metric(float("inf"), maximize=False) == 1e9
    assert finite_metric(0.93, maximize=True) == 0.93
