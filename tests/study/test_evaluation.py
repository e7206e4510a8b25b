"""Noise-aware evaluation (`hpo_astro.study.evaluation`): several training runs per trial (seeds, cross-validation
folds), scored by their mean, with the spread recorded; one pruning series over the runs (racing); resume mid-way."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from helpers import (
    assert_refused,
    invoke,
    journal_url,
    load_study,
    noise_splits,
    scripted_trainer,
    study_config,
)
from optuna.trial import TrialState

from hpo_astro.core.space import SearchSpace
from hpo_astro.core.train import train as real_train
from hpo_astro.errors import UserError
from hpo_astro.store.record import CHECKPOINT_ATTR, StudyRecord, internal_attr, params_full
from hpo_astro.study import run as run_module
from hpo_astro.study.config import StudyConfig
from hpo_astro.study.evaluation import EvalPlan, fold_data, fold_indices
from hpo_astro.study.run import run_study
from hpo_astro.study.strategies import make_pruner

TWO_CONFIGS = SearchSpace.from_dict({"lr": [1e-3, 1e-2]})
STEADY, LUCKY = 1e-3, 1e-2


def steady_or_lucky(params: Mapping[str, Any], seed: int) -> float:
    """The steady configuration scores 0.80 with every seed; the lucky one 0.95 with seed 0 and 0.60 with any other
    (mean over 3 seeds: 0.717, a mediocre configuration whose best single run is the best of all)."""
    if float(params["lr"]) == STEADY:
        return 0.80
    return 0.95 if seed == 0 else 0.60


def grid_of_two(tmp_path: Path, name: str, **overrides: Any) -> StudyConfig:
    settings = {"strategy": "grid", "n_trials": 2, "space": TWO_CONFIGS, "study": name, **overrides}
    return study_config(tmp_path, Path("unused"), **settings)


def test_single_evaluation_picks_the_lucky_configuration_and_three_seeds_the_steady_one(tmp_path: Path) -> None:
    train = scripted_trainer(steady_or_lucky)
    single = run_study(grid_of_two(tmp_path, "single"), train=train, data=noise_splits()).study
    assert single.best_trial.params["lr"] == LUCKY
    assert single.best_value == pytest.approx(0.95)

    noisy = run_study(grid_of_two(tmp_path, "three", eval_seeds=3), train=train, data=noise_splits()).study
    assert noisy.best_trial.params["lr"] == STEADY
    lucky = next(t for t in noisy.trials if t.params["lr"] == LUCKY)
    assert lucky.value == pytest.approx(statistics.fmean([0.95, 0.60, 0.60]))
    assert lucky.user_attrs["eval_values"] == pytest.approx([0.95, 0.60, 0.60])
    assert lucky.user_attrs["eval_std"] == pytest.approx(statistics.stdev([0.95, 0.60, 0.60]))
    assert lucky.user_attrs["eval_sem"] == pytest.approx(statistics.stdev([0.95, 0.60, 0.60]) / math.sqrt(3))
    assert [r["seed"] for r in lucky.user_attrs["eval_runs"]] == [0, 1, 2]
    assert all(r["fold"] is None for r in lucky.user_attrs["eval_runs"])
    assert lucky.user_attrs["train_seed"] == 0  # the kept model is the first run's
    assert lucky.user_attrs["val_metrics"]["accuracy"] == pytest.approx(lucky.value)  # the mean of the runs
    assert "eval_runs" not in single.trials[0].user_attrs  # one run: recorded as before


def test_the_runs_train_with_consecutive_seeds_from_the_study_seed(tmp_path: Path) -> None:
    seen: list[int] = []

    def final(params: Mapping[str, Any], seed: int) -> float:
        seen.append(seed)
        return 0.5

    cfg = grid_of_two(tmp_path, "seeds", eval_seeds=2, seed=40, n_trials=1)
    run_study(cfg, train=scripted_trainer(final), data=noise_splits())
    assert seen == [40, 41]


def test_the_pruner_sees_the_runs_as_one_series(tmp_path: Path) -> None:
    cfg = grid_of_two(tmp_path, "series", eval_seeds=2, max_epochs=3, n_trials=1)
    study = run_study(cfg, train=scripted_trainer(lambda p, s: 0.6 + 0.3 * s), data=noise_splits()).study
    (trial,) = study.trials
    assert sorted(trial.intermediate_values) == [1, 2, 3, 4, 5, 6]  # run 1's epoch e is step 3 + e
    assert trial.intermediate_values[3] == pytest.approx(0.6) and trial.intermediate_values[6] == pytest.approx(0.9)
    assert EvalPlan(seeds=2, folds=3, stride=3).max_step == 18
    hyperband = make_pruner(StudyConfig(pruner="hyperband", n_trials=1, eval_seeds=2, folds=3, max_epochs=3).validate())
    assert hyperband._max_resource == 18  # Hyperband's brackets span every run


def test_racing_stops_a_poor_configuration_in_the_run_where_it_falls_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pruner that stops any trial below 0.2 (the epochs climb linearly to the run's final accuracy over 3 epochs):
    a poor configuration (0.3) stops after one epoch of its first run, a fickle one (0.8 with seed 0, 0.3 with seed 1)
    in its second run, a steady one (0.8) runs both to the end."""
    space = SearchSpace.from_dict({"lr": [1e-4, 1e-3, 1e-2]})
    finals = {1e-4: (0.3, 0.3), 1e-3: (0.8, 0.8), 1e-2: (0.8, 0.3)}
    monkeypatch.setattr(run_module, "make_pruner", lambda cfg: optuna.pruners.ThresholdPruner(lower=0.2))
    cfg = study_config(tmp_path, Path("unused"), strategy="grid", n_trials=3, space=space, eval_seeds=2, max_epochs=3)
    study = run_study(cfg, train=scripted_trainer(lambda p, s: finals[float(p["lr"])][s]), data=noise_splits()).study
    by_lr = {t.params["lr"]: t for t in study.trials}
    poor, steady, fickle = by_lr[1e-4], by_lr[1e-3], by_lr[1e-2]
    assert poor.state == TrialState.PRUNED and sorted(poor.intermediate_values) == [1]
    assert len(poor.user_attrs["eval_runs"]) == 1 and poor.user_attrs["stop_reason"] == "pruned"
    assert fickle.state == TrialState.PRUNED and max(fickle.intermediate_values) == 4
    assert [r["stop_reason"] for r in fickle.user_attrs["eval_runs"]] == ["max_epochs", "pruned"]
    assert steady.state == TrialState.COMPLETE and steady.value == pytest.approx(0.8)


