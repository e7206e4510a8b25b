"""The `benchmark` command: strategies compared over repeated, paired studies, with a progress display."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hpo_astro.cli.application import app
from hpo_astro.cli.options import (
    BenchmarkEpochsOpt,
    BenchmarkObjectiveOpt,
    BenchmarkPrunerOpt,
    BenchmarkSeedOpt,
    BenchmarkStorageOpt,
    BenchmarkStudyFileOpt,
    BenchmarkTrialsOpt,
    BenchmarkWorkersOpt,
    ChannelsOpt,
    DataOpt,
    SplitOpt,
    search_settings,
)
from hpo_astro.cli.output import console, err_console, fail, note, resume_command


@app.command("benchmark")
def benchmark_command(
    strategies: Annotated[
        str,
        typer.Option(
            "--strategies",
            "-s",
            metavar="STRATEGIES",
            help="Comma-separated strategies to compare: registry names (random, ablation, genetic, bayesian, tpe, "
            "...) or sampler classes as package.module:ClassName.",
        ),
    ],
    n_trials: BenchmarkTrialsOpt,
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            metavar="DIR",
            help="Directory for index.html, benchmark.json and the CSV files (and the default store).",
        ),
    ],
    repeats: Annotated[
        int, typer.Option("--repeats", "-r", metavar="N", min=1, help="Studies per strategy; repeat r uses seed + r.")
    ] = 10,
    table: Annotated[
        str | None,
        typer.Option(
            "--table",
            metavar="TABLE",
            help="Answer every trial from this table instead of training: a table file, a tabulate study table/NAME "
            "in --storage, or a shipped table.",
        ),
    ] = None,
    config: BenchmarkStudyFileOpt = None,
    data: DataOpt = None,
    channels: ChannelsOpt = None,
    split: SplitOpt = None,
    max_epochs: BenchmarkEpochsOpt = None,
    pruner: BenchmarkPrunerOpt = None,
    objective: BenchmarkObjectiveOpt = None,
    seed: BenchmarkSeedOpt = 0,
    workers: BenchmarkWorkersOpt = 1,
    storage: BenchmarkStorageOpt = None,
    name: Annotated[
        str | None,
        typer.Option(
            "--name", metavar="NAME", help="Benchmark name in the study names bench/NAME/... (default: --out's name)."
        ),
    ] = None,
    budget: Annotated[
        int | None,
        typer.Option(
            "--budget", metavar="N", min=1, help="Trials at which the pairwise table compares (default: --n-trials)."
        ),
    ] = None,
    top_k: Annotated[
        int,
        typer.Option(
            "--top-k",
            metavar="K",
            min=0,
            help="Top configurations per strategy re-trained with as many fresh seeds (0: none).",
        ),
    ] = 3,
) -> None:
    """Compare strategies over repeated, paired studies: anytime curves, final test quality with confidence
    intervals, pairwise significance and the selection-bias check, as HTML, JSON and CSV. Resumable; a finished
    benchmark only re-renders."""
    from hpo_astro.benchmark import BenchmarkSpec, run_benchmark
    from hpo_astro.study.config import load_config
    from hpo_astro.study.run import StudyFailed

    spec = BenchmarkSpec(
        strategies=tuple(s.strip() for s in strategies.split(",") if s.strip()),
        n_trials=n_trials,
        out=out,
        repeats=repeats,
        table=table,
        base=load_config(config) if config else None,
        **search_settings(data, channels, split, max_epochs, pruner, objective, seed, workers),
        storage=storage,
        name=name,
        budget=budget,
        top_k=top_k,
    )
    display = _BenchmarkDisplay(len(spec.strategies) * repeats)
    try:
        with display:
            result = run_benchmark(spec, events=note, on_outcome=display.outcome)
    except KeyboardInterrupt:
        err_console.print(f"interrupted; finished studies are kept, resume with: {resume_command()}", markup=False)
        raise typer.Exit(130) from None
    except StudyFailed as exc:
        fail(str(exc), code=1)
    console.print(
        f"benchmark {spec.benchmark_name!r}: {len(result.studies)} studies, {result.trials_run} trials run now"
        f"{f', {len(result.retrained)} re-trainings' if result.retrained else ''}; "
        f"wrote {out / 'index.html'}, benchmark.json and CSV files",
        highlight=False,
    )
    if per_trial := result.seconds_per_trial():
        timing = ", ".join(f"{s} {seconds * 1000:.0f} ms" for s, seconds in per_trial.items())
        console.print(f"wall time per trial run now: {timing}", highlight=False)


class _BenchmarkDisplay:
    """Studies finished out of the benchmark's, with the trials run now; a line per re-training."""

    def __init__(self, total: int) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.progress = Progress(
            TextColumn("[bold]studies"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[trials]} trials run"),
            TimeElapsedColumn(),
            console=console,
            transient=True,
        )
        self.task = self.progress.add_task("studies", total=total, trials=0)
        self.trials = 0

    def __enter__(self) -> _BenchmarkDisplay:
        self.progress.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.progress.__exit__(*exc)

    def outcome(self, outcome: object) -> None:
        from hpo_astro.benchmark.runner import RetrainOutcome, StudyOutcome

        if isinstance(outcome, StudyOutcome):
            self.trials += outcome.ran
            self.progress.update(self.task, advance=1, trials=self.trials)
        elif isinstance(outcome, RetrainOutcome):
            job = outcome.job
            self.progress.console.print(
                f"re-trained a top configuration of {job.strategy} with seed {job.seed}: {outcome.seconds:.1f} s",
                highlight=False,
            )
