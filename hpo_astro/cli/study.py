"""The study commands: `run` (create or resume a study), `worker` (join one), `storage-proxy` and `status`, and
`execute_study`, which runs a study under a live display and prints how to resume it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from hpo_astro.cli.application import app
from hpo_astro.cli.options import (
    LOCALHOST,
    ChannelsOpt,
    DataOpt,
    EvalSeedsOpt,
    FoldsOpt,
    JoinedStudyOpt,
    ObjectiveOpt,
    OnlyStudyOpt,
    ProxiedStorageOpt,
    ProxyHostOpt,
    ProxyPortOpt,
    PrunerOpt,
    QuietOpt,
    RunStorageOpt,
    SplitOpt,
    StatusFormatOpt,
    StorageOpt,
    StrategyOpt,
    StudyFileOpt,
    StudyNameOpt,
    StudySeedOpt,
    ThreadsOpt,
    TimeoutOpt,
    TopOpt,
    TrialEpochsOpt,
    TrialsOpt,
    TrustedStrategyOpt,
    VerboseOpt,
    WorkersOpt,
    WorkerThreadsOpt,
    evaluation_settings,
    search_settings,
)
from hpo_astro.cli.output import (
    QUIET,
    apply_verbosity,
    console,
    err_console,
    fail,
    injected_trainer,
    note,
    program,
    resume_command,
    verbosity,
)
from hpo_astro.cli.worker_options import (
    ArtifactsOpt,
    CaptureOpt,
    CheckpointOpt,
    DevicesOpt,
    GraceOpt,
    HeartbeatOpt,
    StackRunsOpt,
    WorkerDeviceOpt,
    worker_settings,
)
from hpo_astro.errors import UserError
from hpo_astro.study.defaults import DEFAULT_STORAGE

if TYPE_CHECKING:  # heavy imports stay lazy so that `--help` and input errors answer at once
    import optuna

    from hpo_astro.core.train import TrainFn
    from hpo_astro.study.config import StudyConfig
    from hpo_astro.study.run import RunResult


@app.command("run")
def run_command(
    ctx: typer.Context,
    strategy: StrategyOpt = None,
    n_trials: TrialsOpt = None,
    timeout: TimeoutOpt = None,
    study: StudyNameOpt = None,
    storage: RunStorageOpt = None,
    data: DataOpt = None,
    channels: ChannelsOpt = None,
    split: SplitOpt = None,
    max_epochs: TrialEpochsOpt = None,
    pruner: PrunerOpt = None,
    objective: ObjectiveOpt = None,
    eval_seeds: EvalSeedsOpt = None,
    folds: FoldsOpt = None,
    seed: StudySeedOpt = None,
    config: StudyFileOpt = None,
    threads: WorkerThreadsOpt = None,
    workers: WorkersOpt = None,
    artifacts: ArtifactsOpt = None,
    heartbeat: HeartbeatOpt = None,
    grace_period: GraceOpt = None,
    checkpoint_interval: CheckpointOpt = None,
    devices: DevicesOpt = None,
    capture: CaptureOpt = None,
    stack_runs: StackRunsOpt = None,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Create or resume a study and run it until it holds --n-trials finished trials."""
    from hpo_astro.study.config import StudyConfig, load_config

    apply_verbosity(verbose, quiet)

    base = load_config(config) if config else StudyConfig()
    cfg = base.merged(
        strategy=strategy,
        n_trials=n_trials,
        study=study,
        storage=storage,
        **evaluation_settings(eval_seeds, folds),
        **search_settings(data, channels, split, max_epochs, pruner, objective, seed, workers),
        **worker_settings(artifacts, heartbeat, grace_period, checkpoint_interval, devices, capture, stack_runs),
    )
    execute_study(cfg, threads, train=injected_trainer(ctx), timeout=timeout)
    _next_steps(cfg.storage, cfg.study_name)


def _next_steps(storage: str, study: str) -> None:
    """After a run: the commands that look at its results, as the user can paste them (not with -q)."""
    import shlex

    if verbosity() <= QUIET:
        return

    command = program()
    where = "" if storage == DEFAULT_STORAGE else f" --storage {shlex.quote(storage)}"
    report = Path("reports") / re.sub(r"[^A-Za-z0-9_.-]+", "-", study).strip("-.")
    steps = [
        (f"{command} dashboard{where}", "browse every trial in optuna-dashboard"),
        (f"{command} report{where} --study {shlex.quote(study)} --out {report}", "the HTML report"),
        (f"{command} compare{where}", "the best trial of each study on train/val/test"),
    ]
    width = max(len(line) for line, _ in steps)
    console.print("next:", highlight=False)
    for line, what in steps:
        console.print(f"  {line.ljust(width)}  # {what}", highlight=False, markup=False)


