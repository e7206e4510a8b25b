"""Tables that carry the training noise: several seeds per configuration (`tabulate --seeds S`, table version 2), the
replay drawing one seed's run per (study seed, configuration), and noise-aware evaluation in tabular mode."""

from __future__ import annotations

import dataclasses
import gzip
import json
from pathlib import Path
from typing import Any

import pytest
from helpers import assert_refused, invoke, journal_url, load_study, scripted_trainer
from test_tabular import fake_test, make_row, make_table, space_file

from hpo_astro import tabular
from hpo_astro.core.hyperparameters import DEFAULT_PARAMS
from hpo_astro.core.space import SearchSpace
from hpo_astro.errors import UserError
from hpo_astro.results.choice import best_trial
from hpo_astro.study.config import StudyConfig
from hpo_astro.study.confirm import confirm_study
from hpo_astro.study.run import run_study
from hpo_astro.tabular import Table, TableReplay, TableRow, table_data
from hpo_astro.tabular.replay import run_index

SPACE = {"lr": [1e-3, 1e-2]}
STEADY, LUCKY = 1e-3, 1e-2


def with_accuracy(row: TableRow, accuracy: float, seed: int) -> TableRow:
    """`row` with its best epoch's validation and test accuracy set to `accuracy`, as run `seed`."""
    val = {**row.val_metrics, "accuracy": accuracy}
    test = {**row.test_metrics, "accuracy": accuracy - 0.01}
    return dataclasses.replace(row, val_metrics=val, test_metrics=test, seed=seed)


def noisy_table(lucky_runs: tuple[float, ...] = (0.95, 0.60, 0.60)) -> Table:
    """Two configurations, three seeds each: the steady one scores 0.80 with every seed, the lucky one `lucky_runs`
    (its best run is the best of the table, its mean is mediocre)."""
    rows = []
    for lr in SPACE["lr"]:
        params = {**DEFAULT_PARAMS, "lr": lr}
        for seed in range(3):
            accuracy = 0.80 if lr == STEADY else lucky_runs[seed]
            rows.append(with_accuracy(make_row(params, epochs=4), accuracy, seed))
    return Table("noisy", SPACE, tuple(rows), "f" * 16, seed=0, max_epochs=4, seeds=3)


def test_a_table_of_several_seeds_holds_every_run_and_writes_version_2(tmp_path: Path) -> None:
    table = noisy_table()
    assert (table.seeds, table.configurations, len(table.rows), table.missing) == (3, 2, 6, 0)
    runs = table.runs({"lr": LUCKY})
    assert [r.seed for r in runs] == [0, 1, 2] and [r.val_metrics["accuracy"] for r in runs] == [0.95, 0.60, 0.60]
    assert table.row({"lr": LUCKY}, 1) is runs[1]
    table.save(tmp_path / "noisy.json.gz")
    data = json.loads(gzip.decompress((tmp_path / "noisy.json.gz").read_bytes()))
    assert data["version"] == 2 and data["seeds"] == 3 and [r["seed"] for r in data["rows"]] == [0, 1, 2] * 2
    again = Table.load(tmp_path / "noisy.json.gz")
    assert again.rows == table.rows and again.seeds == 3


def test_a_one_seed_table_is_written_as_version_1_without_seeds(tmp_path: Path) -> None:
    table = make_table()
    assert table.seeds == 1 and all(row.seed == table.seed for row in table.rows)
    data = table.to_json()
    assert data["version"] == 1 and "seeds" not in data and "seed" not in data["rows"][0]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda rows: rows[:-1], "has 2 of the table's 3 seeds"),
        (lambda rows: [*rows[:-1], dataclasses.replace(rows[-1], seed=7)], "seed 7 is not one of the table's, 0 to 2"),
        (lambda rows: [*rows[:-1], dataclasses.replace(rows[-1], seed=1)], "repeats the configuration and seed"),
    ],
)
def test_a_table_whose_runs_do_not_match_its_seeds_is_refused(change: Any, message: str) -> None:
    rows = list(noisy_table().rows)
    with pytest.raises(UserError, match=message):
        Table("noisy", SPACE, tuple(change(rows)), "f" * 16, seed=0, max_epochs=4, seeds=3)


