"""Studies end to end: every strategy through the CLI, exact budgets on resume, Ctrl-C, pruning, objectives,
refusing mismatched or bad input with the store untouched, and `status`."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
from helpers import assert_refused, fake_train, invoke
from optuna.trial import TrialState

from hpo_astro import objective as objective_module
from hpo_astro import run as run_module
from hpo_astro.config import StudyConfig, load_config
from hpo_astro.run import RunEvents, run_study
from hpo_astro.space import SearchSpace
from hpo_astro.strategies import STRATEGIES, make_pruner
from hpo_astro.train import TrainState

SMALL_SPACE = {"conv_layers": [1, 2], "fc_width": [32, 64], "lr": [1e-3, 1e-2], "activation": ["ReLU", "GELU"]}


def _store(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'optuna.db'}"


def _grid_config(tmp_path: Path) -> Path:
    path = tmp_path / "grid.toml"
    path.write_text('strategy = "grid"\n[space]\nconv_layers = [1, 2]\nlr = [1e-3, 1e-2]\nfc_width = [32]\n')
    return path


def _cfg(tmp_path: Path, small_file: Path, **kw: object) -> StudyConfig:
    base = {"storage": _store(tmp_path), "data": small_file, "max_epochs": 3, "n_trials": 4}
    return StudyConfig(**{**base, **kw})  # type: ignore[arg-type]


# --- every strategy through the CLI, real training ----------------------------------------------------------


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_each_strategy_runs_through_the_cli(strategy: str, tmp_path: Path, small_file: Path) -> None:
    store = _store(tmp_path)
    extra = ["--config", _grid_config(tmp_path)] if strategy == "grid" else ["--strategy", strategy]
    result = invoke("run", *extra, "--n-trials", 3, "--data", small_file, "--max-epochs", 1, "--storage", store)
    assert result.exit_code == 0, result.output
    assert "3/3 finished trials" in result.stdout
    study = optuna.load_study(study_name=strategy, storage=store)
    trials = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    assert len(trials) == 3 and len(study.trials) == 3
    for t in trials:
        assert len(t.user_attrs["history"]) == 1 and t.intermediate_values.keys() == {1}
        assert {"best_epoch", "wall_time", "n_params", "device", "val_metrics"} <= t.user_attrs.keys()
    attrs = study.user_attrs
    assert attrs["strategy"] == strategy and attrs["objective"] == "accuracy" and attrs["n_trials"] == 3
    assert len(attrs["data_fingerprint"]) == 16 and "hpo_astro_version" in attrs and "space" in attrs
    status = invoke("status", "--storage", store)
    assert status.exit_code == 0 and strategy in status.stdout and "best params of" in status.stdout


# --- samplers and budgets, with the fast stand-in ------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["random", "tpe", "genetic", "bayesian", "ablation", "grid"])
def test_same_seed_gives_the_same_configurations(strategy: str, tmp_path: Path, small_file: Path) -> None:
    space = SearchSpace.from_dict(SMALL_SPACE)

    def configs(seed: int, name: str) -> list[dict]:
        cfg = _cfg(
            tmp_path, small_file, strategy=strategy, seed=seed, study=name, n_trials=12, space=space, population_size=4
        )
        return [t.params for t in run_study(cfg, train=fake_train).study.trials]

    first, again, other = configs(0, "a"), configs(0, "b"), configs(1, "c")
    assert first == again
    assert first != other


def test_bayesian_fits_a_gaussian_process_after_startup(tmp_path: Path, small_file: Path) -> None:
    from hpo_astro.strategies import make_sampler

    cfg = _cfg(tmp_path, small_file, strategy="bayesian", n_trials=13, space=SearchSpace.from_dict(SMALL_SPACE))
    sampler = make_sampler(cfg)
    assert isinstance(sampler.inner, optuna.samplers.GPSampler)
    original = run_module.make_sampler
    run_module.make_sampler = lambda _cfg: sampler
    try:
        run_study(cfg, train=fake_train)
    finally:
        run_module.make_sampler = original
    assert sampler.inner._gprs_cache_list is not None  # the GP surrogate was fitted for trials 11-13


def test_genetic_population_size_is_used(tmp_path: Path, small_file: Path) -> None:
    from hpo_astro.strategies import make_sampler

    sampler = make_sampler(_cfg(tmp_path, small_file, strategy="genetic", population_size=7))
    assert isinstance(sampler.inner, optuna.samplers.NSGAIISampler) and sampler.inner._population_size == 7


def test_grid_refuses_the_full_paper_space(tmp_path: Path, small_file: Path) -> None:
    result = invoke("run", "--strategy", "grid", "--n-trials", 3, "--data", small_file, "--storage", _store(tmp_path))
    assert_refused(result, "narrow [space]")
    assert not (tmp_path / "optuna.db").exists()


def test_ablation_stops_at_its_plan(tmp_path: Path, small_file: Path) -> None:
    space = SearchSpace.from_dict(SMALL_SPACE)  # 2+2+2+2 = 8 slots
    result = run_study(_cfg(tmp_path, small_file, strategy="ablation", n_trials=50, space=space), train=fake_train)
    assert result.target == 8 and result.finished == 8 and len(result.study.trials) == 8


def test_a_trial_that_finds_the_budget_taken_is_marked_surplus(tmp_path: Path, small_file: Path) -> None:
    """The second trial of a study whose budget (1) is already taken fails as surplus, recorded as data on the trial
    (the run loop does not count it as a failure of the configuration); its reason stays readable."""
    from hpo_astro.data.prepare import load_splits
    from hpo_astro.storage import artifact_store

    cfg = _cfg(tmp_path, small_file, space=SearchSpace.from_dict(SMALL_SPACE))
    objective = objective_module.Objective(
        cfg, load_splits(small_file), target=1, store=artifact_store(tmp_path / "a"), train=fake_train
    )
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(objective, n_trials=2, catch=(Exception,))
    done, surplus = study.trials
    assert done.state == TrialState.COMPLETE and objective_module.SURPLUS_ATTR not in done.user_attrs
    assert surplus.state == TrialState.FAIL and surplus.user_attrs[objective_module.SURPLUS_ATTR] is True
    assert surplus.user_attrs["fail_reason"] == "_SurplusTrial: the budget of 1 trials is already taken by other trials"


def test_interrupted_run_resumes_to_exactly_n(tmp_path: Path, small_file: Path) -> None:
    cfg = _cfg(tmp_path, small_file, n_trials=5)

    def interrupt(number: int, state: TrainState) -> None:
        if number == 2 and state.epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, RunEvents(on_epoch=interrupt), train=fake_train)
    study = optuna.load_study(study_name="random", storage=cfg.storage)
    # never left RUNNING: failed, and re-queued with its parameters and its epoch-1 checkpoint
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2 + [TrialState.FAIL, TrialState.WAITING]
    interrupted, queued = study.trials[2], study.trials[3]
    assert queued.params == interrupted.params and queued.user_attrs["checkpoint"]["epoch"] == 1
    result = run_study(cfg, train=fake_train)
    assert result.finished == 5 and result.ran == 3
    retried = result.study.trials[3]
    assert retried.state == TrialState.COMPLETE and retried.user_attrs["resumed_from_epoch"] == 1
    assert sorted(retried.intermediate_values) == [1, 2, 3] and len(retried.user_attrs["history"]) == 3
    again = run_study(cfg, train=fake_train)
    assert again.finished == 5 and again.ran == 0  # never overshoots
    assert len(again.study.get_trials(states=(TrialState.COMPLETE,))) == 5


def test_budget_can_be_extended(tmp_path: Path, small_file: Path) -> None:
    run_study(_cfg(tmp_path, small_file, n_trials=2), train=fake_train)
    result = run_study(_cfg(tmp_path, small_file, n_trials=4), train=fake_train)
    assert result.finished == 4 and result.study.user_attrs["n_trials"] == 4


def _configs(study: optuna.Study) -> list[tuple]:
    """The configurations of a study's finished trials, in trial order."""
    finished = study.get_trials(states=(TrialState.COMPLETE, TrialState.PRUNED))
    return [tuple(sorted(t.params.items())) for t in finished]


