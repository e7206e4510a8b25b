"""AblationSampler: the paper's 47 perturbations, greedy coordinate descent, resume, two processes, and its contract
with Optuna (distributions, multi-objective studies, enqueued, lost and surplus trials, ask and tell, NaN values)."""

from __future__ import annotations

import math
import multiprocessing
import threading
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import optuna
import pytest
import sqlalchemy
from ablation_objective import objective, worker
from helpers import patience
from optuna.trial import TrialState

from hpo_astro.core.hyperparameters import DEFAULT_PARAMS, PAPER_SPACE
from hpo_astro.samplers import AblationSampler
from hpo_astro.samplers.ablation import CONFIG_KEY, EXHAUSTED_KEY, SLOT_KEY

optuna.logging.set_verbosity(optuna.logging.ERROR)


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
    study.optimize(objective, n_trials=100)  # stops by itself
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
    study.optimize(objective, n_trials=100)
    trials = sorted(study.trials, key=lambda t: t.system_attrs[SLOT_KEY])
    assert len(trials) == 47 and all(t.state == TrialState.COMPLETE for t in trials)
    names = list(PAPER_SPACE)
    best = {n: PAPER_SPACE[n][-1] for n in names}  # score prefers the last value
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
    # A journal file: a store that outlives the sampler object, ~5x faster per trial than SQLite (whose concurrency
    # the two-process test below covers).
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(tmp_path / "a.log")))
    calls = {"n": 0}

    def flaky(trial: optuna.Trial) -> float:
        calls["n"] += 1
        if calls["n"] in (5, 6, 20):
            raise RuntimeError("simulated crash")  # the trial fails and releases its slot
        return objective(trial)

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
    second.optimize(objective, n_trials=100)
    complete = second.get_trials(states=(TrialState.COMPLETE,))
    assert sorted(t.system_attrs[SLOT_KEY] for t in complete) == list(range(47))  # none twice, none skipped
    assert len(second.get_trials(states=(TrialState.FAIL,))) == 3
    if not greedy:
        assert _complete_configs(second) == _expected_perturbations(DEFAULT_PARAMS)


def test_two_processes_share_the_plan_without_duplicates(tmp_path: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    optuna.create_study(
        study_name="s",
        storage=optuna.storages.RDBStorage(storage, engine_kwargs={"connect_args": {"timeout": 60}}),
        direction="maximize",
    )
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=worker, args=(storage, 40)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=patience(240))
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


# --- the sampler's contract with Optuna (see the AblationSampler docstring) ----------------------------------------

SMALL = {"a": [1, 2, 3], "b": [1, 2]}
SMALL_BASELINE = {"a": 2, "b": 2}


def _small(trial: optuna.Trial) -> float:
    return trial.suggest_categorical("a", [1, 2, 3]) * 10 + trial.suggest_categorical("b", [1, 2])


def _attrs(study: optuna.Study, trial: optuna.Trial | optuna.trial.FrozenTrial) -> dict:
    return study._storage.get_trial_system_attrs(trial._trial_id)


def test_a_planned_value_outside_theobjectives_distribution_is_refused() -> None:
    study = optuna.create_study(sampler=AblationSampler({"x": [0.15, 0.5]}, baseline={"x": 0.15}))
    with pytest.raises(ValueError, match=r"x=0\.5, .*FloatDistribution\(.*low=0\.1"):
        study.optimize(lambda t: t.suggest_float("x", 0.1, 0.2), n_trials=2)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL]
    assert study.trials[1].params == {}  # never evaluated with the out-of-range value


def test_a_planned_value_takes_the_type_of_theobjectives_distribution() -> None:
    seen: list[object] = []

    def objective(trial: optuna.Trial) -> float:
        seen.extend([trial.suggest_float("x", 0, 5), trial.suggest_int("n", 0, 5)])
        return 0.0

    study = optuna.create_study(sampler=AblationSampler({"x": [1], "n": [3.0]}))
    study.optimize(objective, n_trials=1)
    assert seen == [1.0, 3] and [type(v) for v in seen] == [float, int]


