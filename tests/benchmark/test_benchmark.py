"""`hpo-astro benchmark`: repeated, paired studies per strategy and the report's statistics, each checked on a case
with a known answer (identical strategies are not different; a strategy on a better table, or one that knows the
best configuration, is significantly better), plus resuming, re-rendering without running, every option and the
refusals. Tabular mode on a 48-configuration table built here; training mode on a tiny space and data set."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import optuna
import pytest
from helpers import assert_refused, invoke
from optuna.distributions import BaseDistribution
from optuna.samplers import BaseSampler

from hpo_astro.benchmark import BenchmarkSpec, run_benchmark
from hpo_astro.benchmark.analysis import analyze
from hpo_astro.benchmark.collect import StudyRun, TrialRecord
from hpo_astro.benchmark.plan import Arm
from hpo_astro.benchmark.runner import StudyOutcome
from hpo_astro.core.space import SearchSpace
from hpo_astro.core.train import EpochMetrics
from hpo_astro.store.record import WALL_TIME_ATTR
from hpo_astro.study import strategies as strategies_module
from hpo_astro.study.run import run_study
from hpo_astro.tabular import TEST_METRICS_ATTR, Table, TableReplay, TableRow

SPACE = {"conv_layers": [1, 2, 3, 4], "lr": [0.1, 0.01, 0.001, 0.0001], "activation": ["ReLU", "GELU", "Tanh"]}
EPOCHS = 4


def quality(conv: int, lr: float, activation: str) -> float:
    """The table's final validation accuracy before noise: more layers, lr near 3e-3 and GELU are better."""
    return 0.6 + 0.05 * conv - 0.1 * abs(math.log10(lr) + 2.5) + (activation == "GELU") * 0.03


def make_table(
    name: str = "tiny", shift: float = 0.0, noise: float = 0.02, seeds: int = 1, noise_seed: int = 0
) -> Table:
    """48 configurations, 4 epochs each; epoch seconds 0.5 x conv_layers; test accuracy = validation - 0.02 + noise.
    `shift` adds the same amount to every validation and test metric (a uniformly better table). `seeds` > 1: that
    many runs of each configuration, each with its own noise (training noise, as a `tabulate --seeds` table has)."""
    if seeds > 1:
        runs = [make_table(name, shift, noise, noise_seed=s) for s in range(seeds)]
        rows = tuple(dataclasses.replace(row, seed=s) for s, t in enumerate(runs) for row in t.rows)
        return dataclasses.replace(runs[0], rows=rows, seeds=seeds)
    rng = random.Random(noise_seed)
    rows = []
    for conv, lr, act in itertools.product(*SPACE.values()):
        final = quality(conv, lr, act) + rng.gauss(0, noise) + shift
        test = final - 0.02 + rng.gauss(0, noise)
        history = tuple(
            EpochMetrics(
                epoch=e,
                train_loss=1 - final * e / EPOCHS,
                train_accuracy=final * e / EPOCHS,
                val_loss=1 - final * e / EPOCHS,
                val_accuracy=final * e / EPOCHS,
                val_roc_auc=final * e / EPOCHS,
                lr=lr,
                seconds=0.5 * conv,
            )
            for e in range(1, EPOCHS + 1)
        )
        val = {"loss": 1 - final, "accuracy": final, "roc_auc": final, "precision": 1, "recall": 1, "f1": 1}
        rows.append(
            TableRow(
                params={"conv_layers": conv, "lr": lr, "activation": act},
                history=history,
                best_epoch=EPOCHS,
                stop_reason="max_epochs",
                val_metrics={**val, "fpr_at_5fnr": 0.0},
                test_metrics={**val, "loss": 1 - test, "accuracy": test, "roc_auc": test, "fpr_at_5fnr": 0.0},
                wall_time=0.5 * conv * EPOCHS,
            )
        )
    return Table(name, {k: list(v) for k, v in SPACE.items()}, tuple(rows), f"fingerprint-{name}", 0, EPOCHS)


@pytest.fixture(scope="module")
def table_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("tables") / "tiny.json"
    make_table().save(path)
    return path


def spec(tmp_path: Path, strategies: tuple[str, ...] = ("random", "tpe"), **overrides: Any) -> BenchmarkSpec:
    values: dict[str, Any] = {"repeats": 3, "n_trials": 6, "out": tmp_path / "bench", "table": "tiny", **overrides}
    return BenchmarkSpec(strategies=strategies, **values)


def read_json(out: Path) -> dict[str, Any]:
    return json.loads((out / "benchmark.json").read_text())


def journal(out: Path) -> optuna.storages.BaseStorage:
    """The benchmark's default store in `out`."""
    return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "studies.journal")))


