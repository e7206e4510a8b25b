"""Running a benchmark's studies (and its re-trainings): in this process, or in K worker processes that take the
jobs in turn, each study run whole by one process (so TPE, Bayesian and genetic searches stay reproducible).

Tabular mode runs a study that is not yet in the store in an in-memory Optuna store and copies it into the store when
it has finished: per trial that costs a few milliseconds against about 90 ms with every write going to SQLite
(measured, README "Benchmarks"). An interrupted in-memory study is simply run again (it takes a fraction of a second
and gives the same trials: one process, fixed seeds); a study already in the store (a copy cut short, or one started
by hand) is resumed there, as `run` resumes it. Training mode runs every study in the store, trial by trial,
resumable as any study, with the data loaded once per process.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from hpo_astro.benchmark.plan import Job
from hpo_astro.errors import HpoAstroError, StudyFailed, described
from hpo_astro.study.interrupts import process_interrupts
from hpo_astro.study.run import run_study

if TYPE_CHECKING:
    import optuna

    from hpo_astro.benchmark.journal import BatchingJournal
    from hpo_astro.data.prepare import DataSplits
    from hpo_astro.tabular import Table


def replay_storage() -> optuna.storages.InMemoryStorage:
    """The in-memory store a replayed study runs in before it is copied into the benchmark's store.

    Optuna's `InMemoryStorage` copies a trial, and the attribute dictionary it changes, on every write, so that a
    `FrozenTrial` handed out earlier never changes under its holder. A replayed trial writes about twenty user
    attributes (its record), each a copy of the trial and of its growing attribute dictionary. This store writes
    user attributes, and hpo-astro's own system attributes (`SYSTEM_PREFIX`: its configuration, worker, curves), in
    place instead: Optuna's samplers and pruners never read them (the objective reads its own at once). Everything
    else stays copy-on-write: the successive-halving pruner (Hyperband's) writes a system attribute and then counts
    the trials it read before, itself excluded, so an in-place system attribute of Optuna's changes which trials it
    promotes (measured: a bohb benchmark changed)."""
    import optuna

    from hpo_astro.store.record import SYSTEM_PREFIX

    class UserAttrsInPlaceStorage(optuna.storages.InMemoryStorage):
        def set_trial_user_attr(self, trial_id: int, key: str, value: Any) -> None:
            with self._lock:
                trial = self._get_trial(trial_id)
                self.check_trial_is_updatable(trial_id, trial.state)
                trial.user_attrs[key] = value

        def set_trial_system_attr(self, trial_id: int, key: str, value: Any) -> None:
            if not key.startswith(SYSTEM_PREFIX):
                return super().set_trial_system_attr(trial_id, key, value)
            with self._lock:
                trial = self._get_trial(trial_id)
                self.check_trial_is_updatable(trial_id, trial.state)
                trial.system_attrs[key] = value

    return UserAttrsInPlaceStorage()


@dataclass(frozen=True)
class StudyOutcome:
    study: str
    strategy: str
    repeat: int
    ran: int  # trials run now (0: the study was already finished)
    finished: int
    target: int
    seconds: float
    in_memory: bool  # run in memory, then copied into the store


@dataclass(frozen=True)
class RetrainJob:
    """Train one configuration with one fresh seed and measure it on validation and test (training mode); a PBT
    member: its schedule, segment by segment (`hpo_astro.study.pbt_plan.retrain`), with the fresh seed."""

    strategy: str
    params: dict[str, Any]
    seed: int
    max_epochs: int | None
    schedule: tuple[dict[str, Any], ...] | None = None


@dataclass(frozen=True)
class RetrainOutcome:
    job: RetrainJob
    val: dict[str, float]
    test: dict[str, float]
    seconds: float


@dataclass(frozen=True)
class Source:
    """Where trials get their answers: a table, or training on the data file (None: the simulated set)."""

    table: Table | None
    data: Any = None  # Path | None
    channels: tuple[str, ...] = ()
    split: tuple[float, float, float] | None = None  # train/val/test fractions (None: the default)


class Runner:
    """Runs jobs in one process: the store opened once, the table's trainer, or the data loaded once."""

    def __init__(self, url: str, source: Source) -> None:
        self.url, self.source = url, source
        self._storage: optuna.storages.BaseStorage | None = None
        self._data: DataSplits | None = None
        self._journal: BatchingJournal | None = None
        # One replay for every study of this process: it keeps what it learns about rows (the models' sizes).
        from hpo_astro.tabular import TableReplay

        self._train = TableReplay(source.table) if source.table is not None else None

    @property
    def storage(self) -> optuna.storages.BaseStorage:
        if self._storage is None:
            from hpo_astro.store.storage import open_storage

            storage = open_storage(self.url)  # checks the store (or creates it) as `run` does
            if self.url.startswith("journal:"):
                import optuna

                from hpo_astro.benchmark.journal import BatchingJournal

                self._journal = BatchingJournal(self.url.removeprefix("journal:"))
                storage = optuna.storages.JournalStorage(self._journal)
            self._storage = storage
        return self._storage

    def _copy(self, name: str, memory: optuna.storages.BaseStorage) -> None:
        """Copy the finished study `name` from `memory` into the store: in one write on a journal store."""
        import optuna

        target = self.storage
        batch = self._journal.batch() if self._journal is not None else contextlib.nullcontext()
        try:
            with process_interrupts.deferred(), batch:  # Ctrl-C waits for the copy (milliseconds): all or nothing
                optuna.copy_study(from_study_name=name, from_storage=memory, to_storage=target)
        except BaseException:
            self._storage = self._journal = None  # its replay may hold lines that were not written: reopen
            raise

    @property
    def data(self) -> DataSplits:
        if self._data is None:
            if self.source.table is not None:
                from hpo_astro.tabular import table_data

                self._data = table_data(self.source.table)
            else:
                from hpo_astro.data.prepare import PrepConfig, load_splits

                fractions = {"fractions": self.source.split} if self.source.split else {}
                self._data = load_splits(self.source.data, PrepConfig(channels=self.source.channels, **fractions))
        return self._data

    def run(self, job: Job | RetrainJob) -> StudyOutcome | RetrainOutcome:
        if isinstance(job, RetrainJob):
            return self.retrain(job)
        return self.study(job)

    def study(self, job: Job) -> StudyOutcome:

        start = time.perf_counter()
        cfg = job.config
        table, train = self.source.table, self._train
        try:
            self.storage.get_study_id_from_name(cfg.study_name)
            exists = True
        except KeyError:
            exists = False
        if table is None or exists:
            result = run_study(cfg, train=train, data=self.data, storage=self.storage)
            in_memory = False
        else:
            memory = replay_storage()
            result = run_study(cfg, train=train, data=self.data, storage=memory)
            self._copy(cfg.study_name, memory)
            in_memory = True
        return StudyOutcome(
            cfg.study_name,
            job.strategy,
            job.repeat,
            result.ran,
            result.finished,
            result.target,
            time.perf_counter() - start,
            in_memory,
        )

    def retrain(self, job: RetrainJob) -> RetrainOutcome:
        from hpo_astro.core.train import evaluate
        from hpo_astro.core.train import train as train_configuration

        start = time.perf_counter()
        data = self.data
        with process_interrupts.allowed():
            if job.schedule:
                from hpo_astro.study.pbt_plan import retrain as retrain_schedule

                result = retrain_schedule(job.schedule, data, seed=job.seed)
            else:
                result = train_configuration(
                    job.params, data, callbacks=(), max_epochs=job.max_epochs, seed=job.seed, resume=None, device="auto"
                )
        test = evaluate(result.model, data.x_test, data.y_test, data.pos_weight)
        return RetrainOutcome(job, result.val_metrics.as_dict(), test.as_dict(), time.perf_counter() - start)


Outcome = StudyOutcome | RetrainOutcome


def run_jobs(
    jobs: Sequence[Job | RetrainJob],
    url: str,
    source: Source,
    workers: int = 1,
    on_outcome: Callable[[Outcome], None] | None = None,
) -> list[Outcome]:
    """Run every job, in this process or in `workers` processes; outcomes in job order. Ctrl-C / SIGTERM stop every
    process (a running trial is re-queued, as in `run`) and raise KeyboardInterrupt: the same command resumes."""
    if not jobs:
        return []
    if workers <= 1 or len(jobs) == 1:
        runner = Runner(url, source)
        outcomes = []
        with process_interrupts.installed():
            for job in jobs:
                outcome = runner.run(job)
                outcomes.append(outcome)
                if on_outcome:
                    on_outcome(outcome)
        return outcomes
    return _pool(jobs, url, source, min(workers, len(jobs)), on_outcome)


def _pool(
    jobs: Sequence[Job | RetrainJob],
    url: str,
    source: Source,
    workers: int,
    on_outcome: Callable[[Outcome], None] | None,
) -> list[Outcome]:
    from hpo_astro.study.workers import ParentContext, child_processes, threads_per_worker, worker_context

    context = worker_context()  # never a fork of this process, which holds store connections and threads
    tasks: multiprocessing.Queue = context.Queue()
    results: multiprocessing.Queue = context.Queue()
    for index, job in enumerate(jobs):
        tasks.put((index, job))
    for _ in range(workers):
        tasks.put(None)
    threads = threads_per_worker(workers)
    children = [
        context.Process(
            target=_child, args=(url, source, threads, tasks, results, ParentContext()), name=f"hpo-astro-bench-{i}"
        )
        for i in range(workers)
    ]
    outcomes: list[Outcome | None] = [None] * len(jobs)
    remaining = len(jobs)
    with child_processes(children), process_interrupts.installed():
        for child in children:
            child.start()
        while remaining:
            try:
                kind, index, payload = results.get(timeout=0.5)
            except queue.Empty:
                if not any(child.is_alive() for child in children):
                    raise StudyFailed("the benchmark's worker processes ended before their jobs") from None
                continue
            if kind == "error":
                raise payload  # the worker's own error: its class, so its exit code, kept
            outcomes[index] = payload
            remaining -= 1
            if on_outcome:
                on_outcome(payload)
    return [o for o in outcomes if o is not None]


def _child(
    url: str,
    source: Source,
    threads: int,
    tasks: multiprocessing.Queue,
    results: multiprocessing.Queue,
    parent: None = None,  # a ParentContext, adopted as it was unpickled
) -> None:
    import sys

    import torch

    torch.set_num_threads(threads)
    runner = Runner(url, source)
    try:
        with process_interrupts.installed():
            while (item := tasks.get()) is not None:
                index, job = item
                try:
                    results.put(("ok", index, runner.run(job)))
                except HpoAstroError as exc:  # a one-line error: the parent raises it again as it is
                    results.put(("error", index, type(exc)(str(exc))))
                    return
                except Exception as exc:  # a bug: the parent says so in one line, the traceback stays here
                    import traceback

                    traceback.print_exc()
                    results.put(("error", index, StudyFailed(f"a benchmark worker failed: {described(exc)}")))
                    return
    except KeyboardInterrupt:
        sys.exit(130)