def test_multiobjective_studies_run_the_plan_without_greedy() -> None:
    study = optuna.create_study(
        directions=["minimize", "maximize"], sampler=AblationSampler(SMALL, baseline=SMALL_BASELINE)
    )
    study.optimize(lambda t: (_small(t), 0.0), n_trials=10)
    assert sorted(_attrs(study, t)[SLOT_KEY] for t in study.trials) == list(range(5))
    assert all(t.state == TrialState.COMPLETE for t in study.trials)


def test_greedy_refuses_a_multiobjective_study_at_its_first_suggestion() -> None:
    study = optuna.create_study(
        directions=["minimize", "maximize"], sampler=AblationSampler(SMALL, baseline=SMALL_BASELINE, greedy=True)
    )
    with pytest.raises(ValueError, match="greedy=True needs a single-objective study"):
        study.optimize(lambda t: (_small(t), 0.0), n_trials=3)
    assert [t.state for t in study.trials] == [TrialState.FAIL]  # failed, not left running


def test_an_enqueued_trial_takes_no_slot_and_makes_no_other_trial_wait() -> None:
    study = optuna.create_study(
        sampler=AblationSampler(SMALL, baseline=SMALL_BASELINE, wait_timeout=1.0, poll_interval=0.02)
    )
    study.enqueue_trial({"a": 3, "b": 1})
    enqueued = study.ask()  # still being evaluated (by another worker, say)
    start = time.monotonic()
    trial = study.ask()
    assert time.monotonic() - start < 0.5
    assert SLOT_KEY not in _attrs(study, enqueued) and _attrs(study, trial)[SLOT_KEY] == 0


def test_a_partially_enqueued_trial_takes_its_other_values_from_the_current_baseline() -> None:
    study = optuna.create_study(sampler=AblationSampler(SMALL, baseline=SMALL_BASELINE, greedy=True))
    study.optimize(_small, n_trials=3)  # sweep a: a=1 is best and adopted
    study.enqueue_trial({"b": 1})
    study.optimize(_small, n_trials=1)
    assert study.trials[-1].params == {"a": 1, "b": 1}
    study.optimize(_small, n_trials=10)  # the enqueued trial took no slot: sweep b runs in full
    assert len(study.trials) == 6
    assert sorted(_attrs(study, t)[SLOT_KEY] for t in study.trials if SLOT_KEY in _attrs(study, t)) == list(range(5))


def test_a_trial_left_running_holds_its_slot_until_lost_after_says_it_is_lost() -> None:
    study = optuna.create_study(sampler=AblationSampler(SMALL, baseline=SMALL_BASELINE))
    lost = study.ask()  # slot 0, never told
    with pytest.warns(UserWarning, match=r"slot 0 is held by running trial 0"):
        study.optimize(_small, n_trials=10)  # the other slots, then one surplus trial, then it stops
    surplus = study.trials[-1]
    assert len(study.trials) == 6 and surplus.state == TrialState.PRUNED and _attrs(study, surplus)[EXHAUSTED_KEY]
    assert not study.sampler.is_exhausted(study)
    study.sampler = AblationSampler(SMALL, baseline=SMALL_BASELINE, lost_after=0.0)
    with pytest.warns(UserWarning, match=r"trial 6 evaluates slot 0 again: its trials \[0\] .* presumed lost"):
        study.optimize(_small, n_trials=10)  # slot 0's holder is presumed lost: slot 0 is evaluated again
    assert study.sampler.is_exhausted(study)
    assert study.trials[-1].params == {"a": 1, "b": 2} and _attrs(study, study.trials[-1])[SLOT_KEY] == 0
    assert study.trials[lost.number].state == TrialState.RUNNING