def results_only(payload: dict[str, Any]) -> dict[str, Any]:
    """What two runs of the same benchmark must agree on (the settings name the store, which may differ)."""
    return {k: v for k, v in payload.items() if k != "benchmark"}


# --- tabular mode end to end ------------------------------------------------------------------------------------


def test_tabular_benchmark_writes_the_report_and_a_second_run_runs_nothing(tmp_path: Path, table_file: Path) -> None:
    out = tmp_path / "b"
    args = ["benchmark", "--strategies", "random,ablation", "--repeats", 3, "-n", 6, "--table", table_file]
    first = invoke(*args, "--out", out)
    assert first.exit_code == 0, first.output
    assert "6 studies, 36 trials run now" in first.stdout.replace("\n", " ")  # ablation: 1 + 3 + 3 + 2 = 9 slots
    files = {p.name for p in out.iterdir()}
    assert {"index.html", "benchmark.json", "strategies.csv", "studies.csv", "pairwise.csv"} <= files
    assert {"anytime_trials.csv", "anytime_seconds.csv", "top_configurations.csv", "studies.journal"} <= files
    payload = read_json(out)
    assert payload["benchmark"]["mode"] == "tabular" and payload["benchmark"]["table"]["name"] == "tiny"
    html = (out / "index.html").read_text()
    assert "Pairwise comparison at 6 trials" in html and "Selection bias" in html and "are not re-trained" in html
    assert (
        "True test accuracy (mean over the table" in html
        and "best_true_test_mean" in (out / "strategies.csv").read_text()
    )
    assert {p["family"] for p in payload["pairwise"]} == {"validation", "test", "true"}
    for study_row in payload["studies"]:  # a one-seed table: a configuration's true quality is its one run's test
        assert study_row["best_true"] == study_row["best_test"]
    assert "https://" not in html.split("</script>", 1)[1]  # self-contained after the inline plotly.js

    # every study is an ordinary study in the store, named so that they group, and charged the table's time
    storage = journal(out)
    names = sorted(s.study_name for s in optuna.get_all_study_summaries(storage))
    assert names == [f"bench/b/{s}/seed-{r}" for s in ("ablation", "random") for r in range(3)]
    study = optuna.load_study(study_name="bench/b/random/seed-0", storage=storage)
    for trial in study.trials:
        conv = trial.params["conv_layers"]
        assert trial.user_attrs[WALL_TIME_ATTR] == pytest.approx(0.5 * conv * EPOCHS)  # the table's, not real time
        assert TEST_METRICS_ATTR in trial.user_attrs
    row = next(r for r in payload["studies"] if r["study"] == "bench/b/random/seed-0")
    assert row["total_time"] == pytest.approx(sum(0.5 * t.params["conv_layers"] * EPOCHS for t in study.trials))

    second = invoke(*args, "--out", out)
    assert second.exit_code == 0, second.output
    assert "0 trials run now" in second.stdout
    assert read_json(out) == payload  # the same numbers, byte for byte in the JSON
    assert "wall time per trial run now: random" in first.stdout and "per trial" not in second.stdout


def test_anytime_curves_ranks_and_final_numbers_agree_with_the_studies(tmp_path: Path) -> None:
    table = make_table()
    result = run_benchmark(spec(tmp_path, ("random", "ablation"), repeats=4), table=table)
    a = result.analysis
    assert a.repeats == [0, 1, 2, 3] and a.n_trials == 6
    for row in a.studies:
        run_values = [t.value for t in _run(result, row.study).trials]
        assert row.best_value == max(v for v in run_values if v is not None)
        best_trial = next(t for t in _run(result, row.study).trials if t.value == row.best_value)
        assert row.best_test == best_trial.test  # the table's test metric of that configuration
        assert row.optimism == pytest.approx(row.best_value - row.best_test)
    # the median curve at the last budget is the median of the studies' best values
    import numpy as np

    for s in ("random", "ablation"):
        bests = [r.best_value for r in a.studies if r.strategy == s]
        assert a.by_trials.bands[s].median[-1] == pytest.approx(float(np.median(bests)))
        assert a.by_time.bands[s].median[-1] == pytest.approx(float(np.median(bests)))  # all time spent
    # mean ranks at every budget: two strategies, so they sum to 3
    assert np.allclose(a.by_trials.mean_rank["random"] + a.by_trials.mean_rank["ablation"], 3.0)
    assert a.by_time.budgets[0] == 0.0 and np.allclose(a.by_time.mean_rank["random"][0], 1.5)  # nothing yet: tied


def _run(result: Any, study: str) -> StudyRun:
    from hpo_astro.benchmark.collect import collect
    from hpo_astro.benchmark.plan import jobs
    from hpo_astro.store.storage import read_store

    spec_ = result.spec
    with read_store(spec_.storage_url) as storage:
        runs = collect(spec_, jobs(spec_, spec_.for_table(make_table())), storage, tabular=True)
    return next(r for r in runs if r.study == study)


