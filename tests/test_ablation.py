"""AblationSampler: the paper's 47 perturbations, greedy coordinate descent, resume, two processes."""

from __future__ import annotations

import multiprocessing
from collections import Counter
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from hpo_astro.samplers import AblationSampler
from hpo_astro.samplers.ablation import CONFIG_KEY, EXHAUSTED_KEY, SLOT_KEY
from hpo_astro.space import DEFAULT_PARAMS, PAPER_SPACE

optuna.logging.set_verbosity(optuna.logging.ERROR)


def _score(params: dict) -> float:
    """A deterministic stand-in for validation accuracy: prefers the *last* value of every hyperparameter."""
    return sum(PAPER_SPACE[n].index(v) / len(PAPER_SPACE[n]) for n, v in params.items())


def _objective(trial: optuna.Trial) -> float:
    if trial.study._storage.get_trial_system_attrs(trial._trial_id).get(EXHAUSTED_KEY):
        raise RuntimeError("surplus")  # what hpo_astro's objective does: nothing left to evaluate
    return _score({n: trial.suggest_categorical(n, list(v)) for n, v in PAPER_SPACE.items()})


def _expected_perturbations(baseline: dict) -> Counter:
    return Counter(
        tuple(sorted({**baseline, name: value}.items())) for name, values in PAPER_SPACE.items() for value in values
    )


def _complete_configs(study: optuna.Study) -> Counter:
    return Counter(tuple(sorted(t.params.items())) for t in study.get_trials(states=(TrialState.COMPLETE,)))


def test_the_paper_space_gives_exactly_47_perturbations_then_stops() -> None:
    sampler = AblationSampler(PAPER_SPACE, baseline=DEFAULT_PARAMS)
    assert sampler.n_slots == 47
    study = optuna.create_study(sampler=sampler, direction="maximize")
    study.optimize(_objective, n_trials=100)  # stops by itself
    assert len(study.trials) == 47
    configs = _complete_configs(study)
    assert configs == _expected_perturbations(DEFAULT_PARAMS)
    assert configs[tuple(sorted(DEFAULT_PARAMS.items()))] == 12  # the baseline repeats, as in the paper
    assert sorted(t.system_attrs[SLOT_KEY] for t in study.trials) == list(range(47))


def test_baseline_is_drawn_with_the_seed() -> None:
    a = AblationSampler(PAPER_SPACE, seed=1).baseline
    assert a == AblationSampler(PAPER_SPACE, seed=1).baseline
    assert a != AblationSampler(PAPER_SPACE, seed=2).baseline
    assert all(a[n] in PAPER_SPACE[n] for n in PAPER_SPACE)
    partial = AblationSampler(PAPER_SPACE, baseline={"lr": 1e-4}, seed=1).baseline
    assert partial["lr"] == 1e-4 and partial["conv_layers"] == a["conv_layers"]
    with pytest.raises(ValueError, match="not among its values"):
        AblationSampler(PAPER_SPACE, baseline={"lr": 0.5})


def test_greedy_mode_adopts_the_best_value_of_each_sweep() -> None:
    sampler = AblationSampler(PAPER_SPACE, baseline=DEFAULT_PARAMS, greedy=True)
    study = optuna.create_study(sampler=sampler, direction="maximize")
    study.optimize(_objective, n_trials=100)
    trials = sorted(study.trials, key=lambda t: t.system_attrs[SLOT_KEY])
    assert len(trials) == 47 and all(t.state == TrialState.COMPLETE for t in trials)
    names = list(PAPER_SPACE)
    best = {n: PAPER_SPACE[n][-1] for n in names}  # _score prefers the last value
    for t in trials:
        sweep = _sweep_of(t, sampler)
        assert (
            t.params[names[sweep]]
            == PAPER_SPACE[names[sweep]][t.system_attrs[SLOT_KEY] - sampler._sweep_slots[sweep][0]]
        )
        for earlier in names[:sweep]:
            assert t.params[earlier] == best[earlier], (t.number, earlier)
        for later in names[sweep + 1 :]:
            assert t.params[later] == DEFAULT_PARAMS[later], (t.number, later)
    assert study.best_trial.params == {**DEFAULT_PARAMS, **best}  # coordinate descent reaches the optimum here


def _sweep_of(trial: optuna.trial.FrozenTrial, sampler: AblationSampler) -> int:
    return sampler._slots[trial.system_attrs[SLOT_KEY]][0]


