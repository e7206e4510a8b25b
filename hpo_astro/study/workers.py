"""Parallel workers on one study: K processes on this machine, or workers that join from anywhere.

Every worker runs the same `run_study` loop against the shared store; the store is the only coordination
(trial numbers, the trial queue, heartbeats), so a worker can start, die or be added at any time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import multiprocessing
import os
import signal
import sys
from collections.abc import Iterator
from typing import Any

import optuna

from hpo_astro.core.train import TrainFn
from hpo_astro.errors import UserError
from hpo_astro.store.record import StudyRecord
from hpo_astro.store.storage import open_existing_store
from hpo_astro.study.config import StudyConfig
from hpo_astro.study.interrupts import optuna_level, set_optuna_level
from hpo_astro.study.run import RunEvents, RunResult, StudyFailed, run_study
from hpo_astro.study.strategies import is_import_path


def threads_per_worker(workers: int, cores: int | None = None) -> int:
    """Split the machine's cores between the workers (at least one thread each)."""
    return max(1, (cores or os.cpu_count() or 1) // max(1, workers))


def device_pool(devices: tuple[str, ...], cuda_devices: int | None = None) -> list[str]:
    """The devices workers are placed on, in turn: the given ones, else every visible GPU, else the CPU."""
    if devices:
        return list(devices)
    if cuda_devices is None:
        import torch

        cuda_devices = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"cuda:{i}" for i in range(cuda_devices)] or ["cpu"]


def placed(cfg: StudyConfig, worker: int, pool: list[str]) -> StudyConfig:
    """`cfg` for worker `worker`: it trains on pool[worker % len(pool)] (several workers share a GPU when there are
    more workers than GPUs; each pays CUDA's start-up once, for all its trials)."""
    return dataclasses.replace(cfg, devices=(pool[worker % len(pool)],))


