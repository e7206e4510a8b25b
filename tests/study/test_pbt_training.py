"""Population-based training with the real trainer: two segments of 2 epochs are the uninterrupted 4-epoch run; after
an exploit the continued run keeps the optimiser's moments and step and takes the new learning rate (at the cosine
schedule's position, for every later epoch), weight decay and dropout rate; and, through the command line, an
exploiting member continues its parent's run (its curves begin with the parent's) and `status` and `report` show the
budget in member-epochs and the lineage."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from helpers import assert_refused, invoke, journal_url, load_study, noise_splits
from optuna.trial import TrialState

from hpo_astro.core.hyperparameters import DEFAULT_PARAMS
from hpo_astro.core.train import TrainState, train
from hpo_astro.results import evaluate
from hpo_astro.results.export import load_exported
from hpo_astro.study.pbt_lineage import lineage
from hpo_astro.study.pbt_plan import SegmentEnd, continue_with, load_state, retrain, train_segment

PARAMS = {
    **DEFAULT_PARAMS, "conv_layers": 1, "fc_layers": 2, "fc_width": 16, "batch_size": 16, "t_max": 10,
    "dropout_rate": 0.3,
}  # fmt: skip


def _curves(history: list[Any]) -> list[dict[str, Any]]:
    return [{k: v for k, v in h.as_dict().items() if k != "seconds"} for h in history]


def _first_segment() -> tuple[Any, bytes]:
    end = SegmentEnd(2)
    result = train_segment(train, PARAMS, noise_splits(64), [end], 2, 3, None, "cpu")
    assert end.saved is not None
    return result, end.saved


def test_two_segments_of_two_epochs_are_the_four_epoch_run() -> None:
    torch.set_num_threads(1)
    whole = train(PARAMS, noise_splits(64), max_epochs=4, seed=3, device="cpu", early_stopping=False)
    _, saved = _first_segment()
    second = train_segment(train, PARAMS, noise_splits(64), [], 4, 3, continue_with(load_state(saved), PARAMS), "cpu")
    assert _curves(second.history) == _curves(whole.history)
    assert all(torch.equal(v, second.model.state_dict()[k]) for k, v in whole.model.state_dict().items())
    schedule = [{"epochs": [0, 2], "params": PARAMS}, {"epochs": [2, 4], "params": PARAMS}]
    again = retrain(schedule, noise_splits(64), seed=3, device="cpu")
    assert _curves(again.history) == _curves(whole.history)


class _Spy:
    """What the optimiser and the model hold at the end of each epoch."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []

    def on_epoch_end(self, state: TrainState) -> None:
        group = state.optimizer.param_groups[0]
        moments = list(state.optimizer.state.values())
        self.seen.append({
            "epoch": state.epoch, "lr": state.last.lr, "weight_decay": group["weight_decay"],
            "dropout": {m.p for m in state.model.modules() if isinstance(m, torch.nn.Dropout)},
            "step": float(moments[0]["step"]), "exp_avg": moments[0]["exp_avg"].clone(),
        })  # fmt: skip


def test_an_exploit_continues_the_optimiser_with_the_new_hyperparameters() -> None:
    """After continue_with: Adam's moments and step are the checkpoint's (a dropped optimiser state restarts them),
    epochs 3 and 4 run with the new lr at the cosine position (the old scheduler would bring the old lr back at
    its next step), and the new weight decay and dropout rate are in effect."""
    torch.set_num_threads(1)
    first = _Spy()
    end = SegmentEnd(2)
    train_segment(train, PARAMS, noise_splits(64), [first, end], 2, 3, None, "cpu")
    assert end.saved is not None
    new = {**PARAMS, "lr": PARAMS["lr"] * 1.2, "weight_decay": PARAMS["weight_decay"] * 0.8, "dropout_rate": 0.5}
    checkpoint = load_state(end.saved)
    continued = continue_with(checkpoint, new)
    saved_moments = next(iter(checkpoint["optimizer"]["state"].values()))
    assert torch.equal(next(iter(continued["optimizer"]["state"].values()))["exp_avg"], saved_moments["exp_avg"])
    second = _Spy()
    train_segment(train, new, noise_splits(64), [second], 4, 3, continued, "cpu")
    steps_per_epoch = first.seen[0]["step"]
    assert [s["step"] for s in second.seen] == [3 * steps_per_epoch, 4 * steps_per_epoch]
    assert not torch.equal(second.seen[0]["exp_avg"], first.seen[0]["exp_avg"])  # moved on from epoch 2's
    for seen in second.seen:
        position = (1 + math.cos(math.pi * (seen["epoch"] - 1) / PARAMS["t_max"])) / 2
        assert seen["lr"] == pytest.approx(new["lr"] * position, rel=1e-6)
        assert seen["weight_decay"] == pytest.approx(new["weight_decay"])
        assert seen["dropout"] == {0.5}
    assert [s["dropout"] for s in first.seen] == [{0.3}, {0.3}]


STUDY_FILE = """
strategy = "pbt"
n_trials = 6
population_size = 3
ready = 1
pbt_quantile = 0.34
[space]
conv_layers = [1]
fc_layers = [1]
batch_size = [64]
t_max = [10]
lr = {low = 1e-3, high = 1e-1, log = true}
weight_decay = [1e-4, 1e-3]
dropout_rate = [0.0, 0.1, 0.2]
"""


