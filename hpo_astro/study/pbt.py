"""What a trial of a PBT study does (`docs/pbt.md`): one member's segment of `ready` epochs, continued from the
checkpoint its sampler chose (`hpo_astro.samplers.pbt.PbtSampler`: its own, or an exploited member's) with its
hyperparameters, the segment's end checkpoint uploaded to the artifact store for the next generation, its lineage
and schedule recorded on the trial. Everything else (heartbeat, surplus trials, a killed trial resumed from its own
checkpoint, results, best weights) is `hpo_astro.study.objective.Objective`'s."""

from __future__ import annotations

import contextlib
import dataclasses
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial

from hpo_astro.core.epochs import Callback
from hpo_astro.core.train import TrainResult
from hpo_astro.errors import UserError
from hpo_astro.samplers.pbt import DEFERRED_KEY, MEMBER_KEY
from hpo_astro.store.record import TRAINED, WEIGHTS_MIMETYPE, internal_attr, set_internal
from hpo_astro.study.config import StudyConfig
from hpo_astro.study.objective import Objective, _SurplusTrial
from hpo_astro.study.pbt_plan import (
    EXPLOITED_ATTR,
    GENERATION_ATTR,
    MEMBER_ATTR,
    PARENT_ATTR,
    PBT,
    SCHEDULE_ATTR,
    SEGMENT_CHECKPOINT_ATTR,
    SETTINGS_ATTR,
    SegmentEnd,
    check_pbt,
    checkpoint_bytes,
    continue_with,
    load_state,
    pbt_settings,
    schedule_of,
    shown_schedule,
    train_segment,
)
from hpo_astro.study.strategies import make_sampler


@dataclass
class _Segment:
    trial: optuna.Trial
    start: int
    end: int
    seed: int
    parent: FrozenTrial | None
    started_from: dict[str, Any] | None = None  # the checkpoint the segment continues