def worker_context() -> multiprocessing.context.BaseContext:
    """How worker processes start: from a fork server that imported torch and the study engine once ("forkserver",
    where the platform has it), so each worker starts in milliseconds instead of importing them again (seconds, as
    a fresh "spawn" interpreter does). The server never trains nor opens a store: nothing unsafe to fork is in it.
    A worker takes the parent's environment and output as they are when the worker starts (`ParentContext`), not
    the server's."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["hpo_astro.study.run"])
    return context


class ParentContext:
    """What a worker takes from its parent as it is when the worker starts, not as it was when the fork server
    started: the environment variables (cache folder, visible GPUs, thread counts), the standard output and error
    (a terminal, a log file, a test's capture) and the level of Optuna's logging. Pickled into the worker (the
    output as duplicated descriptors)."""

    def __init__(self) -> None:
        self.environment = dict(os.environ)
        self.optuna_level = optuna_level()

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        from multiprocessing import reduction

        if not hasattr(reduction, "DupFd"):  # Windows: workers are spawned and inherit the output anyway
            return (_adopt, (self.environment, None, None, self.optuna_level))
        # The process's descriptors 1 and 2, as a spawned interpreter inherits them (whatever sys.stdout now is).
        return (_adopt, (self.environment, reduction.DupFd(1), reduction.DupFd(2), self.optuna_level))


def _adopt(environment: dict[str, str], stdout: Any, stderr: Any, level: int | None = None) -> None:
    """In the worker, as it unpickles its `ParentContext`: the parent's environment, output and level of Optuna's
    logging become its own."""
    os.environ.clear()
    os.environ.update(environment)
    if level is not None:
        set_optuna_level(level)
    for wrapped, fd in ((stdout, 1), (stderr, 2)):
        if wrapped is None:
            continue
        received = wrapped.detach()
        os.dup2(received, fd)
        os.close(received)


def _child(
    cfg: StudyConfig,
    worker: int,
    threads: int,
    train: TrainFn | None = None,
    parent: None = None,  # a ParentContext, adopted as it was unpickled
    deadline: float | None = None,
) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        run_study(cfg, train=train, deadline=deadline)
    except KeyboardInterrupt:
        sys.exit(130)
    except (StudyFailed, UserError) as exc:
        print(f"worker {worker}: {exc}", file=sys.stderr)
        sys.exit(1)


def run_workers(
    cfg: StudyConfig,
    events: RunEvents | None = None,
    threads: int | None = None,
    train: TrainFn | None = None,
    deadline: float | None = None,
) -> RunResult:
    """Run `cfg.workers` processes on the study: this one (with the display) plus `workers - 1` children,
    each with `threads` torch threads (default: the cores split between them). `train` replaces the trainer in
    every process (see `run_study`); the children get it by pickling, so it must be a module-level function or a
    picklable object (e.g. `hpo_astro.tabular.tabulate_train`, a table's `TableReplay`). `deadline`: no process
    starts a trial after it (see `run_study`)."""
    import torch

    threads = threads or threads_per_worker(cfg.workers)
    torch.set_num_threads(threads)
    cfg.validate()
    pool = device_pool(cfg.devices)
    if cfg.workers == 1:
        return run_study(placed(cfg, 0, pool), events, train, deadline=deadline)
    # The study is created here first (see _FirstTrialGate), so children never race on a half-made study.
    context = worker_context()
    children: list[multiprocessing.process.BaseProcess] = []
    with child_processes(children):
        first = _FirstTrialGate(events)
        for worker in range(1, cfg.workers):
            child = context.Process(
                target=_child,
                args=(placed(cfg, worker, pool), worker, threads, train, ParentContext(), deadline),
                name=f"hpo-astro-worker-{worker}",
            )
            children.append(child)
        first.children = children
        result = run_study(placed(cfg, 0, pool), first.events(), train, deadline=deadline)
    failed = [c.name for c in children if c.exitcode not in (0, None, 130, -signal.SIGTERM)]
    if failed:
        raise StudyFailed(f"worker process(es) {', '.join(failed)} failed; see their messages above")
    return result


@contextlib.contextmanager
def child_processes(
    children: list[multiprocessing.process.BaseProcess],
) -> Iterator[list[multiprocessing.process.BaseProcess]]:
    """Worker processes stopped and waited for however the block ends: on any error (Ctrl-C and SIGTERM included)
    each live child is sent SIGTERM (it checkpoints and re-queues its running trial), then every started child is
    joined. The one pool pattern of `run_workers` and the benchmark's runner."""
    try:
        yield children
    except BaseException:
        for child in children:
            if child.is_alive() and child.pid is not None:
                os.kill(child.pid, signal.SIGTERM)
        raise
    finally:
        for child in children:
            if child.pid is not None:
                child.join()


class _FirstTrialGate:
    """Starts the children once this process has created (or resumed) the study."""

    def __init__(self, events: RunEvents | None) -> None:
        self.inner = events or RunEvents()
        self.children: list[multiprocessing.process.BaseProcess] = []

    def events(self) -> RunEvents:
        return dataclasses.replace(self.inner, on_start=self.on_start)

    def on_start(self, study: optuna.Study, finished: int, target: int) -> None:
        for child in self.children:
            child.start()
        if self.inner.on_start:
            self.inner.on_start(study, finished, target)


def config_from_study(
    storage_url: str, study_name: str, trusted_sampler: str | bool = False, **overrides: object
) -> StudyConfig:
    """Rebuild a study's configuration from what it recorded in the store (see `joined_study`)."""
    return joined_study(storage_url, study_name, trusted_sampler, **overrides)[0]


def joined_study(
    storage_url: str, study_name: str, trusted_sampler: str | bool = False, **overrides: object
) -> tuple[StudyConfig, str]:
    """What a process joining a stored study runs (for `hpo-astro worker`): the study's configuration, rebuilt from
    what it recorded, with `overrides`, and the kind of its trials (`hpo_astro.store.record.TRIAL_KINDS`).

    A study whose strategy is a sampler class by import path would make this process import it, running that
    module's code: a store is data, possibly someone else's, so the path is imported only when the caller trusts it
    (`trusted_sampler` True, or the same path given again, e.g. `worker --strategy PATH`)."""
    storage = open_existing_store(storage_url)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:
        names = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
        raise UserError(
            f"no study named {study_name!r} in {storage_url}" + (f"; studies: {', '.join(names)}" if names else "")
        ) from None
    record = StudyRecord.from_attrs(study.user_attrs)
    if record is None:
        if study.get_trials(deepcopy=False) or not study.user_attrs:
            raise UserError(f"study {study_name!r} was not made by hpo-astro (no recorded configuration)")
        raise UserError(
            f"study {study_name!r} was interrupted while being created; re-run the `hpo-astro run` command that "
            "created it (it resumes), then join it"
        )
    if isinstance(trusted_sampler, str) and trusted_sampler != record.strategy:
        raise UserError(f"study {study_name!r} runs {record.strategy!r}, not {trusted_sampler!r}")
    if is_import_path(record.strategy) and trusted_sampler is not True and trusted_sampler != record.strategy:
        raise UserError(
            f"study {study_name!r} runs the sampler class {record.strategy!r}, a path the store names: importing it "
            f"runs that module's code; if you trust it, pass --strategy {record.strategy} (or --trust-sampler)"
        )
    cfg = StudyConfig.from_record(record, storage_url, study_name)
    return cfg.merged(**overrides), record.kind_of(study_name)
