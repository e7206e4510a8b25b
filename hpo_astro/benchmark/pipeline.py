"""The benchmark end to end: check the options, run (or resume) every study, re-train the top configurations
(training mode), analyse, write the report. A finished benchmark runs nothing: every study is already complete in
the store, every evaluation is cached there, every re-training in DIR/retrained.json, so it only re-renders."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hpo_astro.benchmark.analysis import Analysis, analyze
from hpo_astro.benchmark.collect import (
    collect,
    read_retrained,
    retrain_key,
    score,
    top_configurations,
    write_retrained,
)
from hpo_astro.benchmark.hypervolume import Box
from hpo_astro.benchmark.plan import BenchmarkSpec, TableSettings, jobs
from hpo_astro.benchmark.render import write_all
from hpo_astro.benchmark.runner import Outcome, RetrainJob, RetrainOutcome, Source, StudyOutcome, run_jobs
from hpo_astro.errors import UserError

if TYPE_CHECKING:
    from hpo_astro.tabular import Table

Events = Callable[[str], None]


@dataclass
class BenchmarkResult:
    spec: BenchmarkSpec
    analysis: Analysis
    files: list[Path]
    studies: list[StudyOutcome] = field(default_factory=list)
    retrained: list[RetrainOutcome] = field(default_factory=list)  # re-trainings done now (not from the cache)

    @property
    def trials_run(self) -> int:
        return sum(o.ran for o in self.studies)

    def seconds_per_trial(self) -> dict[str, float]:
        """Per strategy, wall seconds per trial run now (studies that ran trials; the copy into the store
        included): the overhead of a replayed trial in tabular mode, training included otherwise."""
        out = {}
        for strategy in self.spec.strategies:
            ran = [o for o in self.studies if o.strategy == strategy and o.ran]
            if ran:
                out[strategy] = sum(o.seconds for o in ran) / sum(o.ran for o in ran)
        return out


def run_benchmark(
    spec: BenchmarkSpec,
    events: Events | None = None,
    on_outcome: Callable[[Outcome], None] | None = None,
    table: Table | None = None,
) -> BenchmarkResult:
    """Run or resume the benchmark `spec` and write its report into `spec.out`. `table`: the table of tabular mode
    already loaded (else `spec.table` names it)."""

    spec.validate()
    settings: TableSettings | None = None
    if table is not None:
        settings = spec.for_table(table)
    elif spec.table is not None:
        from hpo_astro.study.config import DEFAULT_STORAGE
        from hpo_astro.tabular import load_table

        # A `tabulate` study is looked for in --storage, else where `tabulate` writes by default.
        table = load_table(spec.table, spec.storage or DEFAULT_STORAGE)
        settings = spec.for_table(table)
    if table is not None:
        spec = spec.replace(table_seeds=table.seeds)  # the repeats' seeds draw every run of the table
    plan = jobs(spec, settings)
    for job in plan[: len(spec.strategies)]:  # the space, baseline and the like: one line before anything is written
        from hpo_astro.study.strategies import make_sampler

        make_sampler(job.config.validate())
    try:
        Path(spec.out).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the output directory {spec.out}: {exc.strerror or exc}") from None
    with _only_benchmark_in(Path(spec.out)):
        return _run(spec, plan, table, settings, events, on_outcome)


@contextlib.contextmanager
def _only_benchmark_in(out: Path) -> Iterator[None]:
    """An exclusive lock on DIR for the whole run (an flock on the directory itself: no lock file is left behind, and
    the kernel releases it when the process dies, kill -9 included). A second benchmark on the same DIR is refused
    in one line; it used to race the first to create the same studies and die with a traceback."""
    try:
        fd = os.open(out, os.O_RDONLY)
    except OSError as exc:
        raise UserError(f"cannot open the output directory {out}: {exc.strerror or exc}") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(
                f"another benchmark is running in {out}; wait for it to end (re-running its command then resumes "
                "and re-renders), or choose another --out"
            ) from None
        except OSError:
            pass  # a file system without flock: run unlocked, as before
        yield
    finally:
        os.close(fd)


def _run(
    spec: BenchmarkSpec,
    plan: list[Any],
    table: Table | None,
    settings: TableSettings | None,
    events: Events | None,
    on_outcome: Callable[[Outcome], None] | None,
) -> BenchmarkResult:
    from hpo_astro.store.storage import read_store

    cfg = spec.settings
    source = Source(table, cfg.data, cfg.channels, cfg.split)
    outcomes = run_jobs(plan, spec.storage_url, source, spec.workers, on_outcome)
    studies = [o for o in outcomes if isinstance(o, StudyOutcome)]

    with read_store(spec.storage_url) as storage:
        runs = collect(spec, plan, storage, tabular=table is not None, events=events, table=table)
    box: Box | None = None
    if spec.multi_objective:  # a study's score: the hypervolume of its front, in one box for the whole benchmark
        runs, box = score(runs, spec.objectives)
    top = top_configurations(runs, 0 if box else spec.top_k, spec.maximize)  # a front has no top configurations
    retrained_now: list[RetrainOutcome] = []
    retrained: dict[tuple[str, str], list[tuple[int, dict[str, float], dict[str, float]]]] = {}
    if table is None and spec.top_k:
        fingerprint = runs[0].fingerprint if runs else ""
        cache = read_retrained(spec.out)
        todo: dict[str, RetrainJob] = {}  # by key: a configuration two strategies found is re-trained once
        for candidates in top.values():
            for c in candidates:
                for seed in spec.fresh_seeds():
                    key = retrain_key(fingerprint, c.params, seed, cfg.max_epochs, c.schedule)
                    if key not in cache:
                        todo.setdefault(key, RetrainJob(c.strategy, c.params, seed, cfg.max_epochs, c.schedule))

        def keep(outcome: Outcome) -> None:
            if isinstance(outcome, RetrainOutcome):
                job = outcome.job
                key = retrain_key(fingerprint, job.params, job.seed, job.max_epochs, job.schedule)
                cache[key] = {"val": outcome.val, "test": outcome.test, "seconds": outcome.seconds}
                write_retrained(spec.out, cache)  # after each one: an interrupted check resumes
                retrained_now.append(outcome)
            if on_outcome:
                on_outcome(outcome)

        run_jobs(list(todo.values()), spec.storage_url, source, spec.workers, keep)
        for candidates in top.values():
            for c in candidates:
                done = []
                for seed in spec.fresh_seeds():
                    entry = cache[retrain_key(fingerprint, c.params, seed, cfg.max_epochs, c.schedule)]
                    done.append((seed, entry["val"], entry["test"]))
                retrained[(c.strategy, c.key)] = done

    analysis = analyze(
        runs,
        spec.strategies,
        spec.n_trials,
        spec.maximize,
        spec.score,
        spec.pairwise_budget,
        top,
        retrained,
        multi_objective=box is not None,
        segments=spec.segments_per_trial(),
    )
    files = write_all(spec.out, analysis, facts(spec, table, settings, box), tabular=table is not None)
    return BenchmarkResult(spec, analysis, files, studies, retrained_now)


def facts(spec: BenchmarkSpec, table: Any, settings: TableSettings | None, box: Box | None = None) -> dict[str, Any]:
    """The benchmark's settings as the report states them (also the "benchmark" object of benchmark.json)."""
    from hpo_astro.results.page import display_url

    cfg = spec.settings
    out: dict[str, Any] = {
        "name": spec.benchmark_name,
        "strategies": list(spec.strategies),
        "repeats": spec.repeats,
        "n_trials": spec.n_trials,
        "pairwise_budget": spec.pairwise_budget,
        "objective": cfg.objective,
        "direction": "maximize" if spec.maximize else "minimize",  # the score's (a hypervolume is maximised)
        "seeds": f"repeat r: seed {spec.seed} + r{f' x {spec.seed_stride}' if spec.seed_stride > 1 else ''} "
        f"({spec.study_seed(0)}..{spec.study_seed(spec.repeats - 1)}), the same for every strategy",
        "fresh_seeds": spec.fresh_seeds() if table is None and box is None else [],
        "top_k": spec.top_k,
        "pruner": cfg.pruner or "each strategy's default",
        "max_epochs": settings.max_epochs if settings else cfg.max_epochs,
        "storage": display_url(spec.storage_url),
        "study_names": spec.study_name("<strategy>", 0).replace(f"seed-{spec.study_seed(0)}", "seed-<seed>"),
        "mode": "tabular" if table is not None else "training",
    }
    if spec.pbt_arms:  # compared at equal training epochs (`hpo_astro.benchmark.plan`)
        from hpo_astro.study.pbt_plan import pbt_settings

        pbt = pbt_settings(spec.settings)
        out["epoch_budget"] = spec.epoch_budget
        out["trials_per_arm"] = {s: spec.trials_of(s) for s in spec.strategies}
        out["pbt"] = {
            **pbt,
            "generations": spec.trials_of(spec.pbt_arms[0]) // pbt["population"],
            "member_epochs": spec.trials_of(spec.pbt_arms[0]) // pbt["population"] * pbt["ready"],
            "trial": "one member's segment of `ready` epochs, never stopped early",
        }
    if box is not None:
        out["score"] = spec.score
        out["directions"] = cfg.directions
        out["top_k"] = 0  # a front has no top configurations to re-train
        out["hypervolume"] = box.to_json()  # the bounds: every hypervolume can be recomputed from the studies
    if table is not None:
        out["table"] = {
            "name": table.name,
            "rows": len(table.rows),
            "seeds": table.seeds,
            "configurations": table.size,
            "data_fingerprint": table.data_fingerprint,
            "seed": table.seed,
            "max_epochs": table.max_epochs,
        }
        out["space"] = table.search_space.to_dict()
    else:
        out["data"] = str(cfg.data) if cfg.data else "the simulated set"
        out["channels"] = list(cfg.channels)
        out["space"] = cfg.space.to_dict()
    return out
