"""A study's configuration: plain data, loaded from TOML study files and overridden by command-line options."""

from __future__ import annotations

import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hpo_astro.core.space import SearchSpace
from hpo_astro.data.prepare import DEFAULT_CHANNELS, DEFAULT_FRACTIONS
from hpo_astro.errors import UserError
from hpo_astro.io import read_regular_file
from hpo_astro.store.record import StudyRecord
from hpo_astro.store.storage import DEFAULT_GRACE, DEFAULT_HEARTBEAT
from hpo_astro.study.defaults import DEFAULT_STORAGE
from hpo_astro.study.evaluation import MAX_EVAL_SEEDS, MAX_FOLDS
from hpo_astro.study.objectives import (
    ObjectiveSpec,
    check_latency_devices,
    check_multi_objective,
    parse_objectives,
    primary,
)
from hpo_astro.study.packaged import resolve_study_file
from hpo_astro.study.pbt_plan import check_pbt
from hpo_astro.study.strategies import PRUNERS, STARTUP_STRATEGIES, check_strategy, pruner_name

DEFAULT_CHECKPOINT_INTERVAL = 10
DEFAULT_LATENCY_BATCH = 256  # as `hpo_astro.core.cost`'s (not imported here: it imports torch)
MAX_LATENCY_BATCH = 4096
MAX_SEED = 2**32 - 1  # NumPy's legacy seeding, used by Optuna's samplers, takes 32-bit seeds
MAX_HEARTBEAT = 3600  # seconds; a heartbeat rarer than hourly tells nothing in time
MAX_GRACE = 7 * 24 * 3600  # seconds (a week): beyond it a dead trial is never re-queued within a study's life
MAX_STUDY_FILE_BYTES = 4 * 2**20  # a study file is a few lines of TOML; /dev/zero or a huge file stops here