@pytest.mark.parametrize("strategy", ["random", "tpe", "genetic", "bayesian"])
def test_a_resumed_study_continues_the_search_instead_of_repeating_it(
    strategy: str, tmp_path: Path, small_file: Path
) -> None:
    """`run -n 1`, then `-n 2`, `-n 3`, `-n 4`: each process starts from the same seed, yet proposes new
    configurations, the very ones one uninterrupted `-n 4` run proposes (one worker: reproducible)."""
    for n in (1, 2, 3, 4):
        stepped = run_study(
            _cfg(tmp_path, small_file, strategy=strategy, study="stepped", n_trials=n), train=fake_train
        ).study
    whole = run_study(_cfg(tmp_path, small_file, strategy=strategy, study="whole", n_trials=4), train=fake_train).study
    assert len(set(_configs(stepped))) == 4  # the paper space: four draws never collide by chance here
    assert _configs(stepped) == _configs(whole)


def test_an_interrupted_random_study_resumes_with_the_uninterrupted_configurations(
    tmp_path: Path, small_file: Path
) -> None:
    """SIGTERM/Ctrl-C mid-trial twice, resuming each time: the finished trials are the same configurations, in the
    same order, as a run that was never interrupted; none is repeated."""
    cfg = _cfg(tmp_path, small_file, study="interrupted", n_trials=5)
    for when in (1, 3):

        def interrupt(number: int, state: TrainState, when: int = when) -> None:
            if number == when and state.epoch == 2:
                raise KeyboardInterrupt

        with pytest.raises(KeyboardInterrupt):
            run_study(cfg, RunEvents(on_epoch=interrupt), train=fake_train)
    interrupted = run_study(cfg, train=fake_train).study
    whole = run_study(_cfg(tmp_path, small_file, study="whole", n_trials=5), train=fake_train).study
    assert len(set(_configs(interrupted))) == 5
    assert _configs(interrupted) == _configs(whole)


