"""The `confirm` command: a study's finalists trained again with fresh seeds (`hpo_astro.study.confirm`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from hpo_astro.cli.application import app
from hpo_astro.cli.options import StorageOpt, ThreadsOpt
from hpo_astro.cli.output import console, err_console, injected_trainer, resume_command
from hpo_astro.cli.worker_options import StackRunsOpt, WorkerDeviceOpt, worker_settings
from hpo_astro.study.defaults import DEFAULT_STORAGE

if TYPE_CHECKING:  # heavy imports stay lazy so that `--help` and input errors answer at once
    from rich.table import Table

    from hpo_astro.study.confirm import Confirmation


@app.command("confirm")
def confirm_command(
    ctx: typer.Context,
    study: Annotated[
        str, typer.Option("--study", metavar="NAME", help="The study whose best configurations to train again.")
    ],
    storage: StorageOpt = DEFAULT_STORAGE,
    top_k: Annotated[
        int, typer.Option("--top-k", "-k", metavar="K", min=1, help="How many distinct configurations.")
    ] = 5,
    seeds: Annotated[
        int, typer.Option("--seeds", metavar="N", min=2, max=100, help="Fresh training seeds for each.")
    ] = 5,
    confirm_study: Annotated[
        str | None,
        typer.Option("--confirm-study", metavar="NAME", help="The confirmation's study name (default: STUDY/confirm)."),
    ] = None,
    table: Annotated[
        str | None,
        typer.Option(
            "--table",
            metavar="TABLE",
            help="A study that replays this table (a benchmark's): confirm from its other seeds.",
        ),
    ] = None,
    threads: ThreadsOpt = None,
    devices: WorkerDeviceOpt = None,
    stack_runs: StackRunsOpt = None,
) -> None:
    """Train the study's top-k configurations again with fresh seeds; compare, report and export then take the best
    confirmed mean. Resumable: run the same command again."""
    import torch

    from hpo_astro.cli.progress import RunDisplay
    from hpo_astro.study.confirm import confirm_study as confirm
    from hpo_astro.study.run import RunEvents

    if threads:
        torch.set_num_threads(threads)
    train, data = injected_trainer(ctx), None
    if table is not None:  # tabular mode: the table answers, with the runs of the seeds the search did not draw
        from hpo_astro.tabular import TableReplay, load_table, table_data

        replayed = load_table(table, storage)
        train, data = TableReplay(replayed), table_data(replayed)
    display = RunDisplay()
    overrides = worker_settings(None, None, None, None, devices, None, stack_runs)
    try:
        with display:
            events = RunEvents(display.start, display.epoch, display.trial_end, display.wait, display.trial_start)
            result = confirm(
                storage,
                study,
                top_k,
                seeds,
                confirm_study,
                events,
                train,
                lambda cfg: cfg.merged(**overrides),
                data,
            )
    except KeyboardInterrupt:
        err_console.print(f"interrupted; resume with: {resume_command()}", markup=False)
        raise typer.Exit(130) from None
    console.print(confirmation_table(result))
    best = result.best
    if best is not None:
        console.print(
            f"compare, report and export now take trial #{best.trial} of {study!r}: the best confirmed mean, "
            f"{best.mean:.4f} over {len(best.values)} fresh seeds (its search value: {best.search_value:.4f})",
            highlight=False,
        )


def confirmation_table(result: Confirmation) -> Table:
    from rich.table import Table

    table = Table(title=f"{result.source}: finalists trained again ({result.study})")
    for column in ("trial", "search value", "confirmed mean", "95% CI", "seeds"):
        table.add_column(column, justify="right")
    for c in result.configurations:
        low, high = c.ci
        table.add_row(
            f"#{c.trial}",
            f"{c.search_value:.4f}",
            f"{c.mean:.4f}" if c.values else "-",
            f"{low:.4f} to {high:.4f}" if c.values else "-",
            str(len(c.values)),
        )
    return table
