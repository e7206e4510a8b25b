"""A trial's seeds trained stacked (`hpo_astro.study.stacked_runs`): Optuna sees the same series, in the same run
order, and prunes at the same run and epoch as when the runs train one after another; the trial records the same
values (to rounding) and says whether its runs were stacked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import optuna
import pytest
from helpers import noise_splits, study_config
from optuna.trial import TrialState

from hpo_astro.core.epochs import EpochLoop
from hpo_astro.core.hyperparameters import DEFAULT_PARAMS
from hpo_astro.core.space import SearchSpace
from hpo_astro.core.train import train
from hpo_astro.store.record import EVAL_STACKING_ATTR
from hpo_astro.study import run as run_module
from hpo_astro.study.evaluation import EvalPlan
from hpo_astro.study.run import run_study
from hpo_astro.study.stacked_runs import train_runs_stacked

# Noise data and a high learning rate: the runs overfit and stop early, at different epochs.
OVERFIT = {**DEFAULT_PARAMS, "batch_size": 16, "fc_width": 32, "lr": 1e-2, "t_max": 50, "early_stop_patience": 2}
PLAN = EvalPlan(seeds=3, folds=1, base_seed=0, stride=8)


class Recorder:
    """A pruning callback that records what it is shown, as (run, epoch), and prunes at `prune_at`."""

    def __init__(self, seen: list[tuple[int, int]], run: int, prune_at: tuple[int, int] | None) -> None:
        self.seen, self.run, self.prune_at = seen, run, prune_at

    def on_epoch_end(self, state: EpochLoop) -> None:
        self.seen.append((self.run, state.epoch))
        if (self.run, state.epoch) == self.prune_at:
            state.request_stop("pruned")


def sequential_lengths() -> list[int]:
    data = noise_splits(48)
    return [len(train(OVERFIT, data, seed=run.seed, max_epochs=8).history) for run in PLAN.runs()]


def stacked(prune_at: tuple[int, int] | None) -> tuple[list[Any], list[tuple[int, int]]]:
    seen: list[tuple[int, int]] = []
    results = train_runs_stacked(
        OVERFIT, noise_splits(48), PLAN, lambda run: Recorder(seen, run, prune_at), max_epochs=8, device="cpu"
    )
    return results, seen


def test_epochs_are_reported_run_after_run_as_a_sequential_trial_reports_them() -> None:
    lengths = sequential_lengths()
    results, seen = stacked(None)
    assert seen == [(run, epoch) for run, n in enumerate(lengths) for epoch in range(1, n + 1)]
    assert [len(r.history) for r in results] == lengths


def test_the_pruner_stops_the_trial_at_the_same_run_and_epoch() -> None:
    lengths = sequential_lengths()
    results, seen = stacked((1, 2))
    assert seen == [(0, e) for e in range(1, lengths[0] + 1)] + [(1, 1), (1, 2)]
    assert len(results) == 2  # the third run is dropped, as a sequential trial never starts it
    assert len(results[1].history) == 2 and results[1].stop_reason == "pruned" and results[1].model is None
    assert results[0].stop_reason != "pruned"


def test_a_run_that_stopped_early_at_an_epoch_is_not_pruned_there() -> None:
    """In a sequential trial early stopping decides first: the pruner's answer at that epoch comes too late."""
    lengths = sequential_lengths()
    assert lengths[0] < 8, "run 0 should stop early for this test to mean anything"
    results, _ = stacked((0, lengths[0]))
    assert len(results) == 3 and results[0].stop_reason == "early_stopping"


class PruneAtStep(optuna.pruners.BasePruner):
    def __init__(self, step: int) -> None:
        self.step = step

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        return trial.last_step == self.step


def _study(tmp_path: Path, name: str, stack_runs: str, prune_step: int | None, monkeypatch: Any) -> optuna.Study:
    if prune_step is not None:
        monkeypatch.setattr(run_module, "make_pruner", lambda cfg: PruneAtStep(prune_step))
    space = SearchSpace.from_dict({"lr": [1e-3], "batch_size": [16], "fc_width": [32], "t_max": [10]})
    cfg = study_config(
        tmp_path / name,
        Path("unused"),
        strategy="grid",
        study=name,
        n_trials=1,
        space=space,
        eval_seeds=2,
        max_epochs=3,
        stack_runs=stack_runs,
        devices=("cpu",),
    )
    (tmp_path / name).mkdir()
    return run_study(cfg, data=noise_splits(32)).study