def test_a_file_that_mixes_the_versions_is_refused(tmp_path: Path) -> None:
    data = noisy_table().to_json()
    for version, message in ((1, "'seeds' is a field of version 2"), (3, "unsupported version 3")):
        path = tmp_path / f"v{version}.json"
        path.write_text(json.dumps({**data, "version": version}))
        with pytest.raises(UserError, match=message):
            Table.load(path)


def test_the_replay_draws_each_configurations_run_from_the_seed() -> None:
    table = noisy_table()
    replay = TableReplay(table)
    for lr in SPACE["lr"]:
        params = {**DEFAULT_PARAMS, "lr": lr}
        drawn = [replay(params, seed=s).seed for s in range(10, 13)]
        assert sorted(drawn) == [0, 1, 2]  # three consecutive seeds meet all three runs
        assert [replay(params, seed=s).seed for s in range(10, 13)] == drawn  # deterministic
        assert drawn[0] == run_index(table.runs(params)[0].params, 10, 3)
    one = {**DEFAULT_PARAMS, "lr": STEADY}
    assert run_index(one, 5, 1) == 0  # a one-seed table always answers with its run


def study(tmp_path: Path, name: str, seed: int, **overrides: Any) -> StudyConfig:
    return StudyConfig(
        strategy="grid",
        study=name,
        storage=f"sqlite:///{tmp_path / 'optuna.db'}",
        n_trials=2,
        space=SearchSpace.from_dict(SPACE),
        seed=seed,
        pruner="none",
        **overrides,
    )


def test_in_tabular_mode_one_evaluation_picks_the_lucky_run_and_three_seeds_or_confirm_the_steady_one(
    tmp_path: Path,
) -> None:
    table = noisy_table()
    replay = TableReplay(table)
    data = table_data(table)
    lucky = {**DEFAULT_PARAMS, "lr": LUCKY}
    seed = next(s for s in range(100) if run_index(table.runs(lucky)[0].params, s, 3) == 0)  # draws the 0.95 run
    single = run_study(study(tmp_path, "single", seed), train=replay, data=data).study
    assert best_trial(single).params["lr"] == LUCKY and single.best_value == pytest.approx(0.95)
    three = run_study(study(tmp_path, "three", seed, eval_seeds=3), train=replay, data=data).study
    assert best_trial(three).params["lr"] == STEADY
    lucky_trial = next(t for t in three.trials if t.params["lr"] == LUCKY)
    assert sorted(lucky_trial.user_attrs["eval_values"]) == pytest.approx([0.60, 0.60, 0.95])
    url = study(tmp_path, "single", seed).storage
    result = confirm_study(url, "single", top_k=2, seeds=2, train=replay, data=data)  # seeds seed+1, seed+2
    steady = next(t.number for t in single.trials if t.params["lr"] == STEADY)
    assert result.best is not None and result.best.trial == steady
    assert best_trial(load_study(url, "single")).number == steady
    # the same from the command line, the table named by --table (a replayed study is never trained for real)
    table.save(tmp_path / "noisy.json")
    run_study(study(tmp_path, "again", seed), train=replay, data=data)
    refused = invoke("confirm", "--study", "again", "--storage", url, "--top-k", 2, "--seeds", 2)
    assert_refused(refused, "replays a table: confirm it with the table's replay")
    args = ("--study", "again", "--storage", url, "--top-k", 2, "--seeds", 2, "--table", tmp_path / "noisy.json")
    confirmed = invoke("confirm", *args)
    assert confirmed.exit_code == 0, confirmed.output
    again = load_study(url, "again")
    assert (
        best_trial(again).params["lr"] == STEADY and f"now take trial #{best_trial(again).number}" in confirmed.stdout
    )