@dataclass
class StudyConfig:
    """Everything that defines a study run. `None` means "not set": a default applies."""

    strategy: str = "random"
    n_trials: int | None = None
    study: str | None = None  # study name; default: the strategy name
    storage: str = DEFAULT_STORAGE
    space: SearchSpace = field(default_factory=SearchSpace.paper)
    baseline: dict[str, Any] | None = None  # ablation: the starting configuration
    greedy: bool = False  # ablation: adopt each hyperparameter's best value after its sweep
    population_size: int = 10  # genetic: NSGA-II population (the paper used 10)
    # tpe, bohb, bayesian: random trials before the model proposes (None: Optuna's default, 10). A short study needs
    # fewer, or it is all random start-up.
    n_startup_trials: int | None = None
    pruner: str | None = None  # None: the strategy's default (hyperband for bohb, else none); set by validate()
    # One objective, or several joined by commas (`hpo_astro.study.objectives`): "accuracy", "accuracy,latency".
    objective: str = "accuracy"
    # cutouts per timed forward pass, for the latency objective (`hpo_astro.core.cost.DEFAULT_LATENCY_BATCH`)
    latency_batch: int = DEFAULT_LATENCY_BATCH
    seed: int = 0
    data: Path | None = None
    channels: tuple[str, ...] = DEFAULT_CHANNELS
    # Train/validation/test fractions of the data's stratified split: a larger validation split measures each
    # configuration with less noise (one cutout of N is 1/N of accuracy).
    split: tuple[float, float, float] = DEFAULT_FRACTIONS
    max_epochs: int | None = None
    # Noise-aware evaluation (`hpo_astro.study.evaluation`): each trial trains its configuration with `eval_seeds`
    # seeds on each of `folds` cross-validation folds (1: the fixed train/val split) and scores it by the mean.
    eval_seeds: int = 1
    folds: int = 1
    heartbeat_interval: int = DEFAULT_HEARTBEAT  # seconds; 0 disables the heartbeat (and dead-trial retry)
    # Seconds of training between a trial's checkpoints (after its first epoch, always one): 0 checkpoints every
    # epoch. A killed trial loses at most this much training; a short interval costs time on fast epochs (GPU).
    checkpoint_interval: int = DEFAULT_CHECKPOINT_INTERVAL
    grace_period: int = DEFAULT_GRACE  # seconds without heartbeat before a running trial counts as dead
    artifacts: Path | None = None  # checkpoint/weights directory; default beside the SQLite file
    workers: int = 1  # worker processes on this machine
    # Devices the workers train on: worker i uses devices[i % len(devices)]. Empty: every visible GPU (else the CPU).
    devices: tuple[str, ...] = ()
    # Record each trial's train step as a CUDA graph and replay it (on CUDA; CPU is always eager). False: eager.
    capture: bool = True
    # Train a trial's seeds as one stacked model (`hpo_astro.core.stacked`): auto (where it is faster), on, off.
    stack_runs: str = "auto"
    # pbt (`docs/pbt.md`): epochs per segment (a member's training between two exploit-and-explore steps), and the
    # share of the population that exploits the top one. None: the study's (resumed), else 2 and 0.25.
    ready: int | None = None
    pbt_quantile: float | None = None

    @property
    def study_name(self) -> str:
        return self.strategy if self.study is None else self.study

    @property
    def objectives(self) -> tuple[ObjectiveSpec, ...]:
        return parse_objectives(self.objective)

    @property
    def multi_objective(self) -> bool:
        return len(self.objectives) > 1

    @property
    def directions(self) -> list[str]:
        return [spec.direction for spec in self.objectives]

    @property
    def direction(self) -> str:
        """The direction of the metric a trial trains on (a single-objective study's only one)."""
        return primary(self.objectives).direction

    @property
    def metric(self) -> str:
        """The per-epoch metric a trial trains on and reports (`hpo_astro.study.objectives.primary`)."""
        return primary(self.objectives).key

    def validate(self) -> StudyConfig:
        check_strategy(self.strategy)  # a sampler class by import path is imported here, before the store is opened
        if self.n_trials is None:
            raise UserError("the number of trials is not set: pass --n-trials N or set n_trials in the study file")
        if self.n_trials <= 0:
            raise UserError(f"--n-trials must be positive, got {self.n_trials}")
        objectives = parse_objectives(self.objective)  # an unknown or repeated name: one line
        self.objective = ",".join(spec.label for spec in objectives)  # as the study records it: no spaces
        explicit_pruner = self.pruner is not None
        self.pruner = pruner_name(self)  # the pruner actually used: what the study records
        if self.pruner not in PRUNERS:
            raise UserError(f"unknown pruner {self.pruner!r}; known: {', '.join(PRUNERS)}")
        if len(objectives) > 1:
            check_multi_objective(self.strategy, self.greedy, self.pruner, explicit_pruner)
        if not 1 <= self.latency_batch <= MAX_LATENCY_BATCH:
            raise UserError(f"latency_batch must be between 1 and {MAX_LATENCY_BATCH}, got {self.latency_batch}")
        if not 0 <= self.seed <= MAX_SEED:
            raise UserError(f"seed must be between 0 and {MAX_SEED} (2**32 - 1), got {self.seed}")
        if self.population_size < 2:
            raise UserError(f"population_size must be at least 2, got {self.population_size}")
        if self.n_startup_trials is not None:
            if self.n_startup_trials < 0:
                raise UserError(f"n_startup_trials must be >= 0, got {self.n_startup_trials}")
            if self.strategy not in STARTUP_STRATEGIES:
                raise UserError(
                    f"n_startup_trials applies to the {', '.join(STARTUP_STRATEGIES)} strategies, not {self.strategy!r}"
                )
        if self.max_epochs is not None and self.max_epochs < 1:
            raise UserError(f"max_epochs must be at least 1, got {self.max_epochs}")
        from hpo_astro.data.prepare import PrepConfig

        PrepConfig(channels=self.channels, fractions=self.split)  # a bad split or channel: one line, before the data
        if not 1 <= self.eval_seeds <= MAX_EVAL_SEEDS:
            raise UserError(f"eval_seeds must be between 1 and {MAX_EVAL_SEEDS}, got {self.eval_seeds}")
        if self.seed + self.eval_seeds - 1 > MAX_SEED:
            raise UserError(
                f"seed + eval_seeds - 1 must be at most {MAX_SEED}: the runs train with seeds seed, seed+1, …"
            )
        if self.folds != 1 and not 2 <= self.folds <= MAX_FOLDS:
            raise UserError(f"folds must be 1 (no cross-validation) or between 2 and {MAX_FOLDS}, got {self.folds}")
        if self.heartbeat_interval < 0 or (self.heartbeat_interval and self.grace_period <= self.heartbeat_interval):
            raise UserError(
                f"grace_period ({self.grace_period}) must exceed heartbeat_interval ({self.heartbeat_interval})"
            )
        if self.heartbeat_interval > MAX_HEARTBEAT or self.grace_period > MAX_GRACE:
            raise UserError(
                f"heartbeat_interval must be at most {MAX_HEARTBEAT} s and grace_period at most {MAX_GRACE} s "
                f"(one week), got {self.heartbeat_interval} and {self.grace_period}"
            )
        if self.checkpoint_interval < 0:
            raise UserError(f"checkpoint_interval must be >= 0 seconds, got {self.checkpoint_interval}")
        from hpo_astro.core.stacked import STACK_MODES

        if self.stack_runs not in STACK_MODES:
            raise UserError(f"stack_runs must be one of {', '.join(STACK_MODES)}, got {self.stack_runs!r}")
        from hpo_astro.core.train import resolve_device  # a device that is unknown or not here: one line

        self.devices = tuple(str(resolve_device(name)) for name in self.devices)
        check_latency_devices(objectives, self.devices)
        if self.workers < 1:
            raise UserError(f"--workers must be at least 1, got {self.workers}")
        from hpo_astro.store.storage import refuse_in_memory  # before the data is loaded or simulated

        refuse_in_memory(self.storage)
        if not self.study_name.strip():
            raise UserError("the study name is empty: give --study a name, or leave it out to use the strategy's")
        if self.baseline is not None:
            self.baseline = {name: self.space.match(name, value) for name, value in self.baseline.items()}
        check_pbt(self)
        return self

    @classmethod
    def from_record(cls, record: StudyRecord, storage: str, study_name: str) -> StudyConfig:
        """The configuration that made a stored study (for a worker that joins it)."""
        return cls(
            strategy=record.strategy,
            n_trials=record.n_trials,
            study=study_name,
            storage=storage,
            space=dataclasses.replace(SearchSpace.from_dict(record.space), fixed_sampled=record.fixed_params is None),
            baseline=record.baseline,
            greedy=bool(record.greedy),
            population_size=int(record.population_size),
            n_startup_trials=record.n_startup_trials,
            pruner=record.pruner,
            objective=record.objective,
            latency_batch=int(record.latency_batch or DEFAULT_LATENCY_BATCH),
            seed=int(record.seed),
            data=Path(record.data) if record.data else None,
            channels=tuple(record.channels),
            split=tuple(record.split),  # type: ignore[arg-type]
            max_epochs=record.max_epochs,
            eval_seeds=int(record.eval_seeds),
            folds=int(record.folds),
            artifacts=Path(record.artifacts) if record.artifacts else None,
        )

    def merged(self, **overrides: Any) -> StudyConfig:
        """A copy with every override that is not None applied (command-line options over the file)."""
        return dataclasses.replace(self, **{k: v for k, v in overrides.items() if v is not None})


