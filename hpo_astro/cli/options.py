"""The options several commands take, each declared once (one alias per distinct help text, so that every command
keeps its own wording), and the keyword blocks that turn them into study settings. Light: no heavy imports."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from hpo_astro.study.defaults import (
    DEFAULT_STORAGE,
    OBJECTIVE_NAMES,
    STRATEGY_NAMES,
    PrunerName,
)

MAX_SEED = 2**32 - 1  # the seeds Optuna's samplers take (study.config checks the same bound)
LOCALHOST = "127.0.0.1"  # where a server listens unless told otherwise

# --storage: the study store
StorageOpt = Annotated[str, typer.Option("--storage", metavar="URL", help="Optuna storage URL.")]
RunStorageOpt = Annotated[
    str | None, typer.Option("--storage", metavar="URL", help=f"Optuna storage URL (default: {DEFAULT_STORAGE}).")
]
ProxiedStorageOpt = Annotated[str, typer.Option("--storage", metavar="URL", help="The storage the proxy serves.")]
BenchmarkStorageOpt = Annotated[
    str | None,
    typer.Option(
        "--storage", metavar="URL", help="Optuna storage URL for the studies (default: a journal file in --out)."
    ),
]

# --study: which study (or studies) in the store
StudyNameOpt = Annotated[
    str | None, typer.Option("--study", metavar="NAME", help="Study name (default: the strategy name).")
]
JoinedStudyOpt = Annotated[
    str, typer.Option("--study", metavar="NAME", help="The study to join (it must exist in the store).")
]
OnlyStudyOpt = Annotated[str | None, typer.Option("--study", metavar="NAME", help="Only this study.")]
StudiesOpt = Annotated[
    list[str] | None,
    typer.Option("--study", metavar="NAME", help="A study to include, repeatable (default: every study)."),
]
ExportedStudyOpt = Annotated[str, typer.Option("--study", metavar="NAME", help="The study whose best model to export.")]

# --strategy: the sampler (not a closed choice: a sampler class by import path is one too)
STRATEGY_HELP = (
    f"{', '.join(STRATEGY_NAMES[:-1])} or {STRATEGY_NAMES[-1]}; or your own Optuna sampler class by import path, "
    "package.module:ClassName."
)


def complete_strategy(incomplete: str) -> list[str]:
    """Shell completion of --strategy: the registry names."""
    return [name for name in STRATEGY_NAMES if name.startswith(incomplete)]


StrategyOpt = Annotated[
    str | None,
    typer.Option("--strategy", "-s", metavar="STRATEGY", help=STRATEGY_HELP, autocompletion=complete_strategy),
]
TrustedStrategyOpt = Annotated[
    str | None,
    typer.Option(
        "--strategy",
        metavar="MODULE:CLASS",
        help="For a study whose strategy is a sampler class by import path: that path again, to allow importing "
        "it (a path only the store names is never imported: importing runs its code).",
    ),
]

# --n-trials: the budget; --timeout: this invocation's time budget
TrialsOpt = Annotated[
    int | None,
    typer.Option(
        "--n-trials",
        "-n",
        metavar="N",
        help="Budget: finished (complete + pruned) trials; required unless the study file sets n_trials.",
    ),
]
BenchmarkTrialsOpt = Annotated[
    int, typer.Option("--n-trials", "-n", metavar="N", min=1, help="Budget of every study: finished trials.")
]
TimeoutOpt = Annotated[
    float | None,
    typer.Option(
        "--timeout",
        metavar="SECONDS",
        min=0,
        help="Time budget of this command: no trial starts after SECONDS, the running one finishes (as Optuna's "
        "timeout); run the same command again to go on towards --n-trials (default: none).",
    ),
]

# --config: a TOML study file
StudyFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        metavar="FILE",
        help="TOML study file, or a packaged one by name: quick-demo, paper-random... (`init` lists them). Options "
        "override it.",
    ),
]
BenchmarkStudyFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", metavar="FILE", help="Study file: its space, baseline and settings apply to every study."
    ),
]

# --data and --channels: the cutouts trained on
DataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data", metavar="FILE", help="Data file, .npz or ExRomana .npy (default: the simulated set, cached once)."
    ),
]
StudyDataOpt = Annotated[
    Path | None,
    typer.Option(
        "--data", metavar="FILE", help="The studies' data file, when it is no longer where the study recorded it."
    ),
]
ScoredDataOpt = Annotated[
    Path, typer.Option("--data", metavar="FILE", help="ExRomana file (labelled) or a list of records to score.")
]
SplitOpt = Annotated[
    str | None,
    typer.Option(
        "--split",
        metavar="TRAIN,VAL,TEST",
        help="Fractions of the stratified split; a larger validation split measures each configuration with less "
        "noise (default: 0.7,0.15,0.15).",
    ),
]
ChannelsOpt = Annotated[
    str | None,
    typer.Option(
        "--channels", metavar="PLANES", help="Comma-separated planes among sci,ref,diff,scorr (default: scorr)."
    ),
]

# --max-epochs, --pruner, --objective: how long a trial trains and what it is judged by
TrainEpochsOpt = Annotated[int | None, typer.Option("--max-epochs", metavar="N", min=1, help="Cap epochs below t_max.")]
TrialEpochsOpt = Annotated[
    int | None, typer.Option("--max-epochs", metavar="N", help="Cap epochs per trial below t_max.")
]
TableEpochsOpt = Annotated[
    int | None, typer.Option("--max-epochs", metavar="N", min=1, help="Cap epochs per configuration.")
]
BenchmarkEpochsOpt = Annotated[
    int | None, typer.Option("--max-epochs", metavar="N", min=1, help="Cap epochs per trial.")
]
PrunerOpt = Annotated[
    PrunerName | None,
    typer.Option("--pruner", help="Stop poor trials early (default: hyperband for bohb, else none)."),
]
BenchmarkPrunerOpt = Annotated[
    PrunerName | None, typer.Option("--pruner", help="Stop poor trials early (default: hyperband for bohb, else none).")
]


def complete_objective(incomplete: str) -> list[str]:
    """Shell completion of --objective: after the names already given (comma-joined), the others."""
    given, _, last = incomplete.rpartition(",")
    head = given + "," if given else ""
    taken = set(given.split(","))
    return [head + name for name in OBJECTIVE_NAMES if name.startswith(last) and name not in taken]


ObjectiveOpt = Annotated[
    str | None,
    typer.Option(
        "--objective",
        metavar="NAME[,NAME...]",
        help=(
            "What to optimise, on validation (default: accuracy): "
            f"{', '.join(OBJECTIVE_NAMES)}; several joined by commas make a multi-objective study "
            "(e.g. accuracy,latency); an operating point takes another rate after @ (fpr_at_fnr@2%)."
        ),
        autocompletion=complete_objective,
    ),
]
BenchmarkObjectiveOpt = ObjectiveOpt  # several objectives: strategies compared by hypervolume

# --eval-seeds and --folds: how many training runs score a configuration
EvalSeedsOpt = Annotated[
    int | None,
    typer.Option(
        "--eval-seeds",
        metavar="K",
        min=1,
        max=100,
        help="Train each configuration with K seeds and score it by the mean (default: 1).",
    ),
]
FoldsOpt = Annotated[
    int | None,
    typer.Option(
        "--folds",
        metavar="K",
        min=1,
        max=20,
        help="K-fold cross-validation over train+val, test untouched; 1: the fixed split (default: 1).",
    ),
]

# --seed
SimulationSeedOpt = Annotated[int, typer.Option("--seed", metavar="SEED", min=0, max=MAX_SEED, help="Simulation seed.")]
TrainSeedOpt = Annotated[
    int, typer.Option("--seed", metavar="SEED", min=0, max=MAX_SEED, help="Training seed (init, shuffling, dropout).")
]
StudySeedOpt = Annotated[
    int | None, typer.Option("--seed", metavar="SEED", help="Sampler and training seed (default: 0).")
]
TableSeedOpt = Annotated[
    int | None, typer.Option("--seed", metavar="SEED", min=0, max=MAX_SEED, help="Training seed (default: 0).")
]
BenchmarkSeedOpt = Annotated[
    int,
    typer.Option(
        "--seed", metavar="SEED", min=0, max=MAX_SEED, help="Base seed: repeat r of every strategy uses seed + r."
    ),
]

# --threads and --workers: the processes and their CPU threads
ThreadsOpt = Annotated[
    int | None, typer.Option("--threads", metavar="N", min=1, max=1024, help="torch CPU threads (default: torch's).")
]
WorkerThreadsOpt = Annotated[
    int | None,
    typer.Option(
        "--threads", metavar="N", min=1, max=1024, help="torch CPU threads per worker (default: cores / workers)."
    ),
]
WorkersOpt = Annotated[
    int | None,
    typer.Option("--workers", "-w", metavar="N", min=1, help="Worker processes on this machine (default: 1)."),
]
TableWorkersOpt = Annotated[
    int | None, typer.Option("--workers", "-w", metavar="N", min=1, help="Worker processes (default: 1).")
]
BenchmarkWorkersOpt = Annotated[
    int, typer.Option("--workers", "-w", metavar="N", min=1, help="Studies run side by side, one process each.")
]

# status: its format and top trials
StatusFormatOpt = Annotated[
    Literal["table", "json"],
    typer.Option("--format", help="table, or json: the same facts for programs (counts of every state, 0 included)."),
]
TopOpt = Annotated[
    int,
    typer.Option("--top", metavar="N", min=0, help="Also list each study's N best complete trials (0: none)."),
]

# -v and -q: how much a command writes (`hpo_astro.cli.output.apply_verbosity`)
VerboseOpt = Annotated[
    int,
    typer.Option(
        "--verbose",
        "-v",
        count=True,
        help="More output: Optuna's own line per trial; -vv: its debug lines and the library's.",
    ),
]
QuietOpt = Annotated[
    bool,
    typer.Option(
        "--quiet",
        "-q",
        help="Less output: no progress bar, no line per trial, no notes; warnings, errors and results stay.",
    ),
]

# --host and --port: where a server listens
ProxyHostOpt = Annotated[str, typer.Option("--host", metavar="HOST", help="Interface to bind.")]
DashboardHostOpt = Annotated[
    str, typer.Option("--host", metavar="HOST", help="Interface to bind; 0.0.0.0 exposes it to the network.")
]
ProxyPortOpt = Annotated[int, typer.Option("--port", metavar="PORT", min=1, max=65535, help="Port to listen on.")]
DashboardPortOpt = Annotated[int, typer.Option("--port", metavar="PORT", min=1, max=65535, help="TCP port.")]


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