@pytest.mark.parametrize("prune_step", [None, 5], ids=["complete", "pruned-in-run-2"])
def test_a_stacked_study_records_what_the_sequential_study_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, prune_step: int | None
) -> None:
    one_by_one = _study(tmp_path, "sequential", "off", prune_step, monkeypatch).trials[0]
    together = _study(tmp_path, "stacked", "on", prune_step, monkeypatch).trials[0]
    assert together.user_attrs[EVAL_STACKING_ATTR] == "stacked"
    assert one_by_one.user_attrs[EVAL_STACKING_ATTR] == "stacking turned off"
    assert together.state == one_by_one.state
    assert together.state == (TrialState.PRUNED if prune_step else TrialState.COMPLETE)
    assert sorted(together.intermediate_values) == sorted(one_by_one.intermediate_values)
    for step, value in one_by_one.intermediate_values.items():
        assert together.intermediate_values[step] == pytest.approx(value, abs=0.05)
    runs = [(r["seed"], r["stop_reason"], r["best_epoch"]) for r in together.user_attrs["eval_runs"]]
    assert runs == [(r["seed"], r["stop_reason"], r["best_epoch"]) for r in one_by_one.user_attrs["eval_runs"]]
    if prune_step is None:
        assert together.value == pytest.approx(one_by_one.value, abs=0.05)


def test_an_interrupted_stacked_trial_trains_its_runs_again_and_ends_as_it_would_have(tmp_path: Path) -> None:
    """A stacked trial writes no checkpoint: Ctrl-C in its second epoch, then the same run trains both runs again
    from the start and records the uninterrupted trial's values."""
    from hpo_astro.study.run import RunEvents

    def config(name: str) -> Any:
        (tmp_path / name).mkdir()
        space = SearchSpace.from_dict({"lr": [1e-3], "batch_size": [16], "fc_width": [32], "t_max": [10]})
        return study_config(
            tmp_path / name, Path("unused"), strategy="grid", study=name, n_trials=1, space=space, eval_seeds=2,
            max_epochs=3, stack_runs="on", devices=("cpu",), checkpoint_interval=0,
        )  # fmt: skip

    data = noise_splits(32)
    reference = run_study(config("whole"), data=data).study.trials[0]

    def interrupt(number: int, state: Any) -> None:
        if state.epoch == 2:
            raise KeyboardInterrupt

    cut = config("cut")
    with pytest.raises(KeyboardInterrupt):
        run_study(cut, RunEvents(on_epoch=interrupt), data=data)
    resumed = run_study(cut, data=data).study.get_trials(states=(TrialState.COMPLETE,))
    assert len(resumed) == 1 and "resumed_from_epoch" not in resumed[0].user_attrs
    assert resumed[0].user_attrs["eval_values"] == reference.user_attrs["eval_values"]
    assert resumed[0].intermediate_values == reference.intermediate_values


def test_stack_runs_from_the_command_line_and_a_bad_value_in_a_study_file(tmp_path: Path, small_file: Path) -> None:
    from helpers import assert_refused, invoke, journal_url, load_study, scripted_trainer

    url = journal_url(tmp_path)
    train = scripted_trainer(lambda p, s: 0.5 + 0.01 * s)
    args = ("run", "--strategy", "random", "-n", 1, "--eval-seeds", 2, "--data", small_file, "--storage", url)
    result = invoke(*args, "--study", "off", "--stack-runs", "off", train=train)
    assert result.exit_code == 0, result.output
    assert load_study(url, "off").trials[0].user_attrs["eval_stacking"] == "stacking turned off"
    assert_refused(invoke(*args, "--study", "bad", "--stack-runs", "sometimes", train=train), "--stack-runs")
    bad = tmp_path / "bad.toml"
    bad.write_text('n_trials = 1\nstack_runs = "sometimes"\n')
    assert_refused(
        invoke("run", "--config", bad, "--storage", url, train=train), "stack_runs must be one of auto, on, off"
    )