_FILE_KEYS = {f.name for f in dataclasses.fields(StudyConfig)}


def read_study_file(path: str | Path) -> dict[str, Any]:
    """A study file's TOML: read only when it is a regular file of at most `MAX_STUDY_FILE_BYTES` (a device, a FIFO
    or a huge file is one error line, not a hang or the machine's memory); opened without blocking, checked on the
    open file. A bare name (`quick-demo`) that is no file here is the packaged study file of that name."""
    path = resolve_study_file(path)
    raw = read_regular_file(path, MAX_STUDY_FILE_BYTES, "study file")
    if len(raw) > MAX_STUDY_FILE_BYTES:
        raise UserError(f"{path}: larger than {MAX_STUDY_FILE_BYTES // 2**20} MiB, not a study file")
    try:
        return tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise UserError(f"cannot read study file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: invalid TOML: {exc}") from None
    except RecursionError:
        raise UserError(f"{path}: invalid TOML: values nested too deeply") from None


def load_config(path: str | Path) -> StudyConfig:
    """Read a TOML study file (or a packaged one by name). Unknown keys, unknown hyperparameters and empty value lists
    are errors."""
    path = resolve_study_file(path)
    raw = read_study_file(path)
    unknown = sorted(set(raw) - _FILE_KEYS)
    if unknown:
        raise UserError(f"{path}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_FILE_KEYS))}")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        values[key] = _convert(path, key, value)
    try:
        return StudyConfig(**values)
    except TypeError as exc:
        raise UserError(f"{path}: {exc}") from None


