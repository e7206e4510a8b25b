"""What a trial of a PBT study does (`docs/pbt.md`): one member's segment of `ready` epochs, continued from the
checkpoint its sampler chose (`hpo_astro.samplers.pbt.PbtSampler`: its own, or an exploited member's) with its
hyperparameters, the segment's end checkpoint uploaded to the artifact store for the next generation, its lineage
and schedule recorded on the trial. Everything else (heartbeat, surplus trials, a killed trial resumed from its own
checkpoint, results, best weights) is `hpo_astro.study.objective.Objective`'s. Before any trial, the study's PBT
settings are settled (`settle_pbt`) and recorded (`record_settings`)."""

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
from optuna.trial import FrozenTrial, TrialState

from hpo_astro.core.epochs import DIVERGED_REASON, Callback
from hpo_astro.core.train import TrainResult
from hpo_astro.errors import UserError, described, write_fault
from hpo_astro.samplers.pbt import DEFERRED_KEY, FAILED_KEY, INVALID_KEY, PLAN_KEY, SLOT_KEY, PbtSampler
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
    stored_settings,
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


@dataclass
class PbtObjective(Objective):
    """`Objective` for a PBT study: each trial trains its member's segment (see the module's docstring)."""

    _segment: _Segment | None = field(default=None, init=False)
    # A stored attribute this run cannot use (a tampered store), met inside a trial: `run_study` raises it once
    # Optuna has ended the trial (Optuna catches what an objective raises).
    store_error: UserError | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if getattr(self.train, "trial_kind", TRAINED) != TRAINED:
            raise UserError("strategy pbt needs training: a table's replay has no checkpoints to continue")
        self._trainer = self.train
        self.train = self._train_segment  # what Objective._run calls: the segment, from the chosen checkpoint

    def _run(self, trial: optuna.Trial) -> tuple[float, Any]:
        self.store_error = None
        try:
            return self._segment_run(trial)
        except UserError as exc:
            self.store_error = exc
            raise
        except (_SurplusTrial, optuna.TrialPruned):
            raise
        except Exception as exc:  # the member's training failed: its slot is decided again (`FAILED_KEY`)
            if write_fault(exc) is None:
                with contextlib.suppress(Exception):
                    trial.storage.set_trial_system_attr(trial._trial_id, FAILED_KEY, described(exc)[:200])
            raise

    def _segment_run(self, trial: optuna.Trial) -> tuple[float, Any]:
        study, storage = trial.study, trial.study._storage
        frozen = storage.get_trial(trial._trial_id)
        if DEFERRED_KEY in frozen.system_attrs:
            raise _SurplusTrial(f"pbt: {frozen.system_attrs[DEFERRED_KEY]}")
        sampler = study.sampler
        if not isinstance(sampler, PbtSampler):
            raise RuntimeError("a PBT trial needs the study's sampler to be PbtSampler")
        member = sampler.member_of(frozen)
        self._check_not_duplicate(study, frozen)
        ready, generation = pbt_settings(self.cfg)["ready"], member["generation"]
        parent = None
        if member["parent"] is not None:
            try:
                parent_id = storage.get_trial_id_from_study_id_trial_number(study._study_id, member["parent"])
            except KeyError:
                raise UserError(
                    f"trial {frozen.number}'s member record names parent trial {member['parent']}, which the study "
                    "does not hold"
                ) from None
            parent = storage.get_trial(parent_id)
        self._segment = _Segment(
            trial, generation * ready, (generation + 1) * ready, self.cfg.seed + member["founder"], parent
        )
        for key, value in {
            GENERATION_ATTR: generation,
            MEMBER_ATTR: member["member"],
            PARENT_ATTR: member["parent"],
            EXPLOITED_ATTR: member["exploited_from"],
        }.items():
            trial.set_user_attr(key, value)
        return super()._run(trial)

    @staticmethod
    def _check_not_duplicate(study: optuna.Study, trial: FrozenTrial) -> None:
        """A slot trains once: end this trial as surplus when a complete trial, or an earlier running one, of the
        same plan holds its slot (a failed trial frees its slot at once, and may be re-queued later)."""
        plan, slot = trial.system_attrs.get(PLAN_KEY), trial.system_attrs.get(SLOT_KEY)
        for t in study._storage.get_all_trials(study._study_id, deepcopy=False):
            if t.number == trial.number or t.system_attrs.get(SLOT_KEY) != slot or t.system_attrs.get(PLAN_KEY) != plan:
                continue
            if t.state == TrialState.COMPLETE or (t.state == TrialState.RUNNING and t.number < trial.number):
                raise _SurplusTrial(f"pbt: slot {slot} is already trained by trial {t.number}")

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
                raise UserError(
                    f"trial {segment.parent.number}, the parent of trial {trial.number}, names no segment checkpoint "
                    f"({SEGMENT_CHECKPOINT_ATTR})"
                )
            with self.store.open_reader(artifact_id) as fh:
                resume = continue_with(load_state(fh.read()), params)
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
        if end.saved is None and resume is not None:  # no epoch trained (nothing valid to copy): its state is the end
            self._upload(segment.trial, checkpoint_bytes(resume))
        trained = len(result.history)
        if result.stop_reason == DIVERGED_REASON or trained < segment.end:
            # ranked worst and never copied by the next generation, whose decision exploits another member
            reason = f"{result.stop_reason} after epoch {trained} of a segment ending at {segment.end}"
            segment.trial.storage.set_trial_system_attr(segment.trial._trial_id, INVALID_KEY, reason)
        return result

    def _upload(self, trial: optuna.Trial, saved: bytes) -> None:
        """The segment's end checkpoint, as an artifact of the trial that the next generation continues. A retry's
        upload replaces the one its killed trial made (which nobody else reads)."""
        earlier = internal_attr(trial.storage.get_trial(trial._trial_id), SEGMENT_CHECKPOINT_ATTR)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / f"trial-{trial.number}-segment.pt"
            path.write_bytes(saved)
            artifact_id = optuna.artifacts.upload_artifact(
                artifact_store=self.store, file_path=str(path), study_or_trial=trial, mimetype=WEIGHTS_MIMETYPE
            )
        set_internal(trial, SEGMENT_CHECKPOINT_ATTR, artifact_id)
        if isinstance(earlier, str) and earlier != artifact_id:
            with contextlib.suppress(optuna.artifacts.exceptions.ArtifactNotFound, OSError):
                self.store.remove(earlier)


