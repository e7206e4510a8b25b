"""Multi-objective studies (`--objective accuracy,params`): one value per objective, the cost objectives measured
(parameter count, MACs and FLOPs of one forward pass, latency per cutout), the Pareto front as Optuna keeps it, the
front's weights kept, and what cannot run one refused with the reason."""

from __future__ import annotations

import math
from pathlib import Path

import optuna
import pytest
import torch
from helpers import assert_refused, invoke, journal_url, load_study, study_config
from optuna.trial import TrialState

from hpo_astro.core.cost import measure_cost
from hpo_astro.core.hyperparameters import DEFAULT_PARAMS
from hpo_astro.core.model import parameter_count
from hpo_astro.core.space import SearchSpace
from hpo_astro.errors import UserError
from hpo_astro.results.dashboard import study_note
from hpo_astro.store.record import COST_ATTR, WEIGHTS_ATTR, params_full
from hpo_astro.study.config import StudyConfig
from hpo_astro.study.objectives import parse_objectives
from hpo_astro.study.run import run_study
from hpo_astro.tabular import TableReplay, load_table, table_data

# One conv block (16 filters of 3x3 over a 64x64 plane, "same" padding) and one linear layer over the 16x32x32 pooled
# map: 64*64*16*9 + 16*32*32 multiply-accumulates, 16*9 + 16 + 16*32*32 + 1 parameters.
TINY = {"conv_layers": [1], "conv_kernel_size": [3], "fc_layers": [1], "lr": [1e-3, 1e-2]}
TINY_MACS = 64 * 64 * 16 * 9 + 16 * 32 * 32
TINY_PARAMS = 16 * 9 + 16 + 16 * 32 * 32 + 1


def test_the_cost_of_a_configuration_is_counted_by_hand() -> None:
    params = {**DEFAULT_PARAMS, "conv_layers": 1, "conv_kernel_size": 3, "fc_layers": 1}
    cost = measure_cost(params, in_channels=1, latency_batch=4)
    assert (cost.macs, cost.flops, cost.n_params) == (TINY_MACS, 2 * TINY_MACS, TINY_PARAMS)
    assert cost.n_params == parameter_count(params, 1) and cost.latency_batch == 4
    assert 0 < cost.latency_us < 1e6 and cost.device == "cpu"
    # timed on one thread whatever the process's own count (a worker's share, or all cores), which stays as it was
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert measure_cost(params, in_channels=1, latency_batch=4).latency_threads == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    wider = measure_cost({**params, "conv_layers": 2}, in_channels=1, latency=False)
    assert wider.macs > cost.macs and math.isnan(wider.latency_us)


@pytest.mark.parametrize(
    ("objective", "message"),
    [
        ("f1", "unknown objective 'f1'; known: accuracy, loss"),
        ("accuracy,accuracy", "names one objective twice"),
        ("params,latency", "has no validation metric"),
        ("accuracy,", "names joined by commas"),
        ("accuracy,loss,roc_auc,params,macs", "at most 4 objectives"),
    ],
)
def test_a_bad_objective_list_is_one_line(objective: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_objectives(objective)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--strategy", "cmaes"], "strategy 'cmaes' cannot run a multi-objective study: CMA-ES optimises one"),
        (["--strategy", "bohb"], "Optuna does not prune multi-objective trials (use tpe)"),
        (["--pruner", "median"], "pruner 'median' cannot run a multi-objective study"),
        (["--objective", "accuracy,latency", "--max-epochs", "1", "--strategy", "tpe", "--objective", "loss,f1"], "f1"),
    ],
)
def test_what_cannot_run_a_multi_objective_study_is_refused_before_the_store(
    args: list[str], message: str, tmp_path: Path, small_file: Path
) -> None:
    store = journal_url(tmp_path)
    result = invoke("run", "--objective", "accuracy,params", "-n", 2, "--data", small_file, "--storage", store, *args)
    assert_refused(result, message)
    assert not (tmp_path / "optuna.log").exists()