# --- cross-validation folds ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("folds", [2, 3, 5, 7])
def test_folds_are_disjoint_stratified_and_cover_every_record(folds: int) -> None:
    labels = (np.random.default_rng(folds).random(203) < 0.37).astype(np.float32)
    parts = fold_indices(labels, folds, seed=1)
    assert len(parts) == folds
    assert sorted(np.concatenate(parts).tolist()) == list(range(len(labels)))  # disjoint and covering
    for cls in (0, 1):
        counts = [int((labels[p] == cls).sum()) for p in parts]
        assert max(counts) - min(counts) <= 1, counts  # each class spread as evenly as it divides
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1
    assert [p.tolist() for p in fold_indices(labels, folds, seed=1)] == [p.tolist() for p in parts]  # same seed
    assert [p.tolist() for p in fold_indices(labels, folds, seed=2)] != [p.tolist() for p in parts]


def test_a_fold_validates_on_its_part_trains_on_the_rest_and_never_touches_test() -> None:
    data = noise_splits(90)
    pool_x = torch.cat([data.x_train, data.x_val])
    seen_val: list[torch.Tensor] = []
    for fold in range(3):
        part = fold_data(data, fold, 3, seed=0)
        assert part.x_test is data.x_test and part.y_test is data.y_test  # the test split, untouched
        assert len(part.y_train) + len(part.y_val) == len(pool_x)
        assert {tuple(row.flatten()[:4].tolist()) for row in torch.cat([part.x_train, part.x_val])} == {
            tuple(row.flatten()[:4].tolist()) for row in pool_x
        }  # train and val of the fold together are the pool
        seen_val.append(part.x_val)
    keys = [tuple(row.flatten()[:4].tolist()) for x in seen_val for row in x]
    assert len(keys) == len(set(keys)) == len(pool_x)  # the validation parts are disjoint and cover the pool