@app.command("worker")
def worker_command(
    ctx: typer.Context,
    study: JoinedStudyOpt,
    storage: StorageOpt = DEFAULT_STORAGE,
    timeout: TimeoutOpt = None,
    threads: ThreadsOpt = None,
    artifacts: ArtifactsOpt = None,
    heartbeat: HeartbeatOpt = None,
    grace_period: GraceOpt = None,
    checkpoint_interval: CheckpointOpt = None,
    devices: WorkerDeviceOpt = None,
    capture: CaptureOpt = None,
    stack_runs: StackRunsOpt = None,
    strategy: TrustedStrategyOpt = None,
    trust_sampler: Annotated[
        bool, typer.Option("--trust-sampler", help="Import the sampler class path the study recorded, whatever it is.")
    ] = False,
    verbose: VerboseOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Join an existing study from another shell or machine, with the configuration it recorded."""
    from hpo_astro.study.workers import joined_study
    from hpo_astro.tabular import train_for_kind

    apply_verbosity(verbose, quiet)

    cfg, trial_kind = joined_study(
        storage,
        study,
        trusted_sampler=True if trust_sampler else (strategy or False),
        **worker_settings(artifacts, heartbeat, grace_period, checkpoint_interval, devices, capture, stack_runs),
    )
    train = train_for_kind(trial_kind, cfg.study_name, injected_trainer(ctx))  # a table study: test metrics too
    execute_study(cfg, threads, joined=True, train=train, timeout=timeout)
    _next_steps(cfg.storage, cfg.study_name)


@app.command("storage-proxy")
def storage_proxy_command(
    storage: ProxiedStorageOpt = DEFAULT_STORAGE,
    host: ProxyHostOpt = LOCALHOST,
    port: ProxyPortOpt = 13000,
) -> None:
    """Serve a storage to many workers through Optuna's gRPC proxy (workers use --storage grpc://HOST:PORT)."""
    import socket
    import warnings

    from optuna.storages import run_grpc_proxy_server

    from hpo_astro.store.storage import open_storage

    try:  # a host that does not resolve: one line, before the store is opened and before gRPC logs its own
        socket.getaddrinfo(host, port)
    except (OSError, UnicodeError) as exc:
        raise UserError(f"cannot serve on {host}:{port}: {getattr(exc, 'strerror', None) or exc}") from None
    backend = open_storage(storage, heartbeat_interval=None)
    console.print(f"serving {storage} at grpc://{host}:{port} (Ctrl-C to stop)", highlight=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            run_grpc_proxy_server(backend, host=host, port=port)
        except KeyboardInterrupt:
            pass
        except (RuntimeError, OSError) as exc:  # gRPC: "Failed to bind to address ..." (a taken port)
            raise UserError(f"cannot serve on {host}:{port}: {str(exc).splitlines()[0]}") from None


def execute_study(
    cfg: StudyConfig,
    threads: int | None,
    joined: bool = False,
    train: TrainFn | None = None,
    timeout: float | None = None,
) -> RunResult:
    """Run `cfg` with a live display; Ctrl-C / SIGTERM print the command that resumes. `train` replaces the trainer
    (see `run_study`); `timeout`: seconds after which no trial starts (the running ones finish)."""
    import sys

    from hpo_astro.cli.progress import RunDisplay, best_text
    from hpo_astro.study.run import RunEvents, StudyFailed, deadline_after, run_study
    from hpo_astro.study.workers import run_workers

    deadline = deadline_after(timeout)
    resume = resume_command()
    display = RunDisplay(workers=1 if joined else cfg.workers)

    def start(study: optuna.Study, finished: int, target: int) -> None:
        if not joined:  # the command that made the study, for its note in optuna-dashboard
            from hpo_astro.results.dashboard import absolute_storage, study_note, write_note

            write_note(study, study_note(study, sys.argv[1:], program(), Path.cwd(), absolute_storage(cfg.storage)))
        display.start(study, finished, target)

    events = RunEvents(start, display.epoch, display.trial_end, display.wait, display.trial_start)
    try:
        with display:
            if joined:  # one process joining a study: it never starts workers of its own
                import torch

                torch.set_num_threads(threads or torch.get_num_threads())
                result = run_study(cfg, events, train, deadline=deadline)
            else:
                result = run_workers(cfg, events, threads=threads, train=train, deadline=deadline)
    except KeyboardInterrupt as exc:
        others = "" if joined or cfg.workers == 1 else " (each worker process re-queued its own)"
        err_console.print(f"interrupted: {_interrupted(exc)}{others}; resume with: {resume}", markup=False)
        raise typer.Exit(130) from None
    except StudyFailed as exc:  # WriteFailed included: exit 1, the run resumes once there is space
        fail(str(exc), code=1)
    console.print(
        f"study {result.study.study_name!r}: {result.finished}/{result.target} finished trials"
        f" ({result.ran} run by this process); "
        + (
            f"Pareto front of {len(result.study.best_trials)} trial(s)"
            if len(result.study.directions) > 1
            else f"best value {best_text(result.study)}"
        ),
        highlight=False,
    )
    if result.timed_out:
        note(
            f"stopped at the time budget (--timeout {timeout:g} s) before the budget of {result.target} trials; "
            f"the same command goes on: {resume}"
        )
    return result


def _interrupted(exc: KeyboardInterrupt) -> str:
    """What became of the trial this process ran when it was interrupted (`hpo_astro.study.run.Interrupted`)."""
    from hpo_astro.study.run import Interrupted

    if not isinstance(exc, Interrupted):
        return "no trial of this process was running"
    if not exc.requeued:
        return f"trial #{exc.trial} had already ended ({exc.state}) when the signal came: nothing to re-queue"
    if exc.checkpoint_epoch is None:
        return f"the running trial #{exc.trial} was re-queued; it had no checkpoint yet, so it starts over"
    return f"the running trial #{exc.trial} was checkpointed at epoch {exc.checkpoint_epoch} and re-queued"


@app.command("status")
def status_command(
    storage: StorageOpt = DEFAULT_STORAGE,
    study: OnlyStudyOpt = None,
    fmt: StatusFormatOpt = "table",
    top: TopOpt = 0,
) -> None:
    """Each study with its strategy, trial counts by state (running and waiting apart), best value and best
    parameters (a multi-objective study: its Pareto front); --top N: its N best trials too."""
    from hpo_astro.cli.progress import duration_text, params_text
    from hpo_astro.results.front import value_text
    from hpo_astro.results.status import COUNTED_STATES, study_status

    rows = study_status(storage, study, top=top)
    if fmt == "json":
        import json

        typer.echo(json.dumps([row.as_dict() for row in rows], indent=2))
        return
    if not rows:
        console.print(f"no studies in {storage}")
        return
    from rich.table import Table

    table = Table("study", "strategy", "target", *COUNTED_STATES, "best (trial)")
    for row in rows:
        best = "-" if row.best_value is None else f"{row.best_value:.4f} (#{row.best_trial})"
        if row.front is not None:
            best = f"front of {len(row.front)}" if row.front else "-"
        counts = [str(row.counts.get(state, 0)) for state in COUNTED_STATES]
        table.add_row(row.name, row.strategy, str(row.target or "-"), *counts, best)
    console.print(table)
    for row in rows:
        if row.front is not None and row.objectives is not None and row.directions is not None:
            ways = ", ".join(f"{n} {d}d" for n, d in zip(row.objectives, row.directions, strict=True))
            console.print(f"objectives of {row.name}: {ways}", highlight=False, markup=False)
            shown = row.top or row.front  # --top N: the front's first N in the first objective
            cut = (
                f" (first {len(shown)} of {len(row.front)} by {row.objectives[0]})"
                if len(shown) < len(row.front)
                else ""
            )
            front = Table(
                "trial", *row.objectives, "duration", "parameters that vary", title=f"Pareto front of {row.name}{cut}"
            )
            for trial in shown:
                took = "-" if trial.seconds is None else duration_text(trial.seconds)
                front.add_row(f"#{trial.number}", *map(value_text, trial.values), took, params_text(trial.params))
            if shown:
                console.print(front)
            continue
        if row.best_params and not row.top:
            params = " ".join(f"{k}={v}" for k, v in row.best_params.items())
            console.print(f"best params of {row.name}: {params}", highlight=False, markup=False)
        if row.budget:
            console.print(f"{row.name} (population-based training): {row.budget}", highlight=False, markup=False)
        if row.top:
            best_of = Table("rank", "trial", "value", "duration", "parameters that vary", title=f"top {row.name}")
            for rank, trial in enumerate(row.top, 1):
                took = "-" if trial.seconds is None else duration_text(trial.seconds)
                best_of.add_row(str(rank), f"#{trial.number}", f"{trial.value:.4f}", took, params_text(trial.params))
            console.print(best_of)
