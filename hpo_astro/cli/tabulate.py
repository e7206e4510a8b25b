"""The `tabulate` command: every configuration of a finite space trained once, written as the table that
`benchmark --table` replays."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hpo_astro.cli.application import app
from hpo_astro.cli.options import (
    DataOpt,
    SplitOpt,
    StorageOpt,
    TableEpochsOpt,
    TableSeedOpt,
    TableWorkersOpt,
    WorkerThreadsOpt,
)
from hpo_astro.cli.output import console, fail, injected_trainer
from hpo_astro.cli.study import execute_study
from hpo_astro.cli.worker_options import (
    StackRunsOpt,
)
from hpo_astro.errors import UserError
from hpo_astro.study.defaults import DEFAULT_STORAGE


@app.command("tabulate")
def tabulate_command(
    ctx: typer.Context,
    out: Annotated[
        str, typer.Option("--out", metavar="NAME", help="The table's name: its study is table/NAME in the store.")
    ],
    space: Annotated[
        Path | None,
        typer.Option(
            "--space",
            "--config",
            metavar="FILE",
            help="Study file whose space section is enumerated (its other settings apply, except strategy, study, "
            "n_trials and pruner). Leave out to resume the table study in the store.",
        ),
    ] = None,
    json_out: Annotated[
        Path | None,
        typer.Option("--json", metavar="FILE", help="Write the finished table here; .gz: gzip'd (default: NAME.json)."),
    ] = None,
    storage: StorageOpt = DEFAULT_STORAGE,
    data: DataOpt = None,
    split: SplitOpt = None,
    max_epochs: TableEpochsOpt = None,
    max_configs: Annotated[
        int,
        typer.Option("--max-configs", metavar="N", min=1, help="Refuse a space with more configurations than this."),
    ] = 10_000,
    seed: TableSeedOpt = None,
    seeds: Annotated[
        int | None,
        typer.Option(
            "--seeds",
            metavar="S",
            min=1,
            max=100,
            help="Train each configuration with S seeds: seed, seed+1, ... (default: 1).",
        ),
    ] = None,
    workers: TableWorkersOpt = None,
    threads: WorkerThreadsOpt = None,
    stack_runs: StackRunsOpt = None,
) -> None:
    """Train every configuration of a finite space once (or with --seeds S seeds), whole curves and test metrics
    included (a grid study named table/NAME: resumable, --workers like run), then write the table that
    `benchmark --table` replays."""
    from hpo_astro import tabular
    from hpo_astro.io import check_output
    from hpo_astro.study.config import parse_split

    json_path = json_out or Path(f"{tabular.check_name(out)}.json")
    check_output(json_path)  # before hours of training, not after
    cfg = tabular.tabulate_config(
        space,
        out,
        storage,
        max_configs,
        data=data,
        max_epochs=max_epochs,
        seed=seed,
        eval_seeds=seeds,
        workers=workers,
        stack_runs=stack_runs,
        split=None if split is None else parse_split(split),
    )
    result = execute_study(cfg, threads, train=tabular.tabulating(injected_trainer(ctx)))
    try:
        table = tabular.table_from_study(result.study, cfg.storage)
    except UserError as exc:  # configurations whose training failed: not the input's fault
        fail(str(exc), code=1)
    table.save(json_path)
    epochs = sum(len(row.history) for row in table.rows)
    console.print(
        f"table {out!r}: {table.configurations} configurations{f' x {table.seeds} seeds' if table.seeds > 1 else ''}, "
        f"{epochs} epochs, "
        f"{table.info['training_seconds']:.0f} s of training; wrote {json_path}",
        highlight=False,
    )