def test_greedy_ablation_is_refused_for_several_objectives_and_plain_ablation_runs(tmp_path: Path) -> None:
    settings = {"strategy": "ablation", "objective": "accuracy,params", "n_trials": 2, "storage": journal_url(tmp_path)}
    with pytest.raises(UserError, match="a multi-objective study has a front of them, not one best"):
        StudyConfig(**settings, greedy=True).validate()
    assert StudyConfig(**settings).validate().directions == ["maximize", "minimize"]


def test_a_two_objective_table_study_finds_the_known_pareto_front(tmp_path: Path, small_file: Path) -> None:
    """Every configuration of a small grid replayed from the shipped table: each trial's values are its replayed
    accuracy and its parameter count by formula, and the study's front is exactly the configurations no other beats
    on both (worked out here by plain comparison)."""
    table = load_table("astro-small")
    space = SearchSpace.from_dict(
        {"conv_layers": [1, 2, 3, 4], "lr": [1e-2, 1e-3], "dropout_rate": [0.1], "weight_decay": [1e-4]}
    )
    cfg = study_config(
        tmp_path, small_file, strategy="grid", objective="accuracy,params", space=space, n_trials=8,
        max_epochs=table.max_epochs, split=tuple(table.info["split"]),
    )  # fmt: skip
    study = run_study(cfg, train=TableReplay(table), data=table_data(table)).study
    assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
    assert study.metric_names == ["val_accuracy", "n_params"]
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 8 and not any(t.intermediate_values for t in trials)  # Optuna takes no reports here
    replay = TableReplay(table)
    points = {}
    for trial in trials:
        params = params_full(trial)
        accuracy = replay(params, seed=cfg.seed, max_epochs=cfg.max_epochs).val_metrics.accuracy
        assert trial.values == [pytest.approx(accuracy), parameter_count(params, 1)]
        assert trial.user_attrs[COST_ATTR]["n_params"] == parameter_count(params, 1)
        points[trial.number] = (accuracy, parameter_count(params, 1))
    front = {
        n for n, (acc, size) in points.items()
        if not any(a >= acc and s <= size and (a > acc or s < size) for a, s in points.values())
    }  # fmt: skip
    assert 1 <= len(front) < 8
    assert {t.number for t in study.best_trials} == front
    assert not any(WEIGHTS_ATTR in t.user_attrs for t in trials)  # a replay trains no weights to keep