def test_trial_seeds_follow_the_study_not_the_process() -> None:
    from hpo_astro.samplers.trial_seeded import TrialSeededSampler, derive_seed

    study = optuna.create_study(sampler=TrialSeededSampler(lambda s: optuna.samplers.RandomSampler(seed=s), seed=3))
    study.enqueue_trial({"x": 0.5})  # fixed parameters: not a draw, so it takes no seed index
    draws = []
    for _ in range(3):
        trial = study.ask()
        draws.append(trial.suggest_float("x", 0, 1))
        study.tell(trial, 0.0)
    expected = [optuna.samplers.RandomSampler(seed=derive_seed(3, k)) for k in range(2)]
    fresh = [optuna.create_study(sampler=s).ask().suggest_float("x", 0, 1) for s in expected]
    assert draws == [0.5, *fresh]
    assert derive_seed(3, 0) != derive_seed(3, 1) != derive_seed(4, 1)


# --- pruning --------------------------------------------------------------------------------------------------


def test_pruning_callback_prunes_and_keeps_the_metrics(tmp_path: Path, small_file: Path) -> None:
    """Real training under a pruner that must prune: accuracy is never above 2."""
    from hpo_astro.data.prepare import load_splits

    cfg = _cfg(tmp_path, small_file, max_epochs=4)
    from hpo_astro.storage import artifact_store

    objective = objective_module.Objective(
        cfg, load_splits(small_file), target=10, store=artifact_store(tmp_path / "a")
    )
    study = optuna.create_study(
        direction="maximize",
        pruner=optuna.pruners.ThresholdPruner(lower=2.0),
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    study.optimize(objective, n_trials=2)
    for t in study.trials:
        assert t.state == TrialState.PRUNED
        assert list(t.intermediate_values) == [1]  # stopped right after the first report
        assert len(t.user_attrs["history"]) == 1 and t.user_attrs["stop_reason"] == "pruned"
        assert "val_metrics" in t.user_attrs


@pytest.mark.parametrize("pruner", ["median", "hyperband", "successive-halving"])
def test_each_pruner_prunes_worse_trials(pruner: str, tmp_path: Path, small_file: Path) -> None:
    cfg = _cfg(tmp_path, small_file, pruner=pruner, n_trials=16, max_epochs=9, seed=3)
    result = run_study(cfg, train=fake_train)
    pruned = result.study.get_trials(states=(TrialState.PRUNED,))
    assert result.finished == 16 and pruned
    assert all(t.user_attrs["stop_reason"] == "pruned" for t in pruned)
    assert any(len(t.user_attrs["history"]) < 9 for t in pruned)  # stopped early, not only at the end


def test_pruner_none_never_prunes(tmp_path: Path, small_file: Path) -> None:
    result = run_study(_cfg(tmp_path, small_file, pruner="none", n_trials=12, max_epochs=9), train=fake_train)
    assert not result.study.get_trials(states=(TrialState.PRUNED,))


def test_pruner_factory() -> None:
    space = SearchSpace.paper()
    assert isinstance(make_pruner(StudyConfig(pruner="none")), optuna.pruners.NopPruner)
    assert isinstance(make_pruner(StudyConfig(pruner="median")), optuna.pruners.MedianPruner)
    hb = make_pruner(StudyConfig(pruner="hyperband", max_epochs=27, space=space))
    assert isinstance(hb, optuna.pruners.HyperbandPruner) and hb._max_resource == 27
    assert isinstance(make_pruner(StudyConfig(pruner="successive-halving")), optuna.pruners.SuccessiveHalvingPruner)


# --- objectives -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("objective", "direction", "metric"),
    [("accuracy", "MAXIMIZE", "accuracy"), ("loss", "MINIMIZE", "loss"), ("roc_auc", "MAXIMIZE", "roc_auc")],
)
def test_objectives(objective: str, direction: str, metric: str, tmp_path: Path, small_file: Path) -> None:
    result = run_study(_cfg(tmp_path, small_file, objective=objective, n_trials=2, max_epochs=1))
    assert result.study.direction.name == direction
    for t in result.study.trials:
        assert t.value == pytest.approx(t.user_attrs["val_metrics"][metric])
        assert t.intermediate_values[1] == pytest.approx(t.user_attrs["history"][0][f"val_{metric}"])


