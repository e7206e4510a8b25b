"""Population-based training with the real trainer, through the command line: an exploiting member continues its
parent's run (its curves begin with the parent's), its new learning rate is in effect in the optimiser at the
scheduler's position, and `status` and `report` show the budget in member-epochs and the lineage."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
from helpers import assert_refused, invoke, journal_url, load_study
from optuna.trial import TrialState

from hpo_astro.study.pbt_plan import lineage

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


def test_a_real_population_exploits_explores_and_is_reported(tmp_path: Path, small_file: Path) -> None:
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