def test_a_study_with_folds_trains_each_run_on_its_fold(tmp_path: Path) -> None:
    seen: list[tuple[int, int, int]] = []
    data = noise_splits(90)

    def train(params: Mapping[str, Any], data: Any, seed: int = 0, **kw: Any) -> Any:
        seen.append((seed, len(data.y_train), len(data.y_val)))
        return scripted_trainer(lambda p, s: 0.7)(params, data, seed=seed, **kw)

    cfg = grid_of_two(tmp_path, "cv", folds=3, eval_seeds=2, n_trials=1, seed=7)
    (trial,) = run_study(cfg, train=train, data=data).study.trials
    pool = len(data.y_train) + len(data.y_val)
    assert [s for s, _, _ in seen] == [7, 7, 7, 8, 8, 8]  # the folds first, then the next seed
    assert all(n_train + n_val == pool and n_val in (pool // 3, pool // 3 + 1) for _, n_train, n_val in seen)
    assert [(r["seed"], r["fold"]) for r in trial.user_attrs["eval_runs"]] == [
        (7, 0), (7, 1), (7, 2), (8, 0), (8, 1), (8, 2)
    ]  # fmt: skip


def test_folds_are_refused_for_a_table_and_for_data_too_small(tmp_path: Path) -> None:
    def replay(*args: Any, **kw: Any) -> Any:
        raise AssertionError("never called")

    replay.trial_kind = "replayed"  # type: ignore[attr-defined]
    with pytest.raises(UserError, match="a table's rows were trained on one fixed split"):
        run_study(grid_of_two(tmp_path, "table", folds=3), train=replay, data=noise_splits())
    tiny = noise_splits(4)
    with pytest.raises(UserError, match="--folds 5 needs at least 5 records of each class"):
        run_study(grid_of_two(tmp_path, "tiny", folds=5), train=scripted_trainer(lambda p, s: 0.5), data=tiny)
    assert not (tmp_path / "optuna.log").exists()  # refused before the store was opened


# --- resume in the middle of the runs -------------------------------------------------------------------------------

SMALL_MODEL = SearchSpace.from_dict(
    {"conv_layers": [2], "fc_layers": [2], "fc_width": [32], "batch_size": [16], "t_max": [10]}
)


def test_a_trial_interrupted_in_its_second_run_resumes_there_and_ends_with_the_uninterrupted_value(
    tmp_path: Path,
) -> None:
    data = noise_splits(64)
    calls: list[int] = []

    class InterruptOnce:
        fired = False

        def on_epoch_end(self, state: Any) -> None:
            if state.epoch == 2 and not InterruptOnce.fired and calls[-1] == 1:
                InterruptOnce.fired = True
                raise KeyboardInterrupt

    def train(params: Mapping[str, Any], data: Any, callbacks: Any = (), seed: int = 0, **kw: Any) -> Any:
        calls.append(seed)
        return real_train(params, data, callbacks=[*callbacks, InterruptOnce()], seed=seed, **kw)

    def config(name: str, folder: Path) -> StudyConfig:
        folder.mkdir()
        return StudyConfig(
            strategy="random",
            study=name,
            storage=journal_url(folder),
            n_trials=1,
            space=SMALL_MODEL,
            eval_seeds=3,
            max_epochs=3,
            checkpoint_interval=0,
            devices=("cpu",),
        )

    InterruptOnce.fired = True  # the uninterrupted reference
    reference = run_study(config("whole", tmp_path / "whole"), train=train, data=data).study.trials[0]
    InterruptOnce.fired, calls[:] = False, []
    cfg = config("cut", tmp_path / "cut")
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, train=train, data=data)
    assert calls == [0, 1]
    interrupted = load_study(cfg.storage, "cut").trials[0]
    assert interrupted.state == TrialState.FAIL and internal_attr(interrupted, CHECKPOINT_ATTR)["epoch"] == 2
    calls.clear()
    result = run_study(cfg, train=train, data=data)
    assert calls == [1, 2]  # the first run is not trained again: its result was in the checkpoint
    resumed = result.study.get_trials(states=(TrialState.COMPLETE,))[0]
    assert resumed.user_attrs["resumed_from_epoch"] == 2
    assert resumed.user_attrs["eval_values"] == reference.user_attrs["eval_values"]  # bit for bit, on this CPU
    assert resumed.value == reference.value
    assert resumed.intermediate_values == reference.intermediate_values


# --- the record, the study file, the command line ----------------------------------------------------------------


def test_a_study_resumes_only_with_the_same_evaluation(tmp_path: Path) -> None:
    train = scripted_trainer(lambda p, s: 0.5)
    run_study(grid_of_two(tmp_path, "same", eval_seeds=2, n_trials=1), train=train, data=noise_splits())
    with pytest.raises(UserError, match="different eval seeds"):
        run_study(grid_of_two(tmp_path, "same", eval_seeds=3), train=train, data=noise_splits())
    with pytest.raises(UserError, match="different folds"):
        run_study(grid_of_two(tmp_path, "same", eval_seeds=2, folds=2), train=train, data=noise_splits())
    record = StudyRecord.from_attrs(load_study(journal_url(tmp_path), "same").user_attrs)
    assert record is not None and (record.eval_seeds, record.folds) == (2, 1)
    joined = StudyConfig.from_record(record, journal_url(tmp_path), "same")
    assert (joined.eval_seeds, joined.folds) == (2, 1)  # a worker that joins evaluates as the study does


def test_the_command_line_and_the_study_file_set_the_evaluation(
    tmp_path: Path, small_file: Path, fake_training: None
) -> None:
    store = f"sqlite:///{tmp_path / 'cli.db'}"
    result = invoke(
        "run",
        "--storage",
        store,
        "--data",
        small_file,
        "-n",
        "2",
        "--max-epochs",
        "2",
        "--eval-seeds",
        "3",
        "--folds",
        "2",
    )
    assert result.exit_code == 0, result.output
    trial = load_study(store, "random").trials[0]
    assert len(trial.user_attrs["eval_runs"]) == 6
    study_file = tmp_path / "study.toml"
    study_file.write_text(f'strategy = "random"\nn_trials = 1\nmax_epochs = 1\neval_seeds = 2\ndata = "{small_file}"\n')
    result = invoke("run", "--storage", store, "--study", "from-file", "--config", study_file)
    assert result.exit_code == 0, result.output
    assert len(load_study(store, "from-file").trials[0].user_attrs["eval_runs"]) == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--eval-seeds", "0"), "Invalid value for '--eval-seeds'"),
        (("--eval-seeds", "101"), "Invalid value for '--eval-seeds'"),
        (("--folds", "21"), "Invalid value for '--folds'"),
        (("--seed", str(2**32 - 1), "--eval-seeds", "2"), "seed + eval_seeds - 1 must be at most"),
    ],
)
def test_bad_evaluation_settings_are_refused_in_one_line(tmp_path: Path, args: tuple[str, ...], message: str) -> None:
    store = tmp_path / "refused.db"
    assert_refused(invoke("run", "--storage", f"sqlite:///{store}", "-n", "1", *args), message)
    assert not store.exists()


