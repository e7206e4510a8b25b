"""What `status` shows of each study in a store: its strategy, budget, trial counts and best trial. Read-only: a
missing store is no studies, and a study another program wrote (attributes of other types) is shown, never fatal."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import optuna
from optuna.trial import TrialState

from hpo_astro.errors import UserError
from hpo_astro.store.record import N_TRIALS_KEY, STRATEGY_KEY
from hpo_astro.store.storage import read_store, store_file


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
                    strategy=_shown(study.user_attrs.get(STRATEGY_KEY), str, "?"),
                    direction=study.direction.name.lower(),
                    target=_shown(study.user_attrs.get(N_TRIALS_KEY), int, None),
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