@dataclass
class PbtObjective(Objective):
    """`Objective` for a PBT study: each trial trains its member's segment (see the module's docstring)."""

    _segment: _Segment | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if getattr(self.train, "trial_kind", TRAINED) != TRAINED:
            raise UserError("strategy pbt needs training: a table's replay has no checkpoints to continue")
        self._trainer = self.train
        self.train = self._train_segment  # what Objective._run calls: the segment, from the chosen checkpoint

    def _run(self, trial: optuna.Trial) -> tuple[float, Any]:
        storage = trial.study._storage
        attrs = storage.get_trial_system_attrs(trial._trial_id)
        if DEFERRED_KEY in attrs:
            raise _SurplusTrial(f"pbt: {attrs[DEFERRED_KEY]}")
        member = attrs.get(MEMBER_KEY)
        if not isinstance(member, dict):
            raise RuntimeError("the PBT sampler gave this trial no member (is the study's sampler PbtSampler?)")
        study = trial.study
        settings = pbt_settings(self.cfg)
        if study.user_attrs.get(SETTINGS_ATTR) != settings:
            study.set_user_attr(SETTINGS_ATTR, settings)
        ready, generation = settings["ready"], int(member["generation"])
        parent = None
        if member["parent"] is not None:
            parent_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, int(member["parent"]))
            parent = storage.get_trial(parent_id)
        self._segment = _Segment(
            trial, generation * ready, (generation + 1) * ready, self.cfg.seed + int(member["founder"]), parent
        )
        for key, value in {
            GENERATION_ATTR: generation,
            MEMBER_ATTR: member["member"],
            PARENT_ATTR: member["parent"],
            EXPLOITED_ATTR: member["exploited_from"],
        }.items():
            trial.set_user_attr(key, value)
        return super()._run(trial)

    def _inherited_checkpoint(self, trial: optuna.Trial, params: dict) -> tuple[dict | None, str | None]:
        """A retry's own checkpoint (`Objective`), else the parent's end-of-segment checkpoint continued with this
        trial's hyperparameters (`continue_with`); nothing in generation 0. Records the member's schedule."""
        segment = self._segment
        assert segment is not None
        schedule = [*(schedule_of(segment.parent) if segment.parent else []), {
            "epochs": [segment.start, segment.end], "params": dict(params),
        }]  # fmt: skip
        set_internal(trial, SCHEDULE_ATTR, schedule)
        trial.set_user_attr(SCHEDULE_ATTR, shown_schedule(schedule))
        resume, own = super()._inherited_checkpoint(trial, params)
        if resume is None and segment.parent is not None:
            artifact_id = internal_attr(segment.parent, SEGMENT_CHECKPOINT_ATTR)
            if not isinstance(artifact_id, str):
                raise RuntimeError(f"trial {segment.parent.number}, this member's parent, left no checkpoint")
            with self.store.open_reader(artifact_id) as fh:
                resume = continue_with(load_state(fh.read()), params)
        segment.started_from = resume
        return resume, own

    def _train_segment(
        self,
        params: Mapping[str, Any],
        data: Any,
        *,
        callbacks: Iterable[Callback],
        max_epochs: int | None,
        seed: int,
        resume: Mapping[str, Any] | None,
        device: str,
        capture: bool,
    ) -> TrainResult:
        segment = self._segment
        assert segment is not None
        end = SegmentEnd(segment.end, lambda saved: self._upload(segment.trial, saved))
        result = train_segment(
            self._trainer, params, data, [*callbacks, end], segment.end, segment.seed, resume, device, capture
        )
        if end.saved is None and resume is not None:  # no epoch trained (a diverged parent): its state is the end
            self._upload(segment.trial, checkpoint_bytes(resume))
        return result

    def _upload(self, trial: optuna.Trial, saved: bytes) -> None:
        """The segment's end checkpoint, as an artifact of the trial that the next generation continues."""
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"trial-{trial.number}-segment.pt"
            path.write_bytes(saved)
            artifact_id = optuna.artifacts.upload_artifact(
                artifact_store=self.store, file_path=str(path), study_or_trial=trial, mimetype=WEIGHTS_MIMETYPE
            )
        set_internal(trial, SEGMENT_CHECKPOINT_ATTR, artifact_id)


def settle_pbt(storage: optuna.storages.BaseStorage, cfg: StudyConfig, sampler: BaseSampler) -> BaseSampler:
    """Before a PBT study is created or resumed: settings it does not give (a joining worker's) are the stored
    study's; settings that differ from the stored ones are refused (the population would mean something else).
    Returns the sampler to run with (rebuilt when settings were taken from the store)."""
    if cfg.strategy != PBT:
        return sampler
    stored = None
    with contextlib.suppress(KeyError):
        study_id = storage.get_study_id_from_name(cfg.study_name)
        stored = storage.get_study_user_attrs(study_id).get(SETTINGS_ATTR)
    if not isinstance(stored, dict):
        return sampler
    given = {"population": cfg.population_size, "ready": cfg.ready, "quantile": cfg.pbt_quantile}
    for key, value in given.items():
        if value is not None and key != "population" and value != stored.get(key):
            raise UserError(
                f"study {cfg.study_name!r} in the store was made with pbt {key} {stored.get(key)}, this run gives "
                f"{value}; use another --study name"
            )
    if cfg.population_size != stored.get("population"):
        raise UserError(
            f"study {cfg.study_name!r} in the store was made with population_size {stored.get('population')}, this "
            f"run gives {cfg.population_size}; use another --study name"
        )
    if cfg.ready == stored["ready"] and cfg.pbt_quantile == stored["quantile"]:
        return sampler
    adopted = dataclasses.replace(cfg, ready=stored["ready"], pbt_quantile=stored["quantile"])
    check_pbt(adopted)
    cfg.ready, cfg.pbt_quantile = adopted.ready, adopted.pbt_quantile
    return make_sampler(cfg)
