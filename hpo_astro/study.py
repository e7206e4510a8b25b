"""A study in the store: created, or resumed only when it is the same study (its `StudyRecord`), and summarised
for `status`. The run loop is in `hpo_astro.run`, what a trial does in `hpo_astro.objective`.
"""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from hpo_astro.config import StudyConfig
from hpo_astro.data.prepare import DataSplits
from hpo_astro.errors import UserError
from hpo_astro.record import StudyRecord
from hpo_astro.storage import artifact_dir, read_store, store_file


def study_record(cfg: StudyConfig, data: DataSplits) -> StudyRecord:
    """What a run of `cfg` on `data` records in its study (and must find there when it resumes)."""
    return StudyRecord.from_run(
        cfg, data.fingerprint, data.channels, data.source, artifact_dir(cfg.storage, cfg.artifacts)
    )


def create_or_resume(
    cfg: StudyConfig,
    storage: optuna.storages.BaseStorage,
    record: StudyRecord,
    sampler: optuna.samplers.BaseSampler,
    pruner: optuna.pruners.BasePruner,
) -> optuna.Study:
    """Load the study named `cfg.study_name`, or create it; refuse one whose identity differs.

    The record is written attribute by attribute with its version last (see `hpo_astro.record`), so a study whose
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
            direction=cfg.direction,
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
    for key, value in record.to_attrs().items():
        if current.get(key) != value:
            study.set_user_attr(key, value)
    if study.metric_names != [cfg.metric]:  # what optuna-dashboard and Optuna's plots call the objective
        with warnings.catch_warnings():  # experimental in Optuna since 3.2; nothing a user can act on
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names([cfg.metric])
    return study


def _short(value: Any, limit: int = 60) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class StudyStatus:
    name: str
    strategy: str
    direction: str
    target: int | None
    counts: dict[str, int]
    best_value: float | None
    best_params: dict[str, Any] | None
    best_trial: int | None


def study_status(storage_url: str, name: str | None = None) -> list[StudyStatus]:
    file = store_file(storage_url)
    missing = file is not None and not file.exists()  # no store, no studies: a status query never creates one
    with contextlib.nullcontext() if missing else read_store(storage_url) as storage:  # read-only: never writes
        summaries = [] if storage is None else optuna.get_all_study_summaries(storage, include_best_trial=False)
        names = [s.study_name for s in summaries]
        if name is not None:
            if name not in names:
                raise UserError(
                    f"no study named {name!r} in {storage_url}" + (f"; studies: {', '.join(names)}" if names else "")
                )
            names = [name]
        out = []
        for study_name in names:
            study = optuna.load_study(study_name=study_name, storage=storage)
            trials = study.get_trials(deepcopy=False)
            counts = {state.name.lower(): sum(t.state == state for t in trials) for state in TrialState}
            try:
                best = study.best_trial
            except ValueError:
                best = None
            out.append(
                StudyStatus(
                    name=study_name,
                    strategy=_shown(study.user_attrs.get("strategy"), str, "?"),
                    direction=study.direction.name.lower(),
                    target=_shown(study.user_attrs.get("n_trials"), int, None),
                    counts={k: v for k, v in counts.items() if v},
                    best_value=best.value if best else None,
                    best_params=best.params if best else None,
                    best_trial=best.number if best else None,
                )
            )
    return out


def _shown(value: object, kind: type, missing: Any) -> Any:
    """A stored attribute as `status` shows it: of the expected type, else `missing` (status lists every study, those
    another program wrote with attributes of other types included, and never fails on one)."""
    return value if isinstance(value, kind) and not isinstance(value, bool) else missing
