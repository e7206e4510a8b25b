"""A study in the store: created, or resumed only when it is the same study (its `StudyRecord`). The run loop is in
`hpo_astro.study.run`, what a trial does in `hpo_astro.study.objective`; `status` reads studies with
`hpo_astro.results.status`.
"""

from __future__ import annotations

import dataclasses
import warnings

import optuna

from hpo_astro.data.prepare import DataSplits
from hpo_astro.errors import UserError
from hpo_astro.store.record import TABULATED, TRAINED, StudyRecord
from hpo_astro.store.storage import artifact_dir
from hpo_astro.study.config import StudyConfig


def study_record(cfg: StudyConfig, data: DataSplits, trial_kind: str = TRAINED) -> StudyRecord:
    """What a run of `cfg` on `data`, whose trials are of `trial_kind`, records in its study (and must find there
    when it resumes)."""
    return StudyRecord.from_run(
        cfg, data.fingerprint, data.channels, data.source, artifact_dir(cfg.storage, cfg.artifacts), trial_kind
    )


def create_or_resume(
    cfg: StudyConfig,
    storage: optuna.storages.BaseStorage,
    record: StudyRecord,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
) -> optuna.Study:
    """Load the study named `cfg.study_name`, or create it; refuse one whose identity differs.

    The record is written attribute by attribute with its version last (see `hpo_astro.store.record`), so a study whose
    creation was interrupted (Ctrl-C, kill -9) has no whole record: it is completed here, not compared, and the same
    command resumes it."""
    try:  # loading first: a study that is then refused is left byte-identical (a failed create would still write)
        study = optuna.load_study(study_name=cfg.study_name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        study = optuna.create_study(  # load_if_exists: another worker may create it at the same moment
            study_name=cfg.study_name,
            storage=storage,
            sampler=sampler,
            pruner=pruner,
            directions=cfg.directions,
            load_if_exists=True,
        )
    current = study.user_attrs
    stored = StudyRecord.from_attrs(current)
    if stored is None and study.get_trials(deepcopy=False):
        raise UserError(
            f"study {cfg.study_name!r} in the store has trials but no hpo-astro configuration (made by another "
            "program?); use another --study name"
        )
    if stored is not None and (differences := stored.differences(record)):
        key = differences[0]
        raise UserError(
            f"study {cfg.study_name!r} in the store was made with a different {key.replace('_', ' ')} "
            f"({_short(getattr(stored, key))} vs {_short(getattr(record, key))}); use another --study name"
        )
    directions = [d.name.lower() for d in study.directions]
    if directions != cfg.directions:  # an empty study another program made
        raise UserError(
            f"study {cfg.study_name!r} in the store optimises {len(directions)} objective(s) "
            f"({', '.join(directions)}), and --objective {cfg.objective} is {', '.join(cfg.directions)}; use another "
            "--study name"
        )
    if stored is not None and (kind := stored.kind_of(cfg.study_name)) != record.trial_kind:
        raise UserError(
            f"study {cfg.study_name!r} in the store holds {kind} trials, and this command runs {record.trial_kind} "
            f"ones; use another --study name{_HOW_TO_RESUME.get(kind, '')}"
        )
    if stored is not None and stored.fixed_params is None:  # an earlier version's study keeps sampling them
        record = dataclasses.replace(record, fixed_params=None)
    for key, value in record.to_attrs().items():
        if current.get(key) != value:
            study.set_user_attr(key, value)
    names = [spec.metric_name for spec in cfg.objectives]
    if study.metric_names != names:  # what optuna-dashboard and Optuna's plots call the objectives
        with warnings.catch_warnings():  # experimental in Optuna since 3.2; nothing a user can act on
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(names)
    return study


_HOW_TO_RESUME = {TABULATED: " (a table study resumes with `hpo-astro tabulate --name NAME`)"}


def _short(value: object, limit: int = 60) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