# --- the statistics on known answers, end to end ---------------------------------------------------------------


def test_identical_strategies_are_not_significantly_different(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(strategies_module.STRATEGIES, "random-twin", strategies_module.STRATEGIES["random"])
    result = run_benchmark(spec(tmp_path, ("random", "random-twin"), repeats=8), table=make_table())
    a = result.analysis
    assert [(p.family, p.significant) for p in a.pairwise] == [("validation", False), ("test", False), ("true", False)]
    assert all(p.test.p_value == 1.0 and p.test.rank_biserial == 0.0 for p in a.pairwise)
    first, second = a.summary
    assert first.best_test == second.best_test and first.best_value == second.best_value  # same CI too
    assert first.best_true == second.best_true
    assert first.mean_rank == second.mean_rank == 1.5


def test_a_strategy_on_a_better_table_is_significantly_better(tmp_path: Path) -> None:
    repeats = 8
    plain = run_benchmark(spec(tmp_path / "plain", ("random",), repeats=repeats, top_k=0), table=make_table())
    better = run_benchmark(
        spec(tmp_path / "better", ("random",), repeats=repeats, top_k=0), table=make_table(shift=0.05)
    )
    runs = _runs(plain, "random") + _runs(better, "random-better")
    a = analyze(runs, ["random", "random-better"], 6, maximize=True, metric="accuracy")
    for family in ("validation", "test"):
        pair = next(p for p in a.pairwise if p.family == family)
        # the same seeds choose the same configurations, each 0.05 better: every paired difference is +0.05
        assert pair.test.median_difference == pytest.approx(-0.05)
        assert pair.test.p_value == pytest.approx(2 / 2**repeats)  # the exact test's smallest p-value
        assert pair.significant and pair.better == "random-better" and pair.test.rank_biserial == -1.0
    summary = {s.strategy: s for s in a.summary}
    assert summary["random-better"].mean_rank == 1.0 and summary["random"].mean_rank == 2.0
    gap = summary["random-better"].best_test.mean - summary["random"].best_test.mean
    assert gap == pytest.approx(0.05)
    assert summary["random-better"].best_test.low > summary["random"].best_test.low  # the CI moves with it


def _runs(result: Any, strategy: str) -> list[StudyRun]:
    from dataclasses import replace

    from hpo_astro.benchmark.collect import collect
    from hpo_astro.benchmark.plan import jobs
    from hpo_astro.store.storage import read_store

    s = result.spec
    with read_store(s.storage_url) as storage:
        runs = collect(s, jobs(s, s.for_table(make_table())), storage, tabular=True)
    return [replace(r, strategy=strategy) for r in runs]


class OracleSampler(BaseSampler):
    """A user's sampler that knows the table's best configuration and proposes it every time."""

    def __init__(self, seed: int | None = None) -> None:
        table = make_table()
        self.best = max(table.rows, key=lambda r: r.val_metrics["accuracy"]).params

    def infer_relative_search_space(self, study: Any, trial: Any) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(self, study: Any, trial: Any, search_space: Mapping[str, Any]) -> dict[str, Any]:
        return {}

    def sample_independent(self, study: Any, trial: Any, name: str, distribution: BaseDistribution) -> Any:
        return self.best[name]


def test_a_user_sampler_that_knows_the_best_is_significantly_better(tmp_path: Path, table_file: Path) -> None:
    out = tmp_path / "oracle"
    result = invoke(
        "benchmark", "-s", "random,test_benchmark:OracleSampler", "-r", 10, "-n", 3, "--table", table_file, "--out", out
    )
    assert result.exit_code == 0, result.output
    payload = read_json(out)
    pair = next(p for p in payload["pairwise"] if p["family"] == "validation")
    assert pair["significant"] and pair["better"] == "test_benchmark:OracleSampler"
    oracle = next(s for s in payload["strategies"] if s["strategy"] == "test_benchmark:OracleSampler")
    assert oracle["trials_to_within_1pct"]["mean"] == 1.0  # it has its best at once
    assert oracle["mean_rank_at_n_trials"] < 1.5


def test_budget_selects_where_the_pairwise_table_compares() -> None:
    """Synthetic runs: A finds 0.9 at its first trial, B only at its third; after 1 trial A is better in every
    repeat, after 3 they are equal."""

    def run(strategy: str, repeat: int, values: list[float]) -> StudyRun:
        trials = tuple(TrialRecord(i, "complete", v, 1.0, v - 0.1) for i, v in enumerate(values))
        return StudyRun(strategy, repeat, repeat, f"{strategy}-{repeat}", trials, None, None)

    runs = [run("A", r, [0.9, 0.5, 0.5]) for r in range(7)] + [run("B", r, [0.5 - r / 100, 0.6, 0.9]) for r in range(7)]
    at_one = analyze(runs, ["A", "B"], 3, maximize=True, metric="accuracy", budget=1)
    pair = next(p for p in at_one.pairwise if p.family == "validation")
    assert pair.significant and pair.better == "A" and pair.test.p_value == pytest.approx(2 / 2**7)
    test_pair = next(p for p in at_one.pairwise if p.family == "test")
    assert test_pair.better == "A"  # the configuration best after 1 trial, on test
    at_three = analyze(runs, ["A", "B"], 3, maximize=True, metric="accuracy")
    assert all(not p.significant and p.test.p_value == 1.0 for p in at_three.pairwise)
    # mean ranks per budget: A first after 1 and 2 trials, tied after 3
    assert list(at_three.by_trials.mean_rank["A"]) == [1.0, 1.0, 1.5]


# --- resuming -------------------------------------------------------------------------------------------------


def test_an_interrupted_benchmark_resumes_where_it_stopped(tmp_path: Path) -> None:
    table = make_table()
    seen: list[StudyOutcome] = []

    def stop_after_three(outcome: Any) -> None:
        seen.append(outcome)
        if len(seen) == 3:
            raise KeyboardInterrupt

    interrupted = spec(tmp_path / "a", name="same")
    with pytest.raises(KeyboardInterrupt):
        run_benchmark(interrupted, on_outcome=stop_after_three, table=table)
    assert not (tmp_path / "a" / "bench" / "index.html").exists()  # no report of a benchmark half done
    resumed = run_benchmark(interrupted, table=table)
    assert [o.ran for o in resumed.studies] == [0, 0, 0, 6, 6, 6]  # the three finished studies are kept
    run_benchmark(spec(tmp_path / "b", name="same"), table=table)
    assert results_only(read_json(tmp_path / "a" / "bench")) == results_only(read_json(tmp_path / "b" / "bench"))


def test_a_study_already_in_the_store_is_resumed_there(tmp_path: Path) -> None:
    table = make_table()
    s = spec(tmp_path, ("random",), repeats=1)
    partial = s.config("random", 0, SearchSpace.from_dict(SPACE), EPOCHS)
    partial.n_trials = 2  # a study cut short (an interrupted copy, or one started by hand)
    from hpo_astro.tabular import table_data

    (tmp_path / "bench").mkdir()
    run_study(partial, train=TableReplay(table), data=table_data(table))
    result = run_benchmark(s, table=table)
    (outcome,) = result.studies
    assert outcome.ran == 4 and not outcome.in_memory and outcome.finished == 6


# --- options --------------------------------------------------------------------------------------------------


def test_workers_run_studies_side_by_side_with_the_same_results(tmp_path: Path, table_file: Path) -> None:
    base = ["benchmark", "-s", "random,genetic", "-r", 1, "-n", 4, "--table", table_file, "--name", "w"]
    one = invoke(*base, "--out", tmp_path / "one")
    two = invoke(*base, "--out", tmp_path / "two", "--workers", 2)
    assert one.exit_code == 0 and two.exit_code == 0, one.output + two.output
    assert results_only(read_json(tmp_path / "one")) == results_only(read_json(tmp_path / "two"))


def test_storage_seed_name_repeats_objective_and_top_k(tmp_path: Path) -> None:
    db = tmp_path / "store.db"
    s = spec(tmp_path, ("random",), repeats=2, seed=7, name="nm", storage=f"sqlite:///{db}", objective="loss", top_k=2)
    s = s.replace(n_trials=3)
    result = run_benchmark(s, table=make_table())
    names = sorted(x.study_name for x in optuna.get_all_study_summaries(f"sqlite:///{db}"))
    assert names == ["bench/nm/random/seed-7", "bench/nm/random/seed-8"]
    assert not (tmp_path / "bench" / "studies.journal").exists()
    a = result.analysis
    assert not a.maximize and a.metric == "loss"
    for row in a.studies:  # a loss: the best is the smallest, and optimism is test minus validation
        assert row.best_value == min(t.value for t in _run(result, row.study).trials if t.value is not None)
        assert row.optimism == pytest.approx(row.best_test - row.best_value)
    assert [(t.strategy, t.rank) for t in a.top] == [("random", 1), ("random", 2)]
    assert a.top[0].search_value <= a.top[1].search_value and a.top[0].retrained_val is None  # tabular: none
    none = run_benchmark(spec(tmp_path / "k0", ("random",), repeats=1, top_k=0), table=make_table())
    assert none.analysis.top == []


def test_a_study_files_start_up_trials_apply_to_the_strategies_that_have_them(tmp_path: Path) -> None:
    """`n_startup_trials` in a benchmark's study file is shared by every strategy: the model-based ones take it,
    random (which `run` would refuse it for) runs without it."""
    from hpo_astro.study.config import StudyConfig

    s = spec(tmp_path, ("random", "tpe", "bayesian"), repeats=1, n_trials=4, base=StudyConfig(n_startup_trials=2))
    run_benchmark(s, table=make_table())
    storage = journal(tmp_path / "bench")
    recorded = {
        name: optuna.load_study(study_name=f"bench/bench/{name}/seed-0", storage=storage).user_attrs
        for name in ("random", "tpe", "bayesian")
    }
    assert recorded["tpe"]["n_startup_trials"] == 2 and recorded["bayesian"]["n_startup_trials"] == 2
    assert recorded["random"].get("n_startup_trials") is None


def test_max_epochs_and_pruner_in_tabular_mode(tmp_path: Path) -> None:
    s = spec(tmp_path, ("random",), repeats=2, max_epochs=2, pruner="median", n_trials=8)
    result = run_benchmark(s, table=make_table())
    storage = journal(tmp_path / "bench")
    study = optuna.load_study(study_name="bench/bench/random/seed-0", storage=storage)
    assert study.user_attrs["pruner"] == "median" and study.user_attrs["max_epochs"] == 2
    for trial in study.trials:
        epochs = 1 if trial.state.name == "PRUNED" else 2
        assert max(trial.intermediate_values) <= 2
        assert trial.user_attrs[WALL_TIME_ATTR] <= 0.5 * trial.params["conv_layers"] * epochs + 1e-9
    assert result.analysis.studies[0].trials == 8  # pruned trials count in the budget


def test_budget_option_reaches_the_report(tmp_path: Path) -> None:
    result = run_benchmark(spec(tmp_path, budget=2), table=make_table())
    assert result.analysis.budget == 2
    assert "Pairwise comparison at 2 trials" in (tmp_path / "bench" / "index.html").read_text()
    assert read_json(tmp_path / "bench")["benchmark"]["pairwise_budget"] == 2


def test_every_option_reaches_the_benchmark_from_the_command_line(tmp_path: Path, table_file: Path) -> None:
    db = tmp_path / "store.db"
    args = ["benchmark", "-s", "random", "-r", 2, "-n", 3, "--table", table_file, "--out", tmp_path / "o"]
    args += ["--seed", 7, "--name", "nm", "--storage", f"sqlite:///{db}", "--objective", "loss", "--top-k", 2]
    args += ["--max-epochs", 2, "--pruner", "median", "--budget", 2]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    facts = read_json(tmp_path / "o")["benchmark"]
    assert facts["objective"] == "loss" and facts["direction"] == "minimize" and facts["top_k"] == 2
    assert facts["max_epochs"] == 2 and facts["pruner"] == "median" and facts["pairwise_budget"] == 2
    assert len(read_json(tmp_path / "o")["top_configurations"]) == 2
    names = sorted(x.study_name for x in optuna.get_all_study_summaries(f"sqlite:///{db}"))
    assert names == ["bench/nm/random/seed-7", "bench/nm/random/seed-8"]
    study = optuna.load_study(study_name=names[0], storage=f"sqlite:///{db}")
    assert study.user_attrs["pruner"] == "median" and study.user_attrs["objective"] == "loss"


def test_ctrl_c_prints_the_command_that_resumes(
    tmp_path: Path, table_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hpo_astro.benchmark import pipeline

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_benchmark", interrupted)
    args = ["benchmark", "-s", "random", "-n", "2", "--table", str(table_file), "--out", str(tmp_path / "o")]
    monkeypatch.setattr("sys.argv", ["hpo-astro", *args])
    result = invoke(*args)
    assert result.exit_code == 130
    assert f"finished studies are kept, resume with: hpo-astro benchmark -s random -n 2 --table {table_file}" in (
        result.stderr
    )


def test_a_store_of_another_table_is_refused(tmp_path: Path) -> None:
    run_benchmark(spec(tmp_path, ("random",), repeats=1, n_trials=2), table=make_table())
    from hpo_astro.errors import UserError

    with pytest.raises(UserError, match="different data fingerprint"):
        run_benchmark(spec(tmp_path, ("random",), repeats=1, n_trials=2), table=make_table("other"))


# --- training mode ----------------------------------------------------------------------------------------------


def test_training_mode_evaluates_each_best_once_and_retrains_the_top_configuration(
    tmp_path: Path, small_file: Path
) -> None:
    config = tmp_path / "space.toml"
    # the smallest models, one batch per epoch: the test is about the benchmark, not about training
    config.write_text("[space]\nconv_layers = [1]\nfc_width = [32, 64]\nlr = [1e-3, 1e-2]\nbatch_size = [256]\n")
    out = tmp_path / "train"
    args = ["benchmark", "-s", "random,tpe", "-r", 2, "-n", 1, "--max-epochs", 1, "--top-k", 1]
    args += ["--config", config, "--data", small_file, "--channels", "diff,scorr", "--out", out]
    first = invoke(*args)
    assert first.exit_code == 0, first.output
    # random and TPE draw the same first configurations (TPE starts with random draws from the same seed): the
    # top configuration they share is re-trained once
    assert "4 trials run now, 1 re-trainings" in first.stdout.replace("\n", " ")
    payload = read_json(out)
    assert payload["benchmark"]["mode"] == "training" and payload["benchmark"]["fresh_seeds"] == [2]
    assert all(r["best_test"] is not None for r in payload["studies"])
    top = payload["top_configurations"]
    assert [t["retrain_seeds"] for t in top] == [[2], [2]] and all(t["luck"] is not None for t in top)
    retrained = json.loads((out / "retrained.json").read_text())["entries"]
    assert len(retrained) == 1 and top[0]["params"] == top[1]["params"]
    from hpo_astro.results.evaluate import CACHE_ATTR

    study = optuna.load_study(study_name="bench/train/random/seed-0", storage=journal(out))
    assert study.user_attrs["space"]["fc_width"] == [32, 64] and CACHE_ATTR in study.user_attrs  # evaluated once
    assert study.user_attrs["data_source"] == str(small_file) and study.user_attrs["channels"] == ["diff", "scorr"]
    second = invoke(*args)
    assert second.exit_code == 0 and "0 trials run now" in second.stdout and "re-trainings" not in second.stdout
    assert read_json(out) == payload


# --- refusals -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-s", "random,nope"], "unknown strategy 'nope'"),
        (["-s", "random,random"], "names random more than once"),
        (["-r", 0], "--repeats"),
        (["--table", "no-such-table"], "no table 'no-such-table'"),
        (["--budget", 9], "--budget must be between 1 and --n-trials (6)"),
        (["--max-epochs", 9], "more than table 'tiny' holds (4 epochs)"),
        (["--data", "x.npz"], "--data and --table exclude each other"),
        (["--seed", 2**32 - 2], "goes past 4294967295"),
        (["--pruner", "sometimes"], "'sometimes' is not one of 'none', 'median', 'hyperband', 'successive-halving'"),
        (["-s", ","], "--strategies needs at least one strategy"),
        (["--objective", "speed"], "unknown objective 'speed'; known: accuracy, loss, roc_auc"),
    ],
)
def test_bad_options_are_one_line_and_write_nothing(
    tmp_path: Path, table_file: Path, extra: list[object], message: str
) -> None:
    base = {"-s": "random,tpe", "-r": 3, "--table": table_file}
    for flag, value in zip(extra[::2], extra[1::2], strict=True):
        base[str(flag)] = value
    args = [x for pair in base.items() for x in pair]
    result = invoke("benchmark", *args, "-n", 6, "--out", tmp_path / "out")
    assert_refused(result, message)
    assert not (tmp_path / "out").exists()