def test_a_study_file_with_bad_evaluation_settings_is_refused(tmp_path: Path) -> None:
    study_file = tmp_path / "study.toml"
    study_file.write_text("n_trials = 1\nfolds = 1.5\n")
    assert_refused(invoke("run", "--config", study_file), "folds must be a int")
    study_file.write_text("n_trials = 1\nfolds = 25\n")
    assert_refused(
        invoke("run", "--config", study_file, "--storage", f"sqlite:///{tmp_path / 'x.db'}"), "folds must be 1"
    )


def test_a_cross_validated_trials_model_is_its_first_folds_and_retraining_rebuilds_it(tmp_path: Path) -> None:
    """The weights a cross-validated trial keeps are its first run's, trained on fold 0's training part: `compare`
    and `export` retrain on that same part (not on the study's train split) and get the same weights."""
    from hpo_astro.results.evaluate import retrain_trial

    data = noise_splits(64)
    cfg = StudyConfig(
        strategy="random",
        study="cv",
        storage=journal_url(tmp_path),
        n_trials=1,
        space=SMALL_MODEL,
        folds=2,
        max_epochs=2,
        devices=("cpu",),
    )
    study = run_study(cfg, data=data).study
    (trial,) = study.trials
    saved = study.user_attrs["best_weights"]
    kept = torch.load(tmp_path / "optuna.log.artifacts" / saved["artifact_id"], weights_only=True)
    rebuilt = retrain_trial(study, trial, data).state_dict()
    assert kept.keys() == rebuilt.keys()
    assert all(torch.equal(kept[k], rebuilt[k]) for k in kept)
    plain = real_train(params_full(trial), data, max_epochs=2, seed=0).model.state_dict()
    assert not all(torch.equal(kept[k], plain[k]) for k in kept)  # the study's own split gives another model
