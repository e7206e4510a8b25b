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
    ArtifactsOpt,
    CaptureOpt,
    ChannelsOpt,
    CheckpointOpt,
    DataOpt,
    DevicesOpt,
    EvalSeedsOpt,
    FoldsOpt,
    GraceOpt,
    HeartbeatOpt,
    JoinedStudyOpt,
    ObjectiveOpt,
    OnlyStudyOpt,
    ProxiedStorageOpt,
    ProxyHostOpt,
    ProxyPortOpt,
    PrunerOpt,
    RunStorageOpt,
    SplitOpt,
    StackRunsOpt,
    StorageOpt,
    StrategyOpt,
    StudyFileOpt,
    StudyNameOpt,
    StudySeedOpt,
    ThreadsOpt,
    TrialEpochsOpt,
    TrialsOpt,
    TrustedStrategyOpt,
    WorkerDeviceOpt,
    WorkersOpt,
    WorkerThreadsOpt,
    evaluation_settings,
    search_settings,
    worker_settings,
)
from hpo_astro.cli.output import console, err_console, fail, injected_trainer, program, resume_command
from hpo_astro.errors import UserError
from hpo_astro.study.defaults import DEFAULT_STORAGE

if TYPE_CHECKING:  # heavy imports stay lazy so that `--help` and input errors answer at once
    import optuna
    from optuna.trial import FrozenTrial

    from hpo_astro.core.train import TrainFn, TrainState
    from hpo_astro.study.config import StudyConfig
    from hpo_astro.study.run import RunResult


@app.command("run")
def run_command(
    ctx: typer.Context,
    strategy: StrategyOpt = None,
    n_trials: TrialsOpt = None,
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
) -> None:
    """Create or resume a study and run it until it holds --n-trials finished trials."""
    from hpo_astro.study.config import StudyConfig, load_config

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
    execute_study(cfg, threads, train=injected_trainer(ctx))
    _next_steps(cfg.storage, cfg.study_name)


def _next_steps(storage: str, study: str) -> None:
    """After a run: the commands that look at its results, as the user can paste them."""
    import shlex

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
) -> None:
    """Join an existing study from another shell or machine, with the configuration it recorded."""
    from hpo_astro.study.workers import joined_study
    from hpo_astro.tabular import train_for_kind

    cfg, trial_kind = joined_study(
        storage,
        study,
        trusted_sampler=True if trust_sampler else (strategy or False),
        **worker_settings(artifacts, heartbeat, grace_period, checkpoint_interval, devices, capture, stack_runs),
    )
    train = train_for_kind(trial_kind, cfg.study_name, injected_trainer(ctx))  # a table study: test metrics too
    execute_study(cfg, threads, joined=True, train=train)
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
    cfg: StudyConfig, threads: int | None, joined: bool = False, train: TrainFn | None = None
) -> RunResult:
    """Run `cfg` with a live display; Ctrl-C / SIGTERM print the command that resumes. `train` replaces the trainer
    (see `run_study`)."""
    import sys

    from hpo_astro.study.run import RunEvents, StudyFailed, run_study
    from hpo_astro.study.workers import run_workers

    resume = resume_command()
    display = _RunDisplay()

    def start(study: optuna.Study, finished: int, target: int) -> None:
        if not joined:  # the command that made the study, for its note in optuna-dashboard
            from hpo_astro.results.dashboard import absolute_storage, study_note, write_note

            write_note(study, study_note(study, sys.argv[1:], program(), Path.cwd(), absolute_storage(cfg.storage)))
        display.start(study, finished, target)

    events = RunEvents(start, display.epoch, display.trial_end, display.wait)
    try:
        with display:
            if joined:  # one process joining a study: it never starts workers of its own
                import torch

                torch.set_num_threads(threads or torch.get_num_threads())
                result = run_study(cfg, events, train)
            else:
                result = run_workers(cfg, events, threads=threads, train=train)
    except KeyboardInterrupt:
        err_console.print(
            f"interrupted: the running trial was checkpointed and re-queued; resume with: {resume}", markup=False
        )
        raise typer.Exit(130) from None
    except StudyFailed as exc:  # WriteFailed included: exit 1, the run resumes once there is space
        fail(str(exc), code=1)
    best = _best(result.study)
    console.print(
        f"study {result.study.study_name!r}: {result.finished}/{result.target} finished trials"
        f" ({result.ran} run by this process); best value {best}",
        highlight=False,
    )
    return result


class _RunDisplay:
    """Live progress: finished/target trials, best value so far, the current trial's epoch."""

    def __init__(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("trials"),
            TextColumn("best {task.fields[best]}"),
            TextColumn("{task.fields[current]}"),
            TimeElapsedColumn(),
            console=console,
            transient=False,
        )
        self.task = None

    def __enter__(self) -> _RunDisplay:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def start(self, study: optuna.Study, finished: int, target: int) -> None:
        from hpo_astro.store.record import OBJECTIVE_KEY, STRATEGY_KEY

        verb = "resuming" if finished or study.trials else "starting"
        attrs = study.user_attrs
        console.print(
            f"{verb} study {study.study_name!r} ({attrs.get(STRATEGY_KEY, '?')}, {attrs.get(OBJECTIVE_KEY, '?')} "
            f"{study.direction.name.lower()}d): {finished}/{target} finished",
            highlight=False,
        )
        self.task = self.progress.add_task(
            study.study_name, total=target, completed=finished, best=_best(study), current=""
        )

    def epoch(self, number: int, state: TrainState) -> None:
        self.progress.update(self.task, current=f"trial {number} epoch {state.epoch}/{state.max_epochs}")

    def wait(self, running: int) -> None:
        self.progress.update(self.task, current=f"waiting for {running} running trial(s) elsewhere")

    def trial_end(self, study: optuna.Study, trial: FrozenTrial, finished: int) -> None:
        from hpo_astro.store.record import fail_reason

        value = "" if trial.value is None else f" value {trial.value:.4f}"
        reason = fail_reason(trial)
        extra = f" ({reason})" if trial.state.name == "FAIL" and reason else ""
        self.progress.console.print(f"trial {trial.number} {trial.state.name.lower()}{value}{extra}", highlight=False)
        self.progress.update(self.task, completed=finished, best=_best(study), current="")


def _best(study: optuna.Study) -> str:
    try:
        return f"{study.best_value:.4f}"
    except ValueError:
        return "-"


@app.command("status")
def status_command(storage: StorageOpt = DEFAULT_STORAGE, study: OnlyStudyOpt = None) -> None:
    """Each study with its strategy, trial counts by state, best value and best parameters."""
    from rich.table import Table

    from hpo_astro.results.status import study_status

    rows = study_status(storage, study)
    if not rows:
        console.print(f"no studies in {storage}")
        return
    table = Table("study", "strategy", "target", "complete", "pruned", "fail", "running", "best (trial)")
    for row in rows:
        c = row.counts
        best = "-" if row.best_value is None else f"{row.best_value:.4f} (#{row.best_trial})"
        table.add_row(
            row.name,
            row.strategy,
            str(row.target or "-"),
            str(c.get("complete", 0)),
            str(c.get("pruned", 0)),
            str(c.get("fail", 0)),
            str(c.get("running", 0) + c.get("waiting", 0)),
            best,
        )
    console.print(table)
    for row in rows:
        if row.best_params:
            params = " ".join(f"{k}={v}" for k, v in row.best_params.items())
            console.print(f"best params of {row.name}: {params}", highlight=False)