def test_out_that_is_a_file_is_refused(tmp_path: Path, table_file: Path) -> None:
    out = tmp_path / "file"
    out.write_text("keep me")
    result = invoke("benchmark", "-s", "random", "-n", 2, "--table", table_file, "--out", out)
    assert_refused(result, "is a file, not a directory")
    assert out.read_text() == "keep me"


def test_a_table_whose_fixed_values_are_not_the_defaults_is_refused(tmp_path: Path) -> None:
    from dataclasses import replace

    table = make_table()
    odd = replace(table, rows=tuple(replace(r, params={**r.params, "t_max": 10}) for r in table.rows))
    odd.save(tmp_path / "odd.json")
    result = invoke("benchmark", "-s", "random", "-n", 2, "--table", tmp_path / "odd.json", "--out", tmp_path / "o")
    assert_refused(result, "cannot replay table 'tiny'")
    assert not (tmp_path / "o").exists()


def test_a_study_files_space_and_a_table_exclude_each_other(tmp_path: Path, table_file: Path) -> None:
    config = tmp_path / "space.toml"
    config.write_text("[space]\nlr = [0.1, 0.01]\n")
    out = tmp_path / "o"
    result = invoke("benchmark", "-s", "random", "-n", 2, "--table", table_file, "--config", config, "--out", out)
    assert_refused(result, "the study file's [space] and --table exclude each other")
    assert not out.exists()