def test_a_real_population_exploits_explores_is_reported_and_retrains_from_its_schedules(
    tmp_path: Path, small_file: Path
) -> None:
    config = tmp_path / "pbt.toml"
    config.write_text(STUDY_FILE)
    store = journal_url(tmp_path)
    result = invoke("run", "--config", config, "--data", small_file, "--storage", store, "--study", "p")
    assert result.exit_code == 0, result.output
    study = load_study(store, "p")
    trials = {t.number: t for t in study.get_trials(states=(TrialState.COMPLETE,))}
    rows = lineage(study)
    assert len(trials) == 6 and [(r["generation"], r["member"]) for r in rows] == [
        (g, m) for g in (0, 1) for m in (0, 1, 2)
    ]
    exploiters = [r for r in rows if r["exploited_from"] is not None]
    assert len(exploiters) == 1  # the bottom third of three members
    for row in rows:
        trial = trials[row["trial"]]
        schedule = trial.user_attrs["pbt_schedule"]
        lrs = trial.user_attrs["curve_lr"]
        assert len(lrs) == row["generation"] + 1 == len(schedule)  # the member's whole run: its parent's epochs too
        for epoch, (segment, lr) in enumerate(zip(schedule, lrs, strict=True)):
            # The optimiser ran epoch e with the segment's learning rate at the cosine schedule's position e (t_max 10)
            assert segment["epochs"] == [epoch, epoch + 1]
            assert lr == pytest.approx(segment["lr"] * (1 + math.cos(math.pi * epoch / 10)) / 2, rel=1e-3)
        if row["parent"] is not None:
            parent = trials[row["parent"]]
            assert lrs[:-1] == parent.user_attrs["curve_lr"]  # it continued the parent's run
            assert trial.user_attrs["curve_val_loss"][:-1] == parent.user_attrs["curve_val_loss"]
    child = trials[exploiters[0]["trial"]]
    parent = trials[exploiters[0]["exploited_from"]]
    assert child.user_attrs["pbt_schedule"][0] == parent.user_attrs["pbt_schedule"][0]
    assert child.user_attrs["pbt_schedule"][1]["lr"] == pytest.approx(
        parent.user_attrs["pbt_schedule"][0]["lr"] * 0.8
    ) or (child.user_attrs["pbt_schedule"][1]["lr"] == pytest.approx(parent.user_attrs["pbt_schedule"][0]["lr"] * 1.2))
    # Its model is the result of the member's schedule, not of one configuration: with its kept weights gone,
    # `compare` and `export` retrain it from the schedule (`retrain_trial`) and reproduce its validation metrics.
    study = load_study(store, "p")
    best = study.best_trial
    kept = evaluate.load_trial_model(study, best)
    assert kept is not None  # PbtObjective keeps the best member's best-epoch weights, as every strategy
    data = evaluate.study_data(study)
    assert evaluate.model_digest(evaluate.retrain_trial(study, best, data)) == evaluate.model_digest(kept)

    # A member that exploited another: its first segment is the other member's, with other hyperparameters than its
    # own; retrained from its schedule it ends as the trial did (its recorded validation metrics), from its own
    # configuration alone it would not
    exploiter = next(t for t in study.trials if t.user_attrs.get("pbt_exploited_from") is not None)
    schedule = exploiter.user_attrs["pbt_schedule"]
    assert len(schedule) == 2 and schedule[0]["lr"] != schedule[1]["lr"]
    model = evaluate.retrain_trial(study, exploiter, data)
    assert evaluate.evaluate_model(model, data, exploiter, "retrained", 0.0).reproduced is True
    from hpo_astro.core.train import train
    from hpo_astro.store.record import params_full

    alone = train(params_full(exploiter), data, max_epochs=2, seed=exploiter.user_attrs["train_seed"]).model
    assert evaluate.evaluate_model(alone, data, exploiter, "retrained", 0.0).reproduced is False

    directory = Path(study.user_attrs["artifacts"])
    (directory / study.user_attrs["best_weights"]["artifact_id"]).unlink()  # the kept weights are gone
    assert evaluate.load_trial_model(study, best, store) is None
    compared = invoke("compare", "--storage", store, "--study", "p", "--format", "json")
    assert compared.exit_code == 0 and "retraining best trial" in compared.stderr, compared.output
    row = json.loads(compared.stdout)["studies"][0]
    assert row["model_source"] == "retrained" and row["reproduced"] is True
    exported = invoke("export", "--storage", store, "--study", "p", "--out", tmp_path / "model")
    assert exported.exit_code == 0, exported.output
    model, manifest = load_exported(tmp_path / "model")
    assert evaluate.model_digest(model) == evaluate.model_digest(kept) and manifest["study"]["trial"] == best.number

    status = invoke("status", "--storage", store)
    assert (
        "p (population-based training): budget 6 trials = 6 member-epochs (3 members x 2 generations x 1 epochs)"
        in (status.output.replace("\n", " "))
    )
    report = invoke("report", "--storage", store, "--out", tmp_path / "report")
    assert report.exit_code == 0, report.output
    page = (tmp_path / "report" / "study-p.html").read_text()
    assert "Population-based training: lineage" in page and "exploit" in page
    confirm = invoke("confirm", "--study", "p", "--storage", store)
    assert_refused(confirm, "study 'p' is population-based training: its models come from hyperparameter schedules")