def test_tabulate_with_seeds_trains_each_configuration_with_each_seed(tmp_path: Path, small_file: Path) -> None:
    trainer = tabular.TabulateTrain(scripted_trainer(lambda p, s: 0.5 + 0.05 * s), fake_test)
    space = space_file(tmp_path / "space.toml", {"lr": [1e-3, 1e-2]})
    args = ["tabulate", "--space", space, "--out", "s3", "--storage", journal_url(tmp_path), "--data", small_file]
    result = invoke(
        *args, "--max-epochs", 2, "--seeds", 3, "--seed", 4, "--split", "0.5,0.25,0.25", "--json", tmp_path / "s3.json",
        train=trainer,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "table 's3': 2 configurations x 3 seeds" in result.stdout
    table = Table.load(tmp_path / "s3.json")
    assert table.seeds == 3 and table.seed == 4
    assert table.info["split"] == [0.5, 0.25, 0.25]  # the data's split, which a benchmark's studies then record
    from hpo_astro.benchmark import BenchmarkSpec

    spec = BenchmarkSpec(strategies=("random",), repeats=1, n_trials=1, out=tmp_path / "b")
    assert spec.config("random", 0, split=spec.for_table(table).split).split == (0.5, 0.25, 0.25)
    for params in ({"lr": 1e-3}, {"lr": 1e-2}):
        runs = table.runs(params)
        assert [r.seed for r in runs] == [4, 5, 6]
        assert [r.val_metrics["accuracy"] for r in runs] == pytest.approx([0.7, 0.75, 0.8])  # seed s: 0.5 + 0.05 s
        assert [r.test_metrics["accuracy"] for r in runs] == pytest.approx([0.69, 0.74, 0.79])  # each run's own test
    assert tabular.load_table("s3", journal_url(tmp_path)).rows == table.rows  # the same table from the store
    refused = invoke(
        *args,
        "--max-epochs",
        2,
        "--seed",
        4,
        "--split",
        "0.5,0.25,0.25",
        "--seeds",
        2,
        "--json",
        tmp_path / "s2.json",
        train=trainer,
    )
    assert_refused(refused, "was started with seeds 3, not 2")


def test_tabulate_trains_a_configurations_seeds_stacked_and_gets_the_table_it_gets_one_by_one(
    tmp_path: Path, small_file: Path
) -> None:
    """Real training, each configuration's 2 seeds as one stacked model or one after another: the same rows (to
    rounding), each with its own test metrics, and the trials say how they trained."""
    space = space_file(tmp_path / "space.toml", {"lr": [1e-3, 1e-2], "batch_size": [16], "fc_width": [16]})
    tables = {}
    for mode in ("on", "off"):
        url = journal_url(tmp_path / mode)
        (tmp_path / mode).mkdir()
        result = invoke(
            "tabulate", "--space", space, "--out", "t", "--storage", url, "--data", small_file, "--max-epochs", 2,
            "--seeds", 2, "--stack-runs", mode, "--json", tmp_path / f"{mode}.json",
        )  # fmt: skip
        assert result.exit_code == 0, result.output
        tables[mode] = Table.load(tmp_path / f"{mode}.json")
        kinds = {t.user_attrs["eval_stacking"] for t in load_study(url, "table/t").trials}
        assert kinds == ({"stacked"} if mode == "on" else {"stacking turned off"})
    for stacked, alone in zip(tables["on"].rows, tables["off"].rows, strict=True):
        assert (stacked.params, stacked.seed, len(stacked.history)) == (alone.params, alone.seed, len(alone.history))
        for key in ("loss", "accuracy"):
            assert stacked.val_metrics[key] == pytest.approx(alone.val_metrics[key], abs=0.02)
            assert stacked.test_metrics[key] == pytest.approx(alone.test_metrics[key], abs=0.02)