# --- Ctrl-C through the real command ------------------------------------------------------------------------


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
    ]
    env = {**os.environ, "HPO_ASTRO_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until a trial is running, then interrupt it
        if db.exists() and _count(db, "RUNNING") > 0:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "resume with: hpo-astro run --strategy random --n-trials 3" in err
    assert "Traceback" not in err  # an interrupt is not an error
    assert _count(db, "RUNNING") == 0 and _count(db, "FAIL") == 1
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    assert _count(db, "COMPLETE") + _count(db, "PRUNED") == 3 and _count(db, "RUNNING") == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_while_a_checkpoint_is_written_stops_the_run(
    sig: signal.Signals, tmp_path: Path, small_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signal landing inside `torch.save` used to come out of its zip writer as a RuntimeError: the trial was
    recorded as an ordinary failure and the run carried on (exit 0), the signal lost. It must stop the run with the
    checkpoint whole, the trial failed and re-queued, and the same call must then finish the budget from it."""
    import tempfile

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
    monkeypatch.setattr(objective_module.tempfile, "TemporaryFile", SignalOnSecondCheckpoint)
    cfg = _cfg(tmp_path, small_file, n_trials=2, max_epochs=4, space=SearchSpace.from_dict({"conv_layers": [1]}))
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg)
    assert fired
    monkeypatch.undo()
    study = optuna.load_study(study_name=cfg.study_name, storage=cfg.storage)
    (failed,) = study.get_trials(states=(TrialState.FAIL,))
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING]  # failed and re-queued
    assert failed.user_attrs["checkpoint"]["epoch"] == 2  # the checkpoint being written when the signal came
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

    monkeypatch.setattr(run_module, "make_sampler", lambda cfg: SignalWhileChoosing(seed=0))
    cfg = _cfg(tmp_path, small_file, n_trials=3, space=SearchSpace.from_dict(SMALL_SPACE))
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, train=fake_train)
    study = optuna.load_study(study_name=cfg.study_name, storage=cfg.storage)
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.WAITING]
    assert study.trials[2].params == study.trials[1].params  # chosen in full, then re-queued
    assert "fail_reason" not in study.trials[1].user_attrs  # an interrupt, not an error
    heartbeats = [t for t in threading.enumerate() if "heartbeat" in str(getattr(t, "_target", "")).lower()]
    assert not heartbeats
    monkeypatch.undo()
    assert run_study(cfg, train=fake_train).finished == 3


def _count(db: Path, state: str) -> int:
    with sqlite3.connect(db) as con:
        try:
            return con.execute("SELECT COUNT(*) FROM trials WHERE state = ?", (state,)).fetchone()[0]
        except sqlite3.OperationalError:
            return 0  # tables not created yet


# --- refusing mismatched studies and bad input ----------------------------------------------------------------


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "absent"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--objective", "loss"], "different objective"),
        (["--strategy", "tpe", "--study", "random"], "different strategy"),
        (["--channels", "diff,scorr"], "different data fingerprint"),
    ],
)
def test_a_mismatched_study_is_refused(
    change: list[str], message: str, tmp_path: Path, small_file: Path, fake_training: None
) -> None:
    store = _store(tmp_path)
    base = ["run", "--n-trials", 1, "--data", small_file, "--max-epochs", 1, "--storage", store]
    assert invoke(*base, "--strategy", "random").exit_code == 0
    before = _digest(tmp_path / "optuna.db")
    args = list(change) if "--strategy" in change else ["--strategy", "random", *change]
    result = invoke(*base, *args)
    assert_refused(result, message)
    assert _digest(tmp_path / "optuna.db") == before


@pytest.mark.parametrize("written", [0, 1, 3, 8])
def test_a_study_interrupted_while_its_configuration_is_written_resumes(
    written: int, tmp_path: Path, small_file: Path, fake_training: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C after `written` of the study's attributes are committed: the half-written study is not "a different
    study": `worker` says how to finish it, and re-running the same command completes and runs it."""
    store = _store(tmp_path)
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
    study = optuna.load_study(study_name="random", storage=store)
    assert len(study.user_attrs) == written and not study.trials
    expected = "interrupted while being created" if written else "no recorded configuration"
    assert_refused(invoke("worker", "--study", "random", "--storage", store), expected)
    again = invoke(*args)
    assert again.exit_code == 0, again.output
    assert "2/2 finished trials" in again.stdout
    assert invoke(*args).exit_code == 0  # and the completed study is recognised as the same one


def test_a_foreign_study_with_trials_is_not_adopted(tmp_path: Path, small_file: Path) -> None:
    store = _store(tmp_path)
    foreign = optuna.create_study(study_name="random", storage=store, direction="maximize")
    foreign.set_user_attr("owner", "someone else")
    foreign.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    result = invoke("run", "--n-trials", 3, "--data", small_file, "--max-epochs", 1, "--storage", store)
    assert_refused(result, "no hpo-astro configuration")
    after = optuna.load_study(study_name="random", storage=store)
    assert after.user_attrs == {"owner": "someone else"} and len(after.trials) == 2


BAD_CONFIGS = {
    "unknown key": ('strategy = "random"\nn_trails = 3\n', "unknown key(s) n_trails"),
    "unknown hyperparameter": ("[space]\ndepth = [1, 2]\n", "unknown hyperparameter 'depth'"),
    "empty values": ("[space]\nlr = []\n", "empty list of values"),
    "bad value": ('[space]\nactivation = ["swish"]\n', "unknown value 'swish'"),
    "bad toml": ("strategy = \n", "invalid TOML"),
    "bad type": ('n_trials = "ten"\n', "n_trials must be a int"),
    "bad baseline": ('strategy = "ablation"\n[baseline]\nlr = 0.5\n', "lr=0.5 is outside the search space"),
    "negative lr": ("[space]\nlr = [-1.0]\n", "lr = -1.0 is out of range"),
    "zero batch": ("[space]\nbatch_size = [0, 64]\n", "batch_size = 0 is out of range"),
    "dropout above 1": ("[space]\ndropout_rate = [1.5]\n", "dropout_rate = 1.5 is out of range"),
    "too many conv layers": ("[space]\nconv_layers = [9]\n", "conv_layers = 9 is out of range"),
    "fractional batch": ("[space]\nbatch_size = [16.5]\n", "must be a whole number"),
    "nan lr": ("[space]\nlr = [nan]\n", "not a finite number"),
    "negative seed": ("seed = -1\n", "seed must be between 0 and 4294967295"),
    "huge seed": ("seed = 1099511627776\n", "seed must be between 0 and 4294967295"),
}


@pytest.mark.parametrize("kind", list(BAD_CONFIGS))
def test_bad_study_files(kind: str, tmp_path: Path, small_file: Path) -> None:
    text, message = BAD_CONFIGS[kind]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = invoke("run", "--config", path, "--n-trials", 2, "--data", small_file, "--storage", _store(tmp_path))
    assert_refused(result, message)
    assert not (tmp_path / "optuna.db").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--strategy", "annealing"], "unknown strategy 'annealing'"),
        (["--pruner", "early"], "unknown pruner 'early'"),
        (["--objective", "f1"], "unknown objective 'f1'"),
        (["--n-trials", "0"], "--n-trials must be positive"),
        (["--n-trials", "-3"], "--n-trials must be positive"),
        (["--config", "missing.toml"], "study file not found"),
        (["--seed", "-1"], "seed must be between 0 and"),
        (["--seed", str(2**40)], "seed must be between 0 and"),
        (["--channels", ""], "--channels needs at least one name"),
        (["--storage", "not a url"], "malformed storage URL"),
        (["--storage", "sqlite:///{tmp}/no/such/dir/x.db"], "storage directory does not exist"),
        (["--storage", "sqlite:///{tmp}/file.txt/x.db"], "storage directory does not exist"),
        (["--storage", "postgresql://user@127.0.0.1:1/db"], "cannot open storage|needs a database driver"),
        (["--storage", "sqlite:////proc/optuna.db"], "cannot open storage|not writable"),
    ],
)
def test_bad_run_options(args: list[str], message: str, tmp_path: Path, small_file: Path) -> None:
    (tmp_path / "file.txt").write_text("x")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--n-trials" not in args:
        args += ["--n-trials", "2"]
    if "--strategy" not in args:
        args += ["--strategy", "random"]
    result = invoke(
        "run",
        *args,
        "--data",
        small_file,
        "--max-epochs",
        1,
        *([] if "--storage" in args else ["--storage", _store(tmp_path)]),
    )
    assert_refused(result, re.compile(message))
    assert not (tmp_path / "optuna.db").exists()


