"""What a benchmark is: its options (`BenchmarkSpec`), checked before anything runs, and the studies they make:
one per strategy and repeat, each an ordinary study named `bench/<name>/<strategy>/seed-<seed>`.

A "strategy" of a benchmark is an arm, `NAME[@K][+PRUNER]` (`Arm`): the strategy NAME, each configuration evaluated
with K training seeds (`--eval-seeds K` of `run`; default 1) and, after `+`, the pruner that arm runs with (default:
the benchmark's `--pruner`). `tpe`, `tpe@3` and `tpe@3+median` compare one evaluation per configuration, three, and
three with racing. An arm of K seeds runs `n_trials // K` trials: every arm trains at most `n_trials` runs, so arms
compare at equal training budget."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hpo_astro.benchmark.hypervolume import LABEL as HYPERVOLUME
from hpo_astro.core.space import SearchSpace
from hpo_astro.errors import UserError
from hpo_astro.io import check_output
from hpo_astro.study.config import MAX_SEED, StudyConfig
from hpo_astro.study.evaluation import MAX_EVAL_SEEDS
from hpo_astro.study.objectives import ObjectiveSpec
from hpo_astro.study.pbt_plan import PBT, pbt_settings
from hpo_astro.study.strategies import STARTUP_STRATEGIES

if TYPE_CHECKING:
    from hpo_astro.tabular import Table

STORE_NAME = "studies.journal"  # the default store, in the output directory (see `BenchmarkSpec.storage_url`)
STUDY_PREFIX = "bench"
DEFAULT_TOP_K = 3


@dataclass(frozen=True)
class Arm:
    """One compared search setup (see the module's docstring): its label (what `--strategies` names, and the reports
    show), strategy, training seeds per configuration, and pruner (None: the benchmark's)."""

    label: str
    strategy: str
    eval_seeds: int = 1
    pruner: str | None = None

    @classmethod
    def parse(cls, label: str) -> Arm:
        rest, _, pruner = label.partition("+")
        strategy, at, seeds = rest.partition("@")
        if at and not (seeds.isdigit() and 1 <= int(seeds) <= MAX_EVAL_SEEDS):
            raise UserError(f"strategy {label!r}: after '@' comes the number of seeds, 1 to {MAX_EVAL_SEEDS}")
        if "+" in pruner or "@" in pruner or (pruner == "" and "+" in label):
            raise UserError(f"strategy {label!r}: NAME[@SEEDS][+PRUNER], e.g. tpe@3+median")
        return cls(label, strategy, int(seeds) if at else 1, pruner or None)


@dataclass(frozen=True)
class BenchmarkSpec:
    """The `benchmark` command's options. `None` means "not set": a default applies."""

    strategies: tuple[str, ...]
    repeats: int
    n_trials: int
    out: Path
    name: str | None = None  # default: the output directory's name
    storage: str | None = None  # default: journal:<out>/studies.journal
    table: str | None = None  # tabular mode: trials answered from this table
    # A study file (`run --config`): its space, baseline and other settings apply to every study; the options
    # below override it, and the benchmark sets strategy, study name, budget, seed and store.
    base: StudyConfig | None = None
    data: Path | None = None
    channels: tuple[str, ...] | None = None
    split: tuple[float, float, float] | None = None  # train/val/test fractions (training mode; a table has its own)
    max_epochs: int | None = None
    pruner: str | None = None  # None: the file's, else each strategy's default pruner
    objective: str | None = None  # None: the file's, else accuracy
    seed: int = 0  # repeat r of every strategy runs with seed + r
    workers: int = 1  # studies run side by side, each by one process
    budget: int | None = None  # trials at which the pairwise table compares; default n_trials
    top_k: int = DEFAULT_TOP_K  # configurations per strategy re-trained, each with top_k fresh seeds
    table_seeds: int = 1  # tabular mode: the table's runs per configuration (set from the table once it is loaded)

    @property
    def benchmark_name(self) -> str:
        return self.name or Path(self.out).resolve().name or "benchmark"

    @property
    def storage_url(self) -> str:
        """The store of the studies: `--storage`, else a journal file in the output directory. A store of its own
        keeps a benchmark's hundreds of studies out of the user's `optuna.db` and makes the directory
        self-contained; a journal rather than SQLite because copying a finished in-memory study into it costs
        about 4 ms per trial against 26 ms for SQLite (measured, README "Benchmarks")."""
        return self.storage or f"journal:{Path(self.out) / STORE_NAME}"

    @property
    def pairwise_budget(self) -> int:
        return self.budget or self.n_trials

    @property
    def settings(self) -> StudyConfig:
        """The study file's settings with the options applied (not yet any one study's)."""
        options = ("data", "channels", "split", "max_epochs", "pruner", "objective")
        return (self.base or StudyConfig()).merged(**{name: getattr(self, name) for name in options})

    @property
    def objectives(self) -> tuple[ObjectiveSpec, ...]:
        return self.settings.objectives

    @property
    def multi_objective(self) -> bool:
        """Several objectives: a study is scored by the hypervolume of its front (`hpo_astro.benchmark.hypervolume`)."""
        return len(self.objectives) > 1

    @property
    def metric(self) -> str:
        """The (first metric) objective's metric name in `Metrics.as_dict()` (validation and test alike)."""
        return self.settings.metric.removeprefix("val_")

    @property
    def score(self) -> str:
        """What a study is scored by: its objective's metric, or the hypervolume of a multi-objective study's front."""
        return HYPERVOLUME if self.multi_objective else self.metric

    @property
    def maximize(self) -> bool:
        """The score's direction (a hypervolume is maximised)."""
        return self.multi_objective or self.settings.direction == "maximize"

    @property
    def pbt_arms(self) -> tuple[str, ...]:
        """The arms that run population-based training (compared at equal training epochs)."""
        return tuple(s for s in self.strategies if Arm.parse(s).strategy == PBT)

    def trials_of(self, strategy: str) -> int:
        """The trials arm `strategy` runs: `n_trials // K` for an arm of K seeds (at most `n_trials` training runs);
        for pbt `n_trials * max_epochs / ready` segments of `ready` epochs (the epochs `n_trials` trials of at most
        `max_epochs` epochs may train; `validate` refuses a budget that is not whole generations)."""
        arm = Arm.parse(strategy)
        if arm.strategy == PBT:
            return self.n_trials * (self.settings.max_epochs or 0) // pbt_settings(self.settings)["ready"]
        return max(1, self.n_trials // arm.eval_seeds)

    def read_trials(self, strategy: str) -> int:
        """The finished trials of a study of `strategy` the analysis reads (a study run longer before is cut):
        `n_trials`, a pbt arm's segments (`trials_of`)."""
        return self.trials_of(strategy) if Arm.parse(strategy).strategy == PBT else self.n_trials

    def segments_per_trial(self) -> dict[str, float]:
        """Per pbt arm, its trials (segments) per trial of the other arms: `max_epochs / ready` (equal epochs)."""
        if not self.pbt_arms:
            return {}
        ratio = (self.settings.max_epochs or 0) / pbt_settings(self.settings)["ready"]
        return dict.fromkeys(self.pbt_arms, ratio)

    @property
    def epoch_budget(self) -> int | None:
        """Training epochs per study at most: `n_trials * max_epochs` (None without an epoch cap)."""
        return None if self.settings.max_epochs is None else self.n_trials * self.settings.max_epochs

    @property
    def seed_stride(self) -> int:
        """Seeds each repeat takes: at least the most training seeds an arm evaluates a configuration with (1 unless
        an arm is `NAME@K`; a pbt arm's `population_size`: member m trains with seed + m), so the repeats' runs
        never share a seed; and prime to the table's seeds, so that a table's replay (run `(c + seed) mod seeds`)
        draws other runs in other repeats."""
        stride = max((Arm.parse(s).eval_seeds for s in self.strategies if "@" in s), default=1)
        if self.pbt_arms:
            stride = max(stride, self.settings.population_size)
        while math.gcd(stride, self.table_seeds) != 1:
            stride += 1
        return stride

    def study_seed(self, repeat: int) -> int:
        """Repeat r of every strategy: sampler and training seed `seed + r` (`seed + r * seed_stride` with arms of
        several seeds, whose runs use the seeds after it). So repeat r is paired across strategies (the same training
        seed; in tabular mode the same answers), which is what the paired tests compare."""
        return self.seed + repeat * self.seed_stride

    def fresh_seeds(self) -> list[int]:
        """Training seeds for re-training the top configurations: the ones after every repeat's, so none of them
        trained anything during the search."""
        start = self.seed + self.repeats * self.seed_stride
        return list(range(start, start + self.top_k))

    def study_name(self, strategy: str, repeat: int) -> str:
        return f"{STUDY_PREFIX}/{self.benchmark_name}/{strategy}/seed-{self.study_seed(repeat)}"

    def validate(self) -> BenchmarkSpec:
        """Refuse bad options in one line, before any store is opened or anything trained."""
        if not self.strategies:
            raise UserError("--strategies needs at least one strategy")
        duplicates = sorted({s for s in self.strategies if self.strategies.count(s) > 1})
        if duplicates:
            raise UserError(f"--strategies names {', '.join(duplicates)} more than once")
        if self.repeats < 1:
            raise UserError(f"--repeats must be at least 1, got {self.repeats}")
        if self.n_trials < 1:
            raise UserError(f"--n-trials must be positive, got {self.n_trials}")
        if self.budget is not None and not 1 <= self.budget <= self.n_trials:
            raise UserError(f"--budget must be between 1 and --n-trials ({self.n_trials}), got {self.budget}")
        if self.top_k < 0:
            raise UserError(f"--top-k must be 0 or more, got {self.top_k}")
        if self.workers < 1:
            raise UserError(f"--workers must be at least 1, got {self.workers}")
        if self.seed < 0:
            raise UserError(f"--seed must be between 0 and {MAX_SEED}, got {self.seed}")
        if self.seed + self.repeats * self.seed_stride + self.top_k - 1 > MAX_SEED:
            raise UserError(
                f"--seed {self.seed} with {self.repeats} repeats and {self.top_k} fresh seeds goes past {MAX_SEED}"
            )
        if self.table is not None and self.settings.data is not None:
            raise UserError(
                "--data and --table exclude each other: a table's answers come from the data it was made on"
            )
        if self.table is not None and self.base is not None and self.base.space != SearchSpace.paper():
            raise UserError("the study file's [space] and --table exclude each other: the table's space is searched")
        if "/" in self.benchmark_name or not self.benchmark_name.strip():
            raise UserError(f"benchmark name {self.benchmark_name!r} must be non-empty and without '/'")
        out = Path(self.out)
        if out.exists() and not out.is_dir():
            raise UserError(f"--out {out} is a file, not a directory")
        check_output(out / "index.html")  # an unwritable place is refused before anything runs
        if self.table is not None and any(spec.name == "latency" for spec in self.objectives):
            raise UserError(
                "objective 'latency' and --table exclude each other: a table holds no inference time (it is measured "
                "on a device as a study trains); params, macs and flops are a configuration's own"
            )
        if self.pbt_arms:
            self._check_pbt_budget()
        for strategy in self.strategies:
            if not strategy.strip() or "/" in strategy:
                raise UserError(f"strategy {strategy!r}: a name or package.module:ClassName, without '/'")
            arm = Arm.parse(strategy)
            if arm.eval_seeds > self.n_trials:
                raise UserError(f"strategy {strategy!r}: {arm.eval_seeds} seeds a trial need --n-trials >= that")
            self.config(strategy, 0).validate()  # unknown strategy, pruner or objective: one line
        return self

    def _check_pbt_budget(self) -> None:
        """A pbt arm: training mode, an epoch cap, and an epoch budget of whole generations (one line each)."""
        label = self.pbt_arms[0]
        if self.table is not None:
            raise UserError(f"strategy {label!r} needs training: a table's replay has no checkpoints; drop --table")
        epochs = self.settings.max_epochs
        if epochs is None:
            raise UserError(
                f"strategy {label!r} compares at equal training epochs: give --max-epochs E (the other arms train "
                f"--n-trials trials of at most E epochs, pbt as many epochs in segments of `ready` epochs)"
            )
        settings = pbt_settings(self.settings)
        population, ready = settings["population"], settings["ready"]
        generation = population * ready  # epochs of one generation
        if (self.n_trials * epochs) % generation:
            step = generation // math.gcd(generation, epochs)
            below, above = self.n_trials // step * step, (self.n_trials // step + 1) * step
            fits = f"{below} or {above}" if below else f"{above}"
            raise UserError(
                f"strategy {label!r}: {self.n_trials} trials x {epochs} epochs = {self.n_trials * epochs} epochs is no "
                f"whole number of generations of {population} members x {ready} epochs ({generation} epochs); "
                f"--n-trials that fit: multiples of {step}, e.g. {fits}"
            )

    def config(
        self,
        strategy: str,
        repeat: int,
        space: SearchSpace | None = None,
        max_epochs: int | None = None,
        split: tuple[float, float, float] | None = None,
    ) -> StudyConfig:
        """The study of `strategy`'s repeat `repeat`: an ordinary study configuration, in the benchmark's store.
        `space` and `max_epochs` are the table's in tabular mode. The study file's settings are shared by every
        strategy, so `n_startup_trials` applies to the strategies that have start-up trials and not to the others
        (`run` refuses it for a strategy without them)."""
        cfg = self.settings
        arm = Arm.parse(strategy)
        startup = cfg.n_startup_trials if arm.strategy in STARTUP_STRATEGIES else None
        pbt = arm.strategy == PBT
        n_trials = self.trials_of(strategy)  # at most n_trials training runs (pbt: as many epochs), as every arm
        if pbt:  # a member's epochs: n_trials * max_epochs / population (check_pbt refuses a cap below them)
            max_epochs = n_trials // cfg.population_size * pbt_settings(cfg)["ready"]
        return dataclasses.replace(
            cfg,
            strategy=arm.strategy,
            eval_seeds=arm.eval_seeds,
            # The benchmark's pruner is not pbt's (it trains every member every generation): only its own `+PRUNER`
            pruner=arm.pruner if pbt else arm.pruner or cfg.pruner,
            n_startup_trials=startup,
            ready=cfg.ready if pbt else None,  # the PBT settings of the study file apply to the pbt arm only
            pbt_quantile=cfg.pbt_quantile if pbt else None,
            n_trials=n_trials,
            study=self.study_name(strategy, repeat),
            storage=self.storage_url,
            seed=self.study_seed(repeat),
            space=space or cfg.space,
            max_epochs=cfg.max_epochs if max_epochs is None else max_epochs,
            split=cfg.split if split is None else split,  # a table's: what compare rebuilds its best model with
            workers=1,  # each study is run by one process (--workers runs studies side by side)
        )

    def for_table(self, table: Table) -> TableSettings:
        """The space and epoch cap of the studies in tabular mode, from the table (a cap above the table's is
        refused: the table has no epochs beyond its own)."""
        max_epochs = self.settings.max_epochs
        if max_epochs is not None and table.max_epochs is not None and max_epochs > table.max_epochs:
            raise UserError(
                f"--max-epochs {max_epochs} is more than table {table.name!r} holds ({table.max_epochs} epochs)"
            )
        try:
            space = SearchSpace.from_dict(table.space)
        except UserError as exc:
            raise UserError(f"table {table.name!r}: space: {exc}") from None
        if table.rows:  # a study completes the sampled values with the defaults: the table must hold them too
            from hpo_astro.core.hyperparameters import DEFAULT_PARAMS

            probe = {**DEFAULT_PARAMS, **{name: table.rows[0].params[name] for name in table.space}}
            try:
                table.row(probe)
            except UserError as exc:
                raise UserError(f"a study cannot replay table {table.name!r}: {exc}") from None
        split = table.info.get("split")
        return TableSettings(
            space,
            max_epochs if max_epochs is not None else table.max_epochs,
            tuple(split) if isinstance(split, list) and len(split) == 3 else None,  # type: ignore[arg-type]
        )

    def replace(self, **changes: object) -> BenchmarkSpec:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


@dataclass(frozen=True)
class TableSettings:
    space: SearchSpace
    max_epochs: int | None
    split: tuple[float, float, float] | None = None  # the table's data split (None: the default)


@dataclass(frozen=True)
class Job:
    """One study of the benchmark, in run order (repeat by repeat, so an interrupted benchmark has whole repeats)."""

    strategy: str
    repeat: int
    config: StudyConfig


def jobs(spec: BenchmarkSpec, settings: TableSettings | None = None) -> list[Job]:
    space = settings.space if settings else None
    max_epochs = settings.max_epochs if settings else None
    split = settings.split if settings else None
    return [
        Job(strategy, repeat, spec.config(strategy, repeat, space, max_epochs, split))
        for repeat in range(spec.repeats)
        for strategy in spec.strategies
    ]
