"""The study record: one schema for the study's user attributes, round-tripped through the store."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna

from hpo_astro.core.space import SearchSpace
from hpo_astro.store.record import VERSION_KEY, StudyRecord
from hpo_astro.study.config import StudyConfig


def _config(tmp_path: Path) -> StudyConfig:
    """Every recorded field away from its default."""
    return StudyConfig(
        strategy="ablation",
        n_trials=7,
        study="s",
        storage=f"sqlite:///{tmp_path / 'optuna.db'}",
        space=SearchSpace.from_dict({"lr": [1e-3, 1e-2], "batch_size": [16, 64]}),
        baseline={"lr": 1e-2, "batch_size": 16},
        greedy=True,
        population_size=6,
        pruner="median",
        objective="roc_auc",
        seed=11,
        data=tmp_path / "data.npz",
        channels=("diff", "scorr"),
        max_epochs=4,
        artifacts=tmp_path / "artifacts",
    )


def test_every_field_round_trips_through_the_store(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    record = StudyRecord.from_run(cfg, "f" * 16, cfg.channels, str(cfg.data), cfg.artifacts)
    study = optuna.create_study(storage=cfg.storage, study_name="s")
    for key, value in record.to_attrs().items():
        study.set_user_attr(key, value)
    stored = StudyRecord.from_attrs(optuna.load_study(study_name="s", storage=cfg.storage).user_attrs)
    assert stored == dataclasses.replace(record, artifacts=str(cfg.artifacts.resolve()))
    assert StudyConfig.from_record(stored, cfg.storage, "s") == cfg
    assert list(record.to_attrs())[-1] == VERSION_KEY  # written last: marks the record whole


def test_a_record_without_its_version_is_not_whole(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    attrs = StudyRecord.from_run(cfg, "f" * 16, cfg.channels, "", cfg.artifacts).to_attrs()
    assert StudyRecord.from_attrs(attrs) is not None
    assert StudyRecord.from_attrs({k: v for k, v in attrs.items() if k != VERSION_KEY}) is None
    assert StudyRecord.from_attrs({"owner": "another program"}) is None


def test_differences_name_the_identity_fields_only(tmp_path: Path) -> None:
    cfg = _config(tmp_path)
    record = StudyRecord.from_run(cfg, "f" * 16, cfg.channels, "", cfg.artifacts)
    assert record.differences(dataclasses.replace(record, n_trials=99, seed=3)) == []
    other = dataclasses.replace(record, objective="loss", data_fingerprint="0" * 16)
    assert record.differences(other) == ["objective", "data_fingerprint"]


def test_the_trial_readers_return_what_they_promise_whatever_the_store_holds() -> None:
    """Another program (or an older version) may have written any JSON under a key: each reader gives its type or
    its stated fallback, never the stored value as it is."""
    import math

    from hpo_astro.store import record

    def trial(user: dict, system: dict | None = None) -> optuna.trial.FrozenTrial:
        return optuna.trial.create_trial(
            params={"lr": 0.01},
            distributions={"lr": optuna.distributions.CategoricalDistribution([0.01, 0.1])},
            value=0.5,
            user_attrs=user,
            system_attrs=system or {},
        )

    good = trial(
        {"params_full": {"lr": 0.01, "fc_layers": 2}, "val_metrics": {"loss": 0.3}, "wall_time": 2.5,
         "fail_reason": "ValueError: x", "surplus": True},
        {"retry_history": [0, 3]},
    )  # fmt: skip
    assert record.params_full(good) == record.trial_params(good) == {"lr": 0.01, "fc_layers": 2}
    assert record.stored_metrics(good, record.VAL_METRICS_ATTR) == {"loss": 0.3}
    assert record.stored_seconds(good) == 2.5 and record.fail_reason(good) == "ValueError: x"
    assert record.is_surplus(good) and record.retry_history(good) == [0, 3]
    bad = trial(
        {"params_full": "lr=0.01", "val_metrics": [0.3], "wall_time": "2.5", "fail_reason": 7, "surplus": "yes"},
        {"retry_history": "0,3"},
    )
    assert record.params_full(bad) is None and record.trial_params(bad) == {"lr": 0.01}  # Optuna's own params
    assert record.stored_metrics(bad, record.VAL_METRICS_ATTR) is None and record.stored_seconds(bad) is None
    assert record.fail_reason(bad, "unknown") == "unknown" and not record.is_surplus(bad)
    assert record.retry_history(bad) == []
    for seconds in (math.nan, math.inf, True):
        assert record.stored_seconds(trial({"wall_time": seconds})) is None


def test_internal_attributes_are_system_attributes_and_an_earlier_stores_user_attributes_still_read(
    tmp_path: Path,
) -> None:
    """The configuration, the worker and the checkpoint pointer are written as trial system attributes (which
    optuna-dashboard does not show), under hpo-astro's own prefix (no sampler's key); a trial an earlier version
    wrote keeps them in user attributes, which the readers fall back to; a system attribute wins over a stale one."""
    from hpo_astro.store import record
    from hpo_astro.store.storage import open_storage

    study = optuna.create_study(storage=open_storage(f"sqlite:///{tmp_path / 's.db'}"))
    trial = study.ask()
    record.set_internal(trial, record.PARAMS_FULL_ATTR, {"lr": 0.1})
    record.set_internal(trial, record.WORKER_ATTR, "host:12")
    record.set_internal(trial, record.CHECKPOINT_ATTR, {"artifact_id": "ckpt-1", "epoch": 3})
    (stored,) = study.get_trials()
    assert stored.user_attrs == {}
    assert set(stored.system_attrs) == {"hpo_astro:params_full", "hpo_astro:worker", "hpo_astro:checkpoint"}
    assert record.params_full(stored) == {"lr": 0.1} and record.internal_attr(stored, record.WORKER_ATTR) == "host:12"
    assert record.internal_attr(stored, record.CHECKPOINT_ATTR) == {"artifact_id": "ckpt-1", "epoch": 3}
    from hpo_astro.samplers import ablation_plan

    sampler_keys = [
        ablation_plan.SLOT_KEY,
        ablation_plan.PLAN_KEY,
        ablation_plan.CONFIG_KEY,
        ablation_plan.EXHAUSTED_KEY,
    ]
    assert not any(key.startswith(record.SYSTEM_PREFIX) for key in [*sampler_keys, "fixed_params", "failed_trial"])

    older = optuna.trial.create_trial(value=0.5, user_attrs={"params_full": {"lr": 0.01}, "worker": "h:1"})
    assert record.params_full(older) == {"lr": 0.01} and record.internal_attr(older, record.WORKER_ATTR) == "h:1"
    both = optuna.trial.create_trial(
        value=0.5, user_attrs={"checkpoint": {"epoch": 1}}, system_attrs={"hpo_astro:checkpoint": {"epoch": 2}}
    )
    assert record.internal_attr(both, record.CHECKPOINT_ATTR) == {"epoch": 2}
    hostile = optuna.trial.create_trial(value=0.5, system_attrs={"hpo_astro:params_full": [1, 2]})
    assert record.params_full(hostile) is None