def _in_a_thread(function: Callable[[], object], seconds: float) -> list[warnings.WarningMessage]:
    """Run `function`, failing the test (instead of hanging it) when it does not return in time; its warnings."""
    caught: list[warnings.WarningMessage] = []

    def run() -> None:
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            function()
        caught.extend(records)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), "it hangs"
    return caught


def _optimize_in_a_thread(study: optuna.Study, seconds: float) -> list[warnings.WarningMessage]:
    return _in_a_thread(lambda: study.optimize(_small, n_trials=20), seconds)


def test_greedy_waits_for_a_running_trial_of_an_earlier_sweep_only_until_wait_timeout() -> None:
    sampler = AblationSampler(SMALL, baseline=SMALL_BASELINE, greedy=True, wait_timeout=0.3, poll_interval=0.02)
    study = optuna.create_study(sampler=sampler)
    study.ask()  # slot 0 (sweep a), never told: sweep b cannot start before it finishes
    start = time.monotonic()
    caught = _optimize_in_a_thread(study, 5)
    assert time.monotonic() - start >= 0.3
    assert any("waited" in str(w.message) and "(running trial 0)" in str(w.message) for w in caught)
    assert [_attrs(study, t).get(SLOT_KEY) for t in study.trials] == [0, 1, 2, None]  # sweep a, then a surplus
    assert _attrs(study, study.trials[-1])[EXHAUSTED_KEY] and study.trials[-1].state == TrialState.PRUNED


def test_greedy_re_evaluates_the_slot_of_a_lost_trial() -> None:
    sampler = AblationSampler(SMALL, baseline=SMALL_BASELINE, greedy=True, lost_after=0.0)
    study = optuna.create_study(sampler=sampler)
    study.ask()
    caught = _optimize_in_a_thread(study, 5)
    assert any("evaluates slot 0 again" in str(w.message) for w in caught)
    assert sampler.is_exhausted(study)
    assert [_attrs(study, t)[SLOT_KEY] for t in study.trials] == [0, 1, 2, 0, 3, 4]
    assert study.trials[-1].params == {"a": 1, "b": 2}  # sweep b from a's best (minimised), slot 0's value