def test_status_of_an_empty_or_missing_study(tmp_path: Path) -> None:
    store = _store(tmp_path)
    empty = invoke("status", "--storage", store)
    assert empty.exit_code == 0 and "no studies" in empty.stdout
    missing = invoke("status", "--storage", store, "--study", "nope")
    assert_refused(missing, "no study named 'nope'")
    assert not (tmp_path / "optuna.db").exists()  # a status query never creates the store


def test_paper_study_files_load() -> None:
    root = Path(__file__).resolve().parents[1] / "studies"
    expected = {
        "paper-random": ("random", 100),
        "paper-ablation": ("ablation", 47),
        "paper-genetic": ("genetic", 100),
        "paper-bayesian": ("bayesian", 100),
    }
    for name, (strategy, n) in expected.items():
        cfg = load_config(root / f"{name}.toml").validate()
        assert (cfg.strategy, cfg.n_trials, cfg.study_name) == (strategy, n, name)
        assert cfg.space == SearchSpace.paper()
    assert load_config(root / "paper-genetic.toml").population_size == 10


def test_every_config_field_can_be_set_in_a_study_file(tmp_path: Path) -> None:
    path = tmp_path / "all.toml"
    path.write_text(
        'strategy = "ablation"\nn_trials = 5\nstudy = "s"\nstorage = "sqlite:///x.db"\ngreedy = true\n'
        'population_size = 4\npruner = "median"\nobjective = "loss"\nseed = 3\ndata = "d.npy"\n'
        'channels = ["sci", "scorr"]\nmax_epochs = 2\nheartbeat_interval = 2\ngrace_period = 7\n'
        'artifacts = "arts"\nworkers = 3\n[baseline]\nlr = 1e-2\n[space]\nlr = [1e-2, 1e-3]\n'
    )
    cfg = load_config(path).validate()
    import dataclasses

    assert {f.name for f in dataclasses.fields(StudyConfig)} == {
        "strategy",
        "n_trials",
        "study",
        "storage",
        "greedy",
        "population_size",
        "pruner",
        "objective",
        "seed",
        "data",
        "channels",
        "max_epochs",
        "heartbeat_interval",
        "grace_period",
        "artifacts",
        "workers",
        "baseline",
        "space",
    }
    assert (cfg.heartbeat_interval, cfg.grace_period, cfg.workers, cfg.artifacts) == (2, 7, 3, Path("arts"))
    assert cfg.channels == ("sci", "scorr") and cfg.data == Path("d.npy") and cfg.baseline == {"lr": 1e-2}


def test_a_non_finite_metric_is_the_worst_value_never_the_best() -> None:
    from hpo_astro.objective import finite_metric

    assert finite_metric(float("nan"), maximize=True) == 0.0
    assert finite_metric(float("nan"), maximize=False) == 1e9
    assert finite_metric(float("inf"), maximize=False) == 1e9
    assert finite_metric(0.93, maximize=True) == 0.93