def settle_pbt(
    storage: optuna.storages.BaseStorage, cfg: StudyConfig, sampler: BaseSampler
) -> tuple[StudyConfig, BaseSampler]:
    """Before a PBT study is created or resumed: the settings it does not give (a joining worker's) are the stored
    study's; settings that differ from the stored ones are refused (the population would mean something else), and
    so is a stored attribute that is no settings. Returns the configuration and sampler to run with (a copy of
    `cfg`, and a sampler rebuilt, when settings were taken from the store)."""
    if cfg.strategy != PBT:
        return cfg, sampler
    stored = None
    with contextlib.suppress(KeyError):
        study_id = storage.get_study_id_from_name(cfg.study_name)
        stored = stored_settings(storage.get_study_user_attrs(study_id).get(SETTINGS_ATTR), cfg.study_name)
    if stored is None:
        return cfg, sampler
    for key, value in {"population": cfg.population_size, "ready": cfg.ready, "quantile": cfg.pbt_quantile}.items():
        if value is not None and value != stored[key]:
            name = "population_size" if key == "population" else f"pbt {key}"
            raise UserError(
                f"study {cfg.study_name!r} in the store was made with {name} {stored[key]}, this run gives {value}; "
                "use another --study name"
            )
    if cfg.ready == stored["ready"] and cfg.pbt_quantile == stored["quantile"]:
        return cfg, sampler
    adopted = dataclasses.replace(cfg, ready=stored["ready"], pbt_quantile=stored["quantile"])
    check_pbt(adopted)
    return adopted, make_sampler(adopted)


def record_settings(study: optuna.Study, cfg: StudyConfig) -> None:
    """Once the study is created or resumed, before any trial: write its PBT settings (defaults filled in) when it
    records none yet; refuse settings that differ from those it records (a worker that settled while the study was
    being created), never overwriting them."""
    if cfg.strategy != PBT:
        return
    settings = pbt_settings(cfg)
    stored = stored_settings(study.user_attrs.get(SETTINGS_ATTR), study.study_name)
    if stored is None:
        study.set_user_attr(SETTINGS_ATTR, settings)
    elif stored != settings:
        raise UserError(
            f"study {study.study_name!r} in the store records pbt settings {stored}, this run has {settings}; "
            "use another --study name, or give no ready and pbt_quantile to take the stored ones"
        )