def test_greedy_frees_the_slot_of_a_trial_whose_heartbeat_stopped(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # heartbeat_interval is experimental; ask() with a heartbeat warns: both known
        storage = optuna.storages.RDBStorage(f"sqlite:///{tmp_path / 'hb.db'}", heartbeat_interval=1, grace_period=1)
        sampler = AblationSampler(SMALL, baseline=SMALL_BASELINE, greedy=True, wait_timeout=10, poll_interval=0.05)
        study = optuna.create_study(storage=storage, sampler=sampler)
        dead = study.ask()  # slot 0
        storage.record_heartbeat(dead._trial_id)
        with storage.engine.begin() as connection:  # its process beat once, an hour ago, then died
            connection.execute(sqlalchemy.text("UPDATE trial_heartbeats SET heartbeat = datetime('now', '-1 hour')"))
        for _ in range(2):  # slots 1 and 2: sweep a, which does not wait
            trial = study.ask()
            study.tell(trial, _small(trial))
        asked: list[optuna.Trial] = []
        # Sweep b waits for slot 0: its trial is failed while waiting (not after wait_timeout), freeing slot 0.
        _in_a_thread(lambda: asked.append(study.ask()), 5)
    assert study.trials[dead.number].state == TrialState.FAIL
    assert _attrs(study, asked[0])[SLOT_KEY] == 0


def test_a_trial_that_never_recorded_its_choice_is_waited_for_once() -> None:
    sampler = AblationSampler(SMALL, baseline=SMALL_BASELINE, wait_timeout=0.5, poll_interval=0.02)
    study = optuna.create_study(sampler=sampler)
    study._storage.create_new_trial(study._study_id)  # running, never seen by the sampler (its process died)
    durations = []
    for _ in range(2):
        start = time.monotonic()
        study.ask()
        durations.append(time.monotonic() - start)
    assert durations[0] >= 0.5 and durations[1] < 0.25


def test_a_finished_plan_evaluates_nothing_again() -> None:
    evaluated: list[dict] = []

    def objective(trial: optuna.Trial) -> float:
        value = _small(trial)
        evaluated.append(trial.params)
        return value

    study = optuna.create_study(sampler=AblationSampler(SMALL, baseline=SMALL_BASELINE))
    study.optimize(objective, n_trials=10)
    study.optimize(objective, n_trials=10)  # a re-run of a finished study
    assert len(evaluated) == 5 and len(study.trials) == 6
    surplus = study.trials[-1]
    assert surplus.state == TrialState.PRUNED and surplus.params == {} and _attrs(study, surplus)[EXHAUSTED_KEY]


def test_ask_and_tell_to_the_end_of_the_plan_and_beyond() -> None:
    sampler = AblationSampler(SMALL, baseline=SMALL_BASELINE)
    study = optuna.create_study(sampler=sampler)
    for _ in range(5):
        trial = study.ask()
        study.tell(trial, _small(trial))  # the last tell must not raise from study.stop()
    assert sampler.is_exhausted(study)
    trial = study.ask()
    with pytest.raises(optuna.TrialPruned, match="plan"):
        _small(trial)
    study.tell(trial, state=TrialState.PRUNED)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 5


def test_a_nan_value_advances_the_plan_on_sqlite(tmp_path: Path) -> None:
    nan = float("nan")
    sampler = AblationSampler({"x": [1.0, nan]}, baseline={"x": 1.0})
    study = optuna.create_study(storage=f"sqlite:///{tmp_path / 'nan.db'}", sampler=sampler)
    study.optimize(lambda t: float(math.isnan(t.suggest_categorical("x", [1.0, nan]))), n_trials=5)
    assert [t.value for t in study.trials] == [0.0, 1.0]  # each slot once, then the study stops


def test_a_nan_baseline_is_found_among_its_values() -> None:
    assert math.isnan(AblationSampler({"x": [1.0, float("nan")]}, baseline={"x": float("nan")}).baseline["x"])


def test_plan_values_are_those_a_json_store_gives_back() -> None:
    sampler = AblationSampler({"x": [np.int64(3), np.float64(0.5)]})
    assert [type(v) for v in sampler._values["x"]] == [int, float]  # NumPy scalars would not survive the store
    with pytest.raises(TypeError, match=r"'x': value \(1, 2\)"):
        AblationSampler({"x": [(1, 2)]})  # read back as a list, it would never match the plan again


def test_a_retry_keeps_its_trials_slot_or_lack_of_one() -> None:
    study = optuna.create_study(sampler=AblationSampler({"a": [1, 2]}, baseline={"a": 1}))
    first, second = study.ask(), study.ask()
    with pytest.warns(UserWarning, match="finds no free slot"):
        surplus = study.ask()
    for trial in (first, surplus):
        study.tell(trial, state=TrialState.FAIL)  # slot 0 is free again
    for trial in (first, surplus):  # queued again with their system attributes, as RetryFailedTrialCallback does
        study.add_trial(optuna.trial.create_trial(state=TrialState.WAITING, system_attrs=_attrs(study, trial)))
    retried_first, retried_surplus = study.ask(), study.ask()
    with pytest.warns(UserWarning, match="slot 0 is held by running trial 3; slot 1 is held by running trial 1"):
        new = study.ask()
    assert _attrs(study, retried_first)[SLOT_KEY] == 0 and _attrs(study, second)[SLOT_KEY] == 1
    assert SLOT_KEY not in _attrs(study, retried_surplus) and _attrs(study, retried_surplus)[EXHAUSTED_KEY]
    assert _attrs(study, new)[EXHAUSTED_KEY]  # slots 0 and 1 are held
