"""What a study records about itself: one schema for the study's user attributes, written by `run` and read by every
other command (`worker`, `status`, `compare`, `report`, `export`).

`run` writes the attributes one by one in field order (Optuna has no multi-attribute write), `hpo_astro_version`
last: its presence means the record is whole. A study without it was interrupted while being created, and counts as
not yet created. The attributes stay plain JSON, one per field, so optuna-dashboard shows them as they are.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo_astro import __version__
from hpo_astro.data.prepare import DEFAULT_CHANNELS
from hpo_astro.space import SearchSpace

if TYPE_CHECKING:
    from optuna.trial import FrozenTrial

    # config -> storage -> recovery -> record: the reverse import is for type hints only
    from hpo_astro.config import StudyConfig

VERSION_KEY = "hpo_astro_version"  # written last: marks the record whole
# Fields that must agree when a run resumes a stored study.
IDENTITY = ("strategy", "space", "objective", "data_fingerprint")

# Trial user attributes written by the search and read by `compare`, `report` and `export`: one name each, here.
PARAMS_FULL_ATTR = "params_full"  # the trial's whole configuration (sampled values, baseline and defaults)
TRAIN_SEED_ATTR = "train_seed"  # the seed it trained with: retraining with it gives the same model
VAL_METRICS_ATTR = "val_metrics"  # Metrics.as_dict() of its best epoch on the validation split
HISTORY_ATTR = "history"  # its per-epoch metrics (EpochMetrics as dicts); read them with `trial_history`
WALL_TIME_ATTR = "wall_time"  # seconds its training took (a replayed trial: the recorded training time)
# Study user attribute: where the best trial's weights are, {"trial", "artifact_id", "value"}.
BEST_WEIGHTS_ATTR = "best_weights"


@dataclass(frozen=True)
class StudyRecord:
    """A study's recorded configuration and data. Field order is the order the attributes are written in."""

    strategy: str
    space: dict[str, list[Any]]
    objective: str
    data_fingerprint: str
    n_trials: int
    pruner: str = "none"
    seed: int = 0
    max_epochs: int | None = None
    channels: list[str] = dataclasses.field(default_factory=lambda: list(DEFAULT_CHANNELS))
    data_source: str = ""  # the file the study was run on
    data: str | None = None  # the --data given (None: the default simulated set)
    baseline: dict[str, Any] | None = None
    greedy: bool = False
    population_size: int = 10
    artifacts: str | None = None  # checkpoint and weights folder
    hpo_astro_version: str = __version__

    @classmethod
    def from_run(
        cls, cfg: StudyConfig, fingerprint: str, channels: tuple[str, ...], source: str, artifacts: Path
    ) -> StudyRecord:
        """The record of a run of `cfg` on data with this fingerprint, channels and source file."""
        return cls(
            strategy=cfg.strategy,
            space=cfg.space.to_dict(),
            objective=cfg.objective,
            data_fingerprint=fingerprint,
            n_trials=int(cfg.n_trials or 0),
            pruner=cfg.pruner,
            seed=cfg.seed,
            max_epochs=cfg.max_epochs,
            channels=list(channels),
            data_source=source,
            data=None if cfg.data is None else str(cfg.data),
            baseline=cfg.baseline,
            greedy=cfg.greedy,
            population_size=cfg.population_size,
            artifacts=str(Path(artifacts).resolve()),
        )

    def to_attrs(self) -> dict[str, Any]:
        """The user attributes, JSON-ready, in writing order (`hpo_astro_version` last)."""
        return {field.name: _jsonable(getattr(self, field.name)) for field in dataclasses.fields(self)}

    @classmethod
    def from_attrs(cls, attrs: dict[str, Any]) -> StudyRecord | None:
        """The record in a study's user attributes; None when it is not whole (interrupted creation, or a study
        made by another program). Fields a study of an older version did not record take their defaults."""
        if VERSION_KEY not in attrs or any(key not in attrs for key in (*IDENTITY, "n_trials")):
            return None
        known = {field.name for field in dataclasses.fields(cls)}
        values = {key: value for key, value in attrs.items() if key in known}
        if values.get("channels") is None:
            values.pop("channels", None)
        return cls(**values)

    def differences(self, other: StudyRecord) -> list[str]:
        """The identity fields on which two records disagree."""
        return [key for key in IDENTITY if _jsonable(getattr(self, key)) != _jsonable(getattr(other, key))]

    def to_config(self, storage: str, study_name: str) -> StudyConfig:
        """The configuration that made the study (for a worker that joins it)."""
        from hpo_astro.config import StudyConfig

        return StudyConfig(
            strategy=self.strategy,
            n_trials=self.n_trials,
            study=study_name,
            storage=storage,
            space=SearchSpace.from_dict(self.space),
            baseline=self.baseline,
            greedy=bool(self.greedy),
            population_size=int(self.population_size),
            pruner=self.pruner,
            objective=self.objective,
            seed=int(self.seed),
            data=Path(self.data) if self.data else None,
            channels=tuple(self.channels),
            max_epochs=self.max_epochs,
            artifacts=Path(self.artifacts) if self.artifacts else None,
        )


def _jsonable(value: Any) -> Any:
    """The value as the store gives it back (JSON round trip: tuples become lists, paths strings)."""
    return json.loads(json.dumps(value, default=str))


def trial_history(trial: FrozenTrial) -> list[dict[str, Any]]:
    """A trial's per-epoch metrics (`EpochMetrics` fields as dicts, epoch order); [] if it recorded none. Every reader
    goes through here, so the way the curves are stored can change in one place."""
    return list(trial.user_attrs.get(HISTORY_ATTR) or [])
