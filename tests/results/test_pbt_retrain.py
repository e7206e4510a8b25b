"""A PBT trial's model is the result of its member's schedule, not of one configuration: when its kept weights are
gone, `compare` and `export` retrain it from the schedule (`retrain_trial`) and reproduce the trial's recorded
validation metrics, bit for bit on the same device."""

from __future__ import annotations

import json
from pathlib import Path

from helpers import invoke, journal_url, load_study

from hpo_astro.results import evaluate
from hpo_astro.results.export import load_exported

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


def test_a_pbt_trial_without_its_weights_is_retrained_from_its_schedule(tmp_path: Path, small_file: Path) -> None:
    config = tmp_path / "pbt.toml"
    config.write_text(STUDY_FILE)
    store = journal_url(tmp_path)
    result = invoke("run", "--config", config, "--data", small_file, "--storage", store, "--study", "p")
    assert result.exit_code == 0, result.output
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