def _convert(path: Path, key: str, value: Any) -> Any:
    expected = {
        "strategy": str,
        "study": str,
        "storage": str,
        "pruner": str,
        "objective": str,
        "n_trials": int,
        "population_size": int,
        "n_startup_trials": int,
        "seed": int,
        "max_epochs": int,
        "eval_seeds": int,
        "folds": int,
        "greedy": bool,
        "capture": bool,
        "stack_runs": str,
        "ready": int,
        "pbt_quantile": float,
        "heartbeat_interval": int,
        "checkpoint_interval": int,
        "grace_period": int,
        "workers": int,
        "latency_batch": int,
    }
    if key == "objective" and isinstance(value, list) and all(isinstance(name, str) for name in value):
        return ",".join(value)  # objective = ["accuracy", "latency"]: the same as "accuracy,latency"
    if key in expected:
        kind = expected[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise UserError(f"{path}: {key} must be a {kind.__name__}, got {value!r}")
        return value
    if key == "space":
        if not isinstance(value, dict):
            raise UserError(f"{path}: [space] must be a table of name = [values]")
        try:
            return SearchSpace.from_dict(value)
        except UserError as exc:
            raise UserError(f"{path}: space: {exc}") from None
    if key == "baseline":
        if not isinstance(value, dict):
            raise UserError(f"{path}: [baseline] must be a table of name = value")
        return dict(value)
    if key in ("data", "artifacts"):
        if not isinstance(value, str):
            raise UserError(f"{path}: {key} must be a path string, got {value!r}")
        return Path(value)
    if key == "devices":
        if isinstance(value, str):
            value = [d.strip() for d in value.split(",") if d.strip()]
        if not isinstance(value, list) or not all(isinstance(d, str) for d in value):
            raise UserError(f"{path}: devices must be a list of device names (cpu, cuda, cuda:N)")
        return tuple(value)
    if key == "split":
        return parse_split(value, str(path))
    if key == "channels":
        if isinstance(value, str):
            value = [c.strip() for c in value.split(",")]
        if not isinstance(value, list) or not value or not all(isinstance(c, str) for c in value):
            raise UserError(f"{path}: channels must be a non-empty list of plane names")
        return tuple(value)
    raise UserError(f"{path}: unknown key {key}")  # pragma: no cover - guarded by _FILE_KEYS


def parse_split(value: Any, where: str = "--split") -> tuple[float, float, float]:
    """Train/validation/test fractions: three positive numbers summing to 1, as a list or "0.4,0.3,0.3"."""
    if isinstance(value, str):
        try:
            value = [float(v) for v in value.split(",")]
        except ValueError:
            raise UserError(f"{where}: split must be three fractions, e.g. 0.4,0.3,0.3, got {value!r}") from None
    numbers = isinstance(value, list | tuple) and all(
        isinstance(v, int | float) and not isinstance(v, bool) for v in value
    )
    if not numbers or len(value) != 3 or any(not 0 < v < 1 for v in value) or abs(sum(value) - 1) > 1e-6:
        raise UserError(
            f"{where}: split must be three fractions above 0 summing to 1 (train, val, test), got {value!r}"
        )
    return (float(value[0]), float(value[1]), float(value[2]))