def test_greedy_minimisation_picks_the_lowest() -> None:
    sampler = AblationSampler({"a": [1, 2, 3], "b": [1, 2]}, baseline={"a": 2, "b": 2}, greedy=True)
    study = optuna.create_study(sampler=sampler, direction="minimize")
    study.optimize(
        lambda t: t.suggest_categorical("a", [1, 2, 3]) * 10 + t.suggest_categorical("b", [1, 2]), n_trials=20
    )
    assert [t.params for t in study.trials] == [
        {"a": 1, "b": 2},
        {"a": 2, "b": 2},
        {"a": 3, "b": 2},  # sweep a from the baseline
        {"a": 1, "b": 1},
        {"a": 1, "b": 2},  # sweep b with a's best value adopted
    ]


@pytest.mark.parametrize("greedy", [False, True])
def test_interrupted_and_resumed_with_a_new_sampler(tmp_path: Path, greedy: bool) -> None:
    storage = f"sqlite:///{tmp_path / 'a.db'}"
    calls = {"n": 0}

    def flaky(trial: optuna.Trial) -> float:
        calls["n"] += 1
        if calls["n"] in (5, 6, 20):
            raise RuntimeError("simulated crash")  # the trial fails and releases its slot
        return _objective(trial)

    first = optuna.create_study(
        study_name="s",
        storage=storage,
        direction="maximize",
        sampler=AblationSampler(PAPER_SPACE, baseline=DEFAULT_PARAMS, greedy=greedy),
    )
    first.optimize(flaky, n_trials=25, catch=(RuntimeError,))
    assert len(first.get_trials(states=(TrialState.COMPLETE,))) == 22
    # a later run: new process, new sampler object, same study in the store
    second = optuna.load_study(
        study_name="s", storage=storage, sampler=AblationSampler(PAPER_SPACE, baseline=DEFAULT_PARAMS, greedy=greedy)
    )
    second.optimize(_objective, n_trials=100)
    complete = second.get_trials(states=(TrialState.COMPLETE,))
    assert sorted(t.system_attrs[SLOT_KEY] for t in complete) == list(range(47))  # none twice, none skipped
    assert len(second.get_trials(states=(TrialState.FAIL,))) == 3
    if not greedy:
        assert _complete_configs(second) == _expected_perturbations(DEFAULT_PARAMS)


def _worker(storage: str, n_trials: int) -> None:
    import os
    import time

    optuna.logging.set_verbosity(optuna.logging.ERROR)

    def slow(trial: optuna.Trial) -> float:
        trial.set_user_attr("pid", os.getpid())
        value = _objective(trial)
        time.sleep(0.02)
        return value

    study = optuna.load_study(
        study_name="s", storage=storage, sampler=AblationSampler(PAPER_SPACE, baseline=DEFAULT_PARAMS)
    )
    study.optimize(slow, n_trials=n_trials, catch=(RuntimeError,))


def test_two_processes_share_the_plan_without_duplicates(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    optuna.create_study(
        study_name="s",
        storage=optuna.storages.RDBStorage(storage, engine_kwargs={"connect_args": {"timeout": 60}}),
        direction="maximize",
    )
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_worker, args=(storage, 40)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
        assert p.exitcode == 0
    study = optuna.load_study(study_name="s", storage=storage)
    complete = study.get_trials(states=(TrialState.COMPLETE,))
    slots = [t.system_attrs[SLOT_KEY] for t in complete]
    assert sorted(slots) == list(range(47)), Counter(slots).most_common(3)
    assert _complete_configs(study) == _expected_perturbations(DEFAULT_PARAMS)
    assert len({t.user_attrs["pid"] for t in complete}) == 2  # both processes did share the work
    assert not study.get_trials(states=(TrialState.RUNNING,))
    others = [t for t in study.trials if t.state != TrialState.COMPLETE]
    assert all(t.system_attrs.get(EXHAUSTED_KEY) for t in others)  # only surplus trials may fail


def test_slot_config_is_recorded() -> None:
    sampler = AblationSampler({"a": [1, 2], "b": ["x", "y"]}, baseline={"a": 1, "b": "x"})
    study = optuna.create_study(sampler=sampler)
    study.optimize(lambda t: float(t.suggest_categorical("a", [1, 2])), n_trials=4)
    # parameter "b" is never suggested by this objective; the plan still records full configurations
    assert [t.system_attrs[CONFIG_KEY] for t in study.trials] == [
        {"a": 1, "b": "x"},
        {"a": 2, "b": "x"},
        {"a": 1, "b": "x"},
        {"a": 1, "b": "y"},
    ]