def test_the_cli_measures_each_cost_objective_the_same_way_for_every_trial(
    tmp_path: Path, small_file: Path, fake_training: None
) -> None:
    store = journal_url(tmp_path)
    config = tmp_path / "tiny.toml"
    config.write_text(
        "latency_batch = 8\n[space]\n" + "\n".join(f"{k} = {v!r}" for k, v in TINY.items()).replace("'", '"') + "\n"
    )
    result = invoke(
        "run", "--config", config, "--objective", "accuracy, macs,flops,latency", "-n", 2, "--data", small_file,
        "--storage", store,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "accuracy maximized, macs minimized, flops minimized, latency minimized" in result.output
    assert "Pareto front of" in result.output
    study = load_study(store, "random")
    assert study.user_attrs["objective"] == "accuracy,macs,flops,latency"  # as recorded: no spaces
    assert study.user_attrs["latency_batch"] == 8
    for trial in study.get_trials(states=(TrialState.COMPLETE,)):
        _, macs, flops, latency = trial.values
        assert (macs, flops) == (TINY_MACS, 2 * TINY_MACS) and latency > 0
        cost = trial.user_attrs[COST_ATTR]
        assert cost["latency_us"] == latency and cost["latency_batch"] == 8


def test_a_trained_multi_objective_study_keeps_the_weights_of_its_front(tmp_path: Path, small_file: Path) -> None:
    space = SearchSpace.from_dict({**TINY, "conv_layers": [1, 2]})
    cfg = study_config(tmp_path, small_file, objective="loss,params", space=space, n_trials=3, max_epochs=2)
    study = run_study(cfg, train=None).study
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 3
    for trial in trials:
        history = [k for k in trial.user_attrs if k.startswith("curve_")]
        assert history and not trial.intermediate_values  # curves recorded, nothing reported to Optuna
        assert trial.values[0] == pytest.approx(trial.user_attrs["val_metrics"]["loss"])
    note = study_note(study, ["run"], "hpo-astro", tmp_path, cfg.storage)
    assert "(loss minimized, params minimized)" in note and "Its result is a Pareto front" in note
    assert "intermediate values" not in note  # Optuna takes none from a multi-objective trial
    front = {t.number for t in study.best_trials}
    kept = {t.number for t in trials if WEIGHTS_ATTR in t.user_attrs}
    assert front <= kept  # a trial dominated as it finished stays dominated: the front's weights are all there
    for trial in trials:
        if trial.number in kept:
            ids = {a.artifact_id for a in optuna.artifacts.get_all_artifact_meta(trial, storage=study._storage)}
            assert trial.user_attrs[WEIGHTS_ATTR] in ids


def test_a_multi_objective_study_resumes_and_extends_with_the_same_command(
    tmp_path: Path, small_file: Path, fake_training: None
) -> None:
    store = journal_url(tmp_path)
    base = ["run", "--objective", "roc_auc,params", "--data", small_file, "--storage", store, "--strategy", "tpe"]
    assert invoke(*base, "-n", 2).exit_code == 0
    again = invoke(*base, "-n", 4)
    assert again.exit_code == 0, again.output
    assert len(load_study(store, "tpe").get_trials(states=(TrialState.COMPLETE,))) == 4
    other = invoke(*base[:2], "roc_auc,macs", *base[3:], "-n", 5)
    assert_refused(other, "was made with a different objective (roc_auc,params vs roc_auc,macs)")
    confirm = invoke("confirm", "--study", "tpe", "--storage", store)
    assert_refused(confirm, "study 'tpe' has several objectives: confirm ranks one value per configuration")


@pytest.mark.parametrize("strategy", ["random", "tpe", "genetic", "bayesian", "qmc", "grid", "ablation"])
def test_every_strategy_that_takes_several_objectives_runs_them(
    strategy: str, tmp_path: Path, small_file: Path, fake_training: None
) -> None:
    store = journal_url(tmp_path)
    config = tmp_path / "space.toml"
    config.write_text("[space]\nconv_layers = [1, 2]\nlr = [1e-3, 1e-2]\n")
    result = invoke(
        "run", "--config", config, "--strategy", strategy, "--objective", "accuracy,params", "-n", 3, "--data",
        small_file, "--storage", store,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    study = load_study(store, strategy)
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 3 and all(len(t.values) == 2 for t in trials)
    assert all(t.values[1] == parameter_count(params_full(t), 1) for t in trials)
    assert {t.number for t in study.best_trials} <= {t.number for t in trials}


def test_an_interrupted_multi_objective_study_resumes_its_trial_and_ends_with_the_budget(
    tmp_path: Path, small_file: Path
) -> None:
    """Ctrl-C in a trial's third epoch: the same run again retries that trial from its checkpoint, and the study ends
    with exactly its budget, every trial with one value per objective."""
    from hpo_astro.core.train import train

    interrupted: list[int] = []

    def interrupting(params, data, callbacks=(), **kwargs):  # type: ignore[no-untyped-def]
        class Stop:
            def on_epoch_end(self, state) -> None:  # type: ignore[no-untyped-def]
                if state.epoch == 2 and not interrupted:
                    interrupted.append(state.epoch)
                    raise KeyboardInterrupt

        return train(params, data, callbacks=[*callbacks, Stop()], **kwargs)

    space = SearchSpace.from_dict({**TINY, "conv_layers": [1, 2]})
    cfg = study_config(
        tmp_path, small_file, objective="accuracy,params", space=space, n_trials=2, max_epochs=3, checkpoint_interval=0
    )
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, train=interrupting)
    study = run_study(cfg, train=interrupting).study
    trials = study.get_trials(states=(TrialState.COMPLETE,))
    assert len(trials) == 2 and all(len(t.values) == 2 for t in trials)
    resumed = [t for t in trials if t.system_attrs.get("retry_history")]
    assert len(resumed) == 1 and resumed[0].user_attrs["resumed_from_epoch"] == 2
    assert len(resumed[0].user_attrs["curve_val_loss"]) == 3  # its whole run, the checkpointed epochs included
    assert not study.get_trials(states=(TrialState.RUNNING, TrialState.WAITING))


def test_only_a_trial_on_the_front_as_it_finishes_keeps_its_weights(tmp_path: Path) -> None:
    """Accuracy maximised, parameters minimised, against a finished trial at (0.80, 1000): a trial at (0.85, 1000)
    is on the front and keeps its weights; one at (0.75, 1000) is dominated and keeps none (with the accuracy's
    direction flipped, the two would swap)."""
    import torch

    from hpo_astro.study.pareto import keep_if_on_front

    study = optuna.create_study(directions=["maximize", "minimize"])
    study.add_trial(optuna.trial.create_trial(values=[0.80, 1000.0]))
    store = optuna.artifacts.FileSystemArtifactStore(str(tmp_path / "artifacts"))
    (tmp_path / "artifacts").mkdir()
    weights = {"w": torch.zeros(2)}
    kept = {}
    for values in ([0.85, 1000.0], [0.75, 1000.0]):
        trial = study.ask()
        keep_if_on_front(trial, values, weights, store)
        kept[values[0]] = trial.user_attrs.get(WEIGHTS_ATTR)
        study.tell(trial, values)
    assert kept[0.75] is None and isinstance(kept[0.85], str)
    assert (tmp_path / "artifacts" / kept[0.85]).is_file()


def test_a_metric_that_could_not_be_measured_is_the_worst_value_not_a_number_that_passes_for_one() -> None:
    from hpo_astro.study.pareto import objective_values

    objectives = parse_objectives("accuracy,loss,roc_auc")
    values = objective_values(objectives, {"accuracy": 0.7, "loss": math.nan, "roc_auc": math.nan}, None)
    assert values == [0.7, math.inf, -math.inf]


@pytest.mark.parametrize("directions", [["minimize", "minimize"], ["minimize"]])
def test_an_empty_study_of_other_directions_another_program_made_is_refused_untouched(
    directions: list[str], tmp_path: Path, small_file: Path
) -> None:
    store = journal_url(tmp_path)
    optuna.create_study(study_name="theirs", storage=optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(tmp_path / "optuna.log"))), directions=directions)  # fmt: skip
    for objective in ("accuracy", "accuracy,params"):
        result = invoke("run", "--study", "theirs", "--objective", objective, "-n", 1, "--data", small_file,
                        "--storage", store)  # fmt: skip
        assert_refused(result, "study 'theirs' in the store optimises")
    assert load_study(store, "theirs").user_attrs == {}  # nothing written to it


def test_latency_is_refused_on_devices_of_two_kinds() -> None:
    from hpo_astro.study.objectives import check_latency_devices

    with pytest.raises(UserError, match="--devices cpu,cuda:0 mixes kinds"):
        check_latency_devices(parse_objectives("accuracy,latency"), ("cpu", "cuda:0"))
    check_latency_devices(parse_objectives("accuracy,latency"), ("cuda:0", "cuda:1"))
    check_latency_devices(parse_objectives("accuracy,params"), ("cpu", "cuda:0"))  # no timing: any devices
