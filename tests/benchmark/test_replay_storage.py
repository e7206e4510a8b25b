"""The store a replayed study runs in (`replay_storage`) writes user attributes in place, for speed: every study it
holds must be exactly the study Optuna's own in-memory store would hold, with the pruners that read and write the
store as they decide (Hyperband's successive halving writes a system attribute, then counts the others)."""

from __future__ import annotations

import optuna
import pytest

from hpo_astro.benchmark.plan import BenchmarkSpec
from hpo_astro.benchmark.runner import replay_storage
from hpo_astro.study.run import run_study
from hpo_astro.tabular import TableReplay, load_table, table_data


def replayed_trials(strategy: str, storage: optuna.storages.BaseStorage) -> list[optuna.trial.FrozenTrial]:
    table = load_table("astro-small", "sqlite:///unused.db")
    spec = BenchmarkSpec(strategies=(strategy,), repeats=1, n_trials=30, out="unused")
    settings = spec.for_table(table)
    strategy_name, _, pruner = strategy.partition("+")
    cfg = spec.config(strategy_name, 3, space=settings.space, max_epochs=settings.max_epochs, split=settings.split)
    if pruner:
        cfg.pruner = pruner
    return run_study(cfg, train=TableReplay(table), data=table_data(table), storage=storage).study.trials


@pytest.mark.parametrize("strategy", ["bohb", "tpe+median", "random+successive-halving", "qmc"])
def test_a_replayed_study_is_the_study_optunas_own_memory_store_holds(strategy: str) -> None:
    ours = replayed_trials(strategy, replay_storage())
    optunas = replayed_trials(strategy, optuna.storages.InMemoryStorage())
    assert len(ours) == len(optunas) == 30
    assert any(t.state == optuna.trial.TrialState.PRUNED for t in optunas) or strategy == "qmc"
    for a, b in zip(ours, optunas, strict=True):
        assert (a.number, a.state, a.params, a.value) == (b.number, b.state, b.params, b.value)
        assert a.intermediate_values == b.intermediate_values
        assert a.system_attrs == b.system_attrs
        assert a.user_attrs == b.user_attrs
