"""Population-based training in `hpo-astro benchmark`: compared at equal training epochs (the budget arithmetic and
its refusals), end to end in training mode on tiny data (the epochs each arm trained, pbt's exactly the budget, its
best member evaluated and its top schedule re-trained with a fresh seed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_refused, invoke

from hpo_astro.benchmark import BenchmarkSpec
from hpo_astro.core.space import SearchSpace
from hpo_astro.errors import UserError
from hpo_astro.study.config import StudyConfig

SPACE = """
population_size = 2
ready = 2
[space]
conv_layers = [1]
fc_layers = [1]
fc_width = [32]
batch_size = [256]
t_max = [4]
lr = {low = 1e-3, high = 1e-1, log = true}
weight_decay = [1e-4, 1e-3]
dropout_rate = [0.0, 0.2]
"""


def base(t_max: int = 100) -> StudyConfig:
    """8 members, segments of 5 epochs; a space where pbt applies."""
    space = SearchSpace.from_dict({"t_max": [t_max], "lr": [1e-3, 1e-2]})
    return StudyConfig(population_size=8, ready=5, space=space)


def spec(tmp_path: Path, strategies: tuple[str, ...] = ("random", "tpe", "pbt"), **overrides: Any) -> BenchmarkSpec:
    t_max = overrides.pop("t_max", 100)
    values: dict[str, Any] = {"repeats": 2, "n_trials": 16, "out": tmp_path / "b", "max_epochs": 10}
    return BenchmarkSpec(strategies=strategies, **{**values, "base": base(t_max), **overrides})


def test_every_arm_gets_the_same_training_epochs(tmp_path: Path) -> None:
    s = spec(tmp_path).validate()
    # 16 trials x 10 epochs = 160 epochs: 32 segments of 5 epochs, 4 generations of 8 members of 20 epochs each
    assert s.epoch_budget == 160
    assert [s.trials_of(a) for a in s.strategies] == [16, 16, 32]
    pbt, random = s.config("pbt", 1), s.config("random", 1)
    assert (pbt.n_trials, pbt.max_epochs, pbt.ready, pbt.pruner) == (32, 20, 5, None)
    assert pbt.n_trials * pbt.ready == random.n_trials * random.max_epochs == 160
    assert (random.n_trials, random.max_epochs, random.ready, random.pbt_quantile) == (16, 10, None, None)
    # member m of a repeat trains with seed + m: the repeats step by the population, the fresh seeds come after
    assert s.seed_stride == 8 and pbt.seed == random.seed == 8 and s.fresh_seeds() == [16, 17, 18]
    assert s.segments_per_trial() == {"pbt": 2.0}
    # the benchmark's pruner is not pbt's; without a pbt arm nothing changes
    pruned = spec(tmp_path, pruner="median")
    assert pruned.config("pbt", 0).pruner is None and pruned.config("tpe", 0).pruner == "median"
    plain = spec(tmp_path, ("random", "tpe@2"), base=None)
    assert plain.seed_stride == 2 and plain.segments_per_trial() == {} and plain.config("tpe@2", 0).n_trials == 8


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"max_epochs": None}, "strategy 'pbt' compares at equal training epochs: give --max-epochs E"),
        # 10 x 10 = 100 epochs is no whole number of generations of 8 x 5 = 40 epochs: n_trials a multiple of 4
        (
            {"n_trials": 10},
            "100 epochs is no whole number of generations of 8 members x 5 epochs (40 epochs); "
            "--n-trials that fit: multiples of 4, e.g. 8 or 12",
        ),
        ({"n_trials": 3}, "--n-trials that fit: multiples of 4, e.g. 4"),
        # a member trains 16 x 10 / 8 = 20 epochs: a t_max of 10 would end its cosine schedule half-way
        ({"t_max": 10}, "a member trains 20 epochs (generations x ready) but t_max can be 10"),
        ({"table": "astro-small", "max_epochs": None, "base": None}, "strategy 'pbt' needs training"),
        ({"strategies": ("random", "pbt+median")}, "--pruner must be none, got 'median'"),
    ],
)
def test_a_budget_pbt_cannot_match_is_refused_in_one_line(
    tmp_path: Path, overrides: dict[str, Any], message: str
) -> None:
    with pytest.raises(UserError) as raised:
        spec(tmp_path, **overrides).validate()
    assert message in str(raised.value)


def test_pbt_without_max_epochs_is_refused_by_the_command(tmp_path: Path, small_file: Path) -> None:
    config = tmp_path / "pbt.toml"
    config.write_text(SPACE)
    out = tmp_path / "out"
    result = invoke("benchmark", "-s", "random,pbt", "-n", 4, "--config", config, "--data", small_file, "--out", out)
    assert_refused(result, "strategy 'pbt' compares at equal training epochs: give --max-epochs E")
    result = invoke(
        "benchmark", "-s", "random,pbt", "-n", 3, "--max-epochs", 2, "--config", config, "--data", small_file,
        "--out", out,
    )  # fmt: skip
    assert_refused(result, "--n-trials that fit: multiples of 2, e.g. 2 or 4")
    assert not out.exists()


def test_a_training_benchmark_with_pbt_trains_equal_epochs_and_retrains_its_schedule(
    tmp_path: Path, small_file: Path
) -> None:
    config = tmp_path / "pbt.toml"
    config.write_text(SPACE)
    out = tmp_path / "eq"
    # 4 trials x 2 epochs = 8 epochs: random 4 trials of at most 2 epochs, pbt 4 segments of 2 epochs (2 members x 2
    # generations, 4 epochs each)
    args = ["benchmark", "-s", "random,pbt", "-r", 1, "-n", 4, "--max-epochs", 2, "--top-k", 1]
    args += ["--config", config, "--data", small_file, "--out", out]
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    assert "8 trials run now, 2 re-trainings" in result.stdout.replace("\n", " ")
    payload = json.loads((out / "benchmark.json").read_text())
    facts = payload["benchmark"]
    assert facts["epoch_budget"] == 8 and facts["trials_per_arm"] == {"random": 4, "pbt": 4}
    assert facts["pbt"]["generations"] == 2 and facts["pbt"]["member_epochs"] == 4
    studies = {row["strategy"]: row for row in payload["studies"]}
    assert studies["pbt"]["epochs"] == 8 and studies["pbt"]["trials"] == 4  # never stopped early: the whole budget
    assert 4 <= studies["random"]["epochs"] <= 8  # at most 2 epochs a trial, maybe fewer (early stopping)
    epochs = {s["strategy"]: s["epochs_trained"]["mean"] for s in payload["strategies"]}
    assert epochs == {"random": studies["random"]["epochs"], "pbt": 8}
    assert studies["pbt"]["best_test"] is not None  # its best member evaluated on test (its kept weights)
    assert any("a pbt trial is one member's segment" in n.lower() for n in payload["notes"])
    top = {t["strategy"]: t for t in payload["top_configurations"]}
    schedule = top["pbt"]["pbt_schedule"]
    assert schedule and schedule[-1]["epochs"][1] == 2 * len(schedule) and top["pbt"]["retrain_seeds"] == [2]
    assert top["pbt"]["retrained_validation"]["n"] == 1 and "pbt_schedule" not in top["random"]
    retrained = json.loads((out / "retrained.json").read_text())["entries"]
    assert sum("pbt_schedule" in json.loads(key) for key in retrained) == 1
    assert "pbt_schedule" in (out / "top_configurations.csv").read_text().splitlines()[0]
    assert "pbt schedule: epochs 0-2" in (out / "index.html").read_text()
    again = invoke(*args)  # finished: only re-rendered, the same numbers
    assert again.exit_code == 0 and "0 trials run now" in again.stdout
    assert json.loads((out / "benchmark.json").read_text()) == payload


def test_the_packaged_pbt_benchmark_study_gives_equal_epochs(tmp_path: Path) -> None:
    """studies/pbt-benchmark.toml, as docs/benchmarking.md runs it: 8 trials x 4 epochs for random and tpe, 16
    segments of 2 epochs for pbt (4 members x 4 generations of 8 epochs, its t_max)."""
    from hpo_astro.study.config import load_config

    cfg = load_config("pbt-benchmark")
    s = BenchmarkSpec(("random", "tpe", "pbt"), repeats=8, n_trials=8, out=tmp_path / "b", base=cfg).validate()
    assert s.epoch_budget == 32 and [s.trials_of(a) for a in s.strategies] == [8, 8, 16]
    pbt, tpe = s.config("pbt", 0), s.config("tpe", 0)
    assert (pbt.max_epochs, pbt.n_startup_trials, tpe.n_startup_trials, tpe.max_epochs) == (8, None, 4, 4)
    assert cfg.space.fixed()["t_max"] == 8
