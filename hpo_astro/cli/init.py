"""The `init` command: a packaged study file copied out to edit (`hpo_astro.study.packaged`)."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Annotated

import typer

from hpo_astro.cli.application import app
from hpo_astro.cli.output import console, program


@app.command("init")
def init_command(
    name: Annotated[
        str | None, typer.Argument(metavar="NAME", help="A packaged study file, e.g. quick-demo; none: list them.")
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="File or folder to write (default: ./NAME.toml).")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
    list_names: Annotated[bool, typer.Option("--list", help="List the packaged study files and exit.")] = False,
) -> None:
    """Copy a packaged study file (quick-demo, the paper's studies...) into the working directory to edit; without
    NAME, list them. `run --config NAME` runs one as it is."""
    from hpo_astro.study.packaged import copy_study_file, packaged_names

    if list_names or name is None:
        for known in packaged_names():
            console.print(known, highlight=False, markup=False)
        return
    written = copy_study_file(name, out, force=force)
    console.print(f"wrote {written}", highlight=False, markup=False)
    console.print(f"next: {program()} run --config {shlex.quote(str(written))}", highlight=False, markup=False)
