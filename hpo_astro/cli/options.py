"""The options several commands take, each declared once (one alias per distinct help text, so that every command
keeps its own wording), and the keyword blocks that turn them into study settings. Light: no heavy imports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from hpo_astro.study.defaults import DEFAULT_STORAGE, ObjectiveName, PrunerName, StackMode

MAX_SEED = 2**32 - 1  # the seeds Optuna's samplers take (study.config checks the same bound)
LOCALHOST = "127.0.0.1"  # where a server listens unless told otherwise

# --storage: the study store
StorageOpt = Annotated[str, typer.Option("--storage", help="Optuna storage URL.")]
RunStorageOpt = Annotated[
    str | None, typer.Option("--storage", help=f"Optuna storage URL (default: {DEFAULT_STORAGE}).")
]
ProxiedStorageOpt = Annotated[str, typer.Option("--storage", help="The storage the proxy serves.")]
BenchmarkStorageOpt = Annotated[
    str | None,
    typer.Option("--storage", help="Optuna storage URL for the studies (default: a journal file in --out)."),
]

# --study: which study (or studies) in the store
StudyNameOpt = Annotated[str | None, typer.Option("--study", help="Study name (default: the strategy name).")]
JoinedStudyOpt = Annotated[str, typer.Option("--study", help="The study to join (it must exist in the store).")]
OnlyStudyOpt = Annotated[str | None, typer.Option("--study", help="Only this study.")]
StudiesOpt = Annotated[
    list[str] | None, typer.Option("--study", help="A study to include, repeatable (default: every study).")
]
ExportedStudyOpt = Annotated[str, typer.Option("--study", help="The study whose best model to export.")]

# --strategy: the sampler
StrategyOpt = Annotated[
    str | None,
    typer.Option(
        "--strategy",
        "-s",
        help="random, ablation, genetic, bayesian, tpe, grid, bohb or qmc; or your own Optuna sampler class by "
        "import path, package.module:ClassName.",
    ),
]
TrustedStrategyOpt = Annotated[
    str | None,
    typer.Option(
        "--strategy",
        help="For a study whose strategy is a sampler class by import path: that path again, to allow importing "
        "it (a path only the store names is never imported: importing runs its code).",
    ),
]

# --n-trials: the budget
TrialsOpt = Annotated[int | None, typer.Option("--n-trials", "-n", help="Budget: finished (complete + pruned) trials.")]
BenchmarkTrialsOpt = Annotated[
    int, typer.Option("--n-trials", "-n", min=1, help="Budget of every study: finished trials.")
]

# --config: a TOML study file
StudyFileOpt = Annotated[Path | None, typer.Option("--config", "-c", help="TOML study file (options override it).")]
BenchmarkStudyFileOpt = Annotated[
    Path | None,
    typer.Option("--config", "-c", help="Study file: its space, baseline and settings apply to every study."),
]

# --data and --channels: the cutouts trained on
DataOpt = Annotated[
    Path | None,
    typer.Option("--data", help="Data file (.npz, or ExRomana .npy); default: the simulated set, cached once."),
]
StudyDataOpt = Annotated[
    Path | None,
    typer.Option("--data", help="The studies' data file, when it is no longer where the study recorded it."),
]
ScoredDataOpt = Annotated[Path, typer.Option("--data", help="ExRomana file (labelled) or a list of records to score.")]
SplitOpt = Annotated[
    str | None,
    typer.Option(
        "--split",
        help="Train,validation,test fractions of the stratified split (default: 0.7,0.15,0.15); a larger "
        "validation split measures each configuration with less noise.",
    ),
]
ChannelsOpt = Annotated[
    str | None,
    typer.Option("--channels", help="Comma-separated planes among sci,ref,diff,scorr (default: scorr)."),
]

# --max-epochs, --pruner, --objective: how long a trial trains and what it is judged by
TrainEpochsOpt = Annotated[int | None, typer.Option("--max-epochs", min=1, help="Cap epochs below t_max.")]
TrialEpochsOpt = Annotated[int | None, typer.Option("--max-epochs", help="Cap epochs per trial below t_max.")]
TableEpochsOpt = Annotated[int | None, typer.Option("--max-epochs", min=1, help="Cap epochs per configuration.")]
BenchmarkEpochsOpt = Annotated[int | None, typer.Option("--max-epochs", min=1, help="Cap epochs per trial.")]
PrunerOpt = Annotated[
    PrunerName | None,
    typer.Option("--pruner", help="Stop poor trials early (default: hyperband for bohb, else none)."),
]
BenchmarkPrunerOpt = Annotated[PrunerName | None, typer.Option("--pruner", help="Stop poor trials early.")]
ObjectiveOpt = Annotated[ObjectiveName | None, typer.Option("--objective", help="What to optimise, on validation.")]

# --eval-seeds and --folds: how many training runs score a configuration
EvalSeedsOpt = Annotated[
    int | None,
    typer.Option(
        "--eval-seeds",
        min=1,
        max=100,
        help="Train each configuration with K seeds and score it by the mean (default: 1).",
    ),
]
FoldsOpt = Annotated[
    int | None,
    typer.Option(
        "--folds",
        min=1,
        max=20,
        help="K-fold cross-validation over train+val, test untouched; 1: the fixed split (default).",
    ),
]

# --seed
SimulationSeedOpt = Annotated[int, typer.Option("--seed", min=0, max=MAX_SEED, help="Simulation seed.")]
TrainSeedOpt = Annotated[
    int, typer.Option("--seed", min=0, max=MAX_SEED, help="Training seed (init, shuffling, dropout).")
]
StudySeedOpt = Annotated[int | None, typer.Option("--seed", help="Sampler and training seed (default: 0).")]
TableSeedOpt = Annotated[int | None, typer.Option("--seed", min=0, max=MAX_SEED, help="Training seed (default: 0).")]
BenchmarkSeedOpt = Annotated[
    int, typer.Option("--seed", min=0, max=MAX_SEED, help="Base seed: repeat r of every strategy uses seed + r.")
]

# --threads and --workers: the processes and their CPU threads
ThreadsOpt = Annotated[int | None, typer.Option("--threads", min=1, max=1024, help="torch CPU threads.")]
WorkerThreadsOpt = Annotated[
    int | None,
    typer.Option("--threads", min=1, max=1024, help="torch CPU threads per worker (default: cores / workers)."),
]
WorkersOpt = Annotated[
    int | None, typer.Option("--workers", "-w", min=1, help="Worker processes on this machine (default: 1).")
]
TableWorkersOpt = Annotated[int | None, typer.Option("--workers", "-w", min=1, help="Worker processes (default: 1).")]
BenchmarkWorkersOpt = Annotated[
    int, typer.Option("--workers", "-w", min=1, help="Studies run side by side, one process each.")
]

# How each worker process trains and reports: artifacts, heartbeats, checkpoints, devices, CUDA graphs
ArtifactsOpt = Annotated[
    Path | None,
    typer.Option("--artifacts", help="Checkpoint/weights directory (default: beside the SQLite or journal file)."),
]
ServedArtifactsOpt = Annotated[
    Path | None,
    typer.Option(
        "--artifacts",
        help="Serve the trials' artifacts from this folder (default: the one beside the SQLite or journal file).",
    ),
]
HeartbeatOpt = Annotated[
    int | None, typer.Option("--heartbeat", min=0, help="Seconds between trial heartbeats; 0 disables (default: 10).")
]
GraceOpt = Annotated[
    int | None,
    typer.Option("--grace-period", min=1, help="Seconds without heartbeat before a trial is dead (default: 30)."),
]
CheckpointOpt = Annotated[
    int | None,
    typer.Option(
        "--checkpoint-interval",
        min=0,
        help="Seconds of training between a trial's checkpoints, after the first epoch's; 0: every epoch (default 10).",
    ),
]
DevicesOpt = Annotated[
    str | None,
    typer.Option(
        "--devices",
        help="Comma-separated devices (cpu, cuda, cuda:N); worker i trains on device i mod n "
        "(default: every visible GPU, else the CPU).",
    ),
]
WorkerDeviceOpt = Annotated[
    str | None, typer.Option("--devices", help="The device this worker trains on (cpu, cuda, cuda:N).")
]
CaptureOpt = Annotated[
    bool | None,
    typer.Option(
        "--capture/--no-capture",
        help="On CUDA, record each trial's train step once as a CUDA graph and replay it (default); "
        "--no-capture runs every step eagerly. CPU is always eager.",
    ),
]
StackRunsOpt = Annotated[
    StackMode | None,
    typer.Option(
        "--stack-runs",
        help="Train a trial's --eval-seeds runs as one stacked model: auto (on CUDA; on CPU only for batches of "
        "4 or less, where it was measured faster), on, off. The runs give what they give alone, to rounding.",
    ),
]

# --host and --port: where a server listens
ProxyHostOpt = Annotated[str, typer.Option("--host", help="Interface to bind.")]
DashboardHostOpt = Annotated[str, typer.Option("--host", help="Interface to bind; 0.0.0.0 exposes it to the network.")]
ProxyPortOpt = Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")]
DashboardPortOpt = Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")]


def search_settings(
    data: Path | None,
    channels: str | None,
    split: str | None,
    max_epochs: int | None,
    pruner: str | None,
    objective: str | None,
    seed: int | None,
    workers: int | None,
) -> dict[str, Any]:
    """The search settings `run` and `benchmark` take as options, as the keywords of `StudyConfig.merged` and
    `BenchmarkSpec` (None: not set, the study file's or the default applies)."""
    from hpo_astro.data.prepare import parse_channels
    from hpo_astro.study.config import parse_split

    return {
        "data": data,
        "channels": parse_channels(channels) if channels is not None else None,
        "split": parse_split(split) if split is not None else None,
        "max_epochs": max_epochs,
        "pruner": pruner,
        "objective": objective,
        "seed": seed,
        "workers": workers,
    }


def evaluation_settings(eval_seeds: int | None, folds: int | None) -> dict[str, Any]:
    """How `run` evaluates each configuration (`hpo_astro.study.evaluation`): the keywords of `StudyConfig.merged`."""
    return {"eval_seeds": eval_seeds, "folds": folds}


def worker_settings(
    artifacts: Path | None,
    heartbeat: int | None,
    grace_period: int | None,
    checkpoint_interval: int | None,
    devices: str | None,
    capture: bool | None,
    stack_runs: str | None = None,
) -> dict[str, Any]:
    """How each worker process trains and reports, as `run` and `worker` take them: the keywords of
    `StudyConfig.merged` and `config_from_study` (None: not set)."""
    return {
        "artifacts": artifacts,
        "heartbeat_interval": heartbeat,
        "grace_period": grace_period,
        "checkpoint_interval": checkpoint_interval,
        "devices": None if devices is None else tuple(d.strip() for d in devices.split(",") if d.strip()),
        "capture": capture,
        "stack_runs": stack_runs,
    }