def test_time_to_within_counts_the_failed_trials_time_but_not_their_number() -> None:
    trials = (
        TrialRecord(0, "complete", 0.5, 2.0, None),
        TrialRecord(1, "fail", None, 5.0, None),
        TrialRecord(2, "pruned", None, 1.0, None),
        TrialRecord(3, "complete", 0.9, 3.0, None),
        TrialRecord(4, "complete", 0.8, 4.0, None),
    )
    run = StudyRun("A", 0, 0, "a", trials, 3, None)
    (row,) = analyze([run], ["A"], 4, maximize=True, metric="accuracy").studies
    assert (row.trials_to_within, row.time_to_within) == (3, 11.0)  # the 3rd finished trial, after 2 + 5 + 1 + 3 s
    assert row.trials == 4 and row.failed == 1 and row.total_time == 15.0


@pytest.mark.parametrize(
    ("error", "exit_code"),
    [("CannotWrite", 1), ("UserError", 2), ("WriteFailed", None), ("StudyFailed", None), ("KeyError", None)],
)
def test_a_worker_processes_error_is_raised_again_as_itself(
    error: str, exit_code: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A benchmark worker reports its error by class name; the parent raises the same class again, so a full disk
    (CannotWrite) stays exit code 1 and bad input 2; an unexpected error becomes StudyFailed naming it."""
    import queue

    import torch

    from hpo_astro.benchmark import runner
    from hpo_astro.errors import UserError
    from hpo_astro.io import CannotWrite
    from hpo_astro.study.run import StudyFailed, WriteFailed

    classes = {c.__name__: c for c in (CannotWrite, UserError, WriteFailed, StudyFailed, KeyError)}

    def fail(self: Any, job: Any) -> None:
        raise classes[error]("the reason")

    monkeypatch.setattr(runner.Runner, "__init__", lambda self, url, source: None)
    monkeypatch.setattr(runner.Runner, "run", fail)
    tasks: queue.Queue = queue.Queue()
    results: queue.Queue = queue.Queue()
    tasks.put((0, None))
    runner._child("unused", None, torch.get_num_threads(), tasks, results)  # type: ignore[arg-type]
    kind, index, rebuilt = results.get_nowait()
    assert kind == "error" and index == 0
    if error == "KeyError":
        assert type(rebuilt) is StudyFailed and "KeyError" in str(rebuilt)
    else:
        assert type(rebuilt) is classes[error] and str(rebuilt) == "the reason"
    if exit_code is not None:  # the command line exits with a UserError's exit_code, 2 when it has none
        assert getattr(rebuilt, "exit_code", 2) == exit_code


def test_a_second_benchmark_on_the_same_out_is_refused_while_the_first_runs(tmp_path: Path, table_file: Path) -> None:
    """Two benchmarks on one DIR (#17, 8): the second is refused in one line, writes nothing, and the first, once
    done, leaves DIR usable by the next run (the lock is the kernel's: nothing is left behind)."""
    import fcntl
    import os

    out = tmp_path / "b"
    out.mkdir()
    args = ["benchmark", "--strategies", "random", "--repeats", 2, "-n", 3, "--table", table_file, "--out", out]
    fd = os.open(out, os.O_RDONLY)  # the first benchmark's lock, held as it holds it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        assert_refused(invoke(*args), "another benchmark is running in")
        assert list(out.iterdir()) == []
    finally:
        os.close(fd)
    done = invoke(*args)
    assert done.exit_code == 0, done.output
    assert not [p for p in out.iterdir() if "lock" in p.name]


def test_hyperband_results_do_not_depend_on_the_benchmark_name_or_folder(tmp_path: Path) -> None:
    """Optuna's Hyperband drew each trial's bracket from the study's name, which holds the benchmark's name: bohb's
    results changed with `--name` (and with `--out`, the default name). The brackets follow the seed instead."""

    def outcomes(folder: str, name: str) -> list[list[tuple[str, Any, Any]]]:
        s = spec(tmp_path / folder, ("bohb",), repeats=2, n_trials=12, name=name)
        run_benchmark(s, table=make_table())
        storage = journal(tmp_path / folder / "bench")
        return [
            [(t.state.name, t.value, sorted(t.intermediate_values)) for t in study.trials]
            for study in (optuna.load_study(study_name=s.study_name("bohb", r), storage=storage) for r in range(2))
        ]

    one, other = outcomes("one", "alpha"), outcomes("two", "a-longer-name")
    assert one == other
    assert any(state == "PRUNED" for study in one for state, _, _ in study)  # Hyperband did prune


def test_in_a_noisy_table_the_true_quality_is_the_configurations_mean_over_its_seeds(tmp_path: Path) -> None:
    """A 3-seed table: each study's incumbent is judged by the run it drew (best_test) and by its configuration's
    mean test metric over the table's 3 seeds (best_true), which is what the configuration is worth."""
    table = make_table(seeds=3, noise=0.05)
    result = run_benchmark(spec(tmp_path, ("random", "tpe"), repeats=4, n_trials=8), table=table)
    storage = journal(tmp_path / "bench")
    differs = 0
    for row in result.analysis.studies:
        study = optuna.load_study(study_name=row.study, storage=storage)
        best = next(t for t in study.trials if t.number == row.best_trial)
        runs = table.runs(best.params)
        assert row.best_true == pytest.approx(sum(r.test_metrics["accuracy"] for r in runs) / 3)
        assert row.best_test in [pytest.approx(r.test_metrics["accuracy"]) for r in runs]  # the run it drew
        differs += abs(row.best_test - row.best_true) > 1e-9
    assert differs  # the run drawn is not the configuration's mean
    trues = {p.family for p in result.analysis.pairwise}
    assert trues == {"validation", "test", "true"}


def lucky_table() -> Table:
    """Two configurations, three seeds each: lr 0.001 scores 0.80 on validation with every seed (test 0.79); lr 0.01
    scores 0.95 with its first seed and 0.60 with the others (test 0.01 below), so its best run is the table's best
    and its true quality, 0.707 on test, is the worse."""
    rows = []
    for lr, finals in ((0.001, (0.80, 0.80, 0.80)), (0.01, (0.95, 0.60, 0.60))):
        for seed, final in enumerate(finals):
            history = tuple(
                EpochMetrics(e, 1 - final * e / EPOCHS, final * e / EPOCHS, 1 - final * e / EPOCHS,
                             final * e / EPOCHS, final * e / EPOCHS, lr, 1.0)
                for e in range(1, EPOCHS + 1)
            )  # fmt: skip
            val = {"loss": 1 - final, "accuracy": final, "roc_auc": final, "precision": 1, "recall": 1, "f1": 1}
            test = {**val, "accuracy": final - 0.01}
            rows.append(
                TableRow(
                    params={"lr": lr},
                    history=history,
                    best_epoch=EPOCHS,
                    stop_reason="max_epochs",
                    val_metrics={**val, "fpr_at_5fnr": 0.0},
                    test_metrics={**test, "fpr_at_5fnr": 0.0},
                    wall_time=float(EPOCHS),
                    seed=seed,
                )
            )
    return Table("lucky", {"lr": [0.01, 0.001]}, tuple(rows), "fingerprint-lucky", 0, EPOCHS, seeds=3)


def test_arms_compare_one_evaluation_with_three_seeds_on_what_the_chosen_configuration_is_worth(
    tmp_path: Path,
) -> None:
    """`grid` judges each configuration by the one run the repeat's seed draws, `grid@3` by the mean of three: the
    single evaluation picks the lucky configuration in the repeats that draw its 0.95 run (2 of 6: the repeats'
    seeds step by 4, prime to the table's 3 seeds, so they draw every run), the three-seed arm never does."""
    result = run_benchmark(spec(tmp_path, ("grid", "grid@3"), repeats=6, n_trials=6), table=lucky_table())
    rows = result.analysis.studies
    single = [r.best_true for r in rows if r.strategy == "grid"]
    three = [r.best_true for r in rows if r.strategy == "grid@3"]
    assert three == pytest.approx([0.79] * 6)
    lucky_true = (0.94 + 0.59 + 0.59) / 3
    assert sorted(single) == pytest.approx([lucky_true] * 2 + [0.79] * 4)
    assert [r.seed for r in rows if r.strategy == "grid"] == [0, 4, 8, 12, 16, 20]
    storage = journal(tmp_path / "bench")
    study = optuna.load_study(study_name="bench/bench/grid@3/seed-4", storage=storage)
    assert len(study.trials) == 2 and all(len(t.user_attrs["eval_runs"]) == 3 for t in study.trials)
    assert {p.family for p in result.analysis.pairwise} == {"validation", "test", "true"}
    assert read_json(tmp_path / "bench")["benchmark"]["seeds"].startswith("repeat r: seed 0 + r x 4")


@pytest.mark.parametrize(
    ("label", "arm"),
    [
        ("tpe", Arm("tpe", "tpe", 1, None)),
        ("tpe@3", Arm("tpe@3", "tpe", 3, None)),
        ("tpe@3+median", Arm("tpe@3+median", "tpe", 3, "median")),
        ("random+hyperband", Arm("random+hyperband", "random", 1, "hyperband")),
        ("pkg.mod:Sampler@2", Arm("pkg.mod:Sampler@2", "pkg.mod:Sampler", 2, None)),
    ],
)
def test_arm_labels_parse(label: str, arm: Arm) -> None:
    assert Arm.parse(label) == arm


@pytest.mark.parametrize("label", ["tpe@", "tpe@0", "tpe@x", "tpe@101", "tpe+", "tpe@3+median+x"])
def test_bad_arm_labels_are_refused_in_one_line(tmp_path: Path, table_file: Path, label: str) -> None:
    result = invoke("benchmark", "-s", label, "-n", 6, "--table", table_file, "--out", tmp_path / "o")
    assert_refused(result, f"strategy {label!r}")
    assert not (tmp_path / "o").exists()
