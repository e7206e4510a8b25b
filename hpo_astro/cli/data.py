"""The `data` commands: simulate, convert, download and inspect ExRomana data files."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from hpo_astro.cli.application import data_app
from hpo_astro.cli.options import SimulationSeedOpt
from hpo_astro.cli.output import console, err_console
from hpo_astro.errors import UserError


@data_app.command("synth")
def data_synth(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            metavar="FILE",
            help="File to write: X.npz writes the project's non-pickle format (samples + labels); X.npy writes "
            "exactly the ExRomana format (a NumPy pickle of {'TP': [...], 'FP': [...]}), for compatibility.",
        ),
    ],
    n: Annotated[
        int,
        typer.Option(
            "--n", metavar="N", min=2, max=100_000, help="Number of records (64 KB each in memory while simulating)."
        ),
    ] = 4676,
    seed: SimulationSeedOpt = 0,
) -> None:
    """Write a simulated data set (.npz, or the exact ExRomana format for .npy)."""
    from hpo_astro.data import exromana, simulate

    _refuse_directory(out)  # before simulating: the write would only fail at the very end
    start = time.perf_counter()
    records = simulate.simulate_records(n=n, seed=seed)
    exromana.save(records, out)
    console.print(
        f"wrote {out}: {len(records['TP'])} TP + {len(records['FP'])} FP records "
        f"in {time.perf_counter() - start:.1f} s (sha256 {exromana.sha256_file(out)[:16]}…)"
    )


def _refuse_directory(path: Path) -> None:
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a directory")


@data_app.command("convert")
def data_convert(
    src: Annotated[
        Path, typer.Argument(metavar="FILE", help="Any supported data file: ExRomana .npy, a bare pickle, or .npz.")
    ],
    out: Annotated[Path, typer.Option("--out", metavar="FILE", help="The .npz file to write.")],
) -> None:
    """Read a data file safely, validate it and write it in the project's non-pickle .npz format."""
    import numpy as np

    from hpo_astro.data import exromana

    if out.suffix.lower() != ".npz":
        raise UserError(f"--out must end in .npz (the non-pickle format), got {out}")
    _refuse_directory(out)
    if out.exists() and src.exists() and out.samefile(src):
        raise UserError(f"--out {out} is the source file; write the converted file elsewhere")
    data = exromana.load(src)
    empty = ~np.isfinite(data.samples).any(axis=(1, 2))  # (record, plane) pairs without a single finite pixel
    if empty.any():  # what `data info`, `train` and `run` refuse: refused here too, before anything is written
        record, plane = (int(i) for i in np.argwhere(empty)[0])
        raise UserError(
            f"{src}: record {record} (plane {plane}) has no finite pixel (all NaN/inf); "
            f"{int(empty.any(axis=1).sum())} such record(s): remove them from the file"
        )
    exromana.save_npz(data.samples, data.labels, out)
    counts = data.counts
    console.print(f"converted {src} -> {out}: {counts['TP']} TP + {counts['FP']} FP records")
    console.print(f"sha256 {exromana.sha256_file(out)}")


@data_app.command("download")
def data_download(
    out: Annotated[Path, typer.Option("--out", metavar="FILE", help="Destination file.")] = Path(
        "exromana_training_samples.npy"
    ),
    url: Annotated[
        str, typer.Option("--url", metavar="URL", help="Source URL (default: the official ExRomana file's).")
    ] = "",
) -> None:
    """Fetch the real ExRomana file (resumes a partial download), validate it and print its SHA-256."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from hpo_astro.data import download, exromana

    url = url or download.OFFICIAL_URL
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err_console,
        transient=True,
    ) as progress:
        task = progress.add_task(f"downloading {Path(url).name}", total=None)

        def report(done: int, total: int | None) -> None:
            progress.update(task, completed=done, total=total)

        path = download.download(url, out, progress=report)
    data = exromana.load(path)
    console.print(f"saved {path}: {data.counts['TP']} TP + {data.counts['FP']} FP records")
    console.print(f"sha256 {exromana.sha256_file(path)}")


@data_app.command("info")
def data_info(
    path: Annotated[Path, typer.Argument(metavar="FILE", help="Data file: ExRomana .npy (or a bare pickle) or .npz.")],
    gallery: Annotated[
        Path | None, typer.Option("--gallery", metavar="FILE", help="PNG to write (default: FILE.gallery.png).")
    ] = None,
    per_class: Annotated[int, typer.Option("--per-class", metavar="N", min=1, help="Gallery rows per class.")] = 6,
) -> None:
    """Counts per class, per-plane statistics, non-finite pixels, and a PNG gallery of TP and FP cutouts."""
    from rich.table import Table

    from hpo_astro.data import exromana, inspect

    if gallery is not None:
        _refuse_directory(gallery)
    data = exromana.load(path)
    counts = data.counts
    total = sum(counts.values())
    console.print(
        f"{path}: {total} records, TP {counts['TP']} ({counts['TP'] / total:.1%}), "
        f"FP {counts['FP']} ({counts['FP'] / total:.1%})"
    )
    table = Table("plane", "mean", "std", "min", "median", "max", "non-finite px", "cutouts w/ non-finite")
    for row in inspect.plane_statistics(data):
        table.add_row(
            row["plane"],
            *(f"{row[k]:.4g}" for k in ("mean", "std", "min", "median", "max")),
            str(row["nonfinite_pixels"]),
            str(row["cutouts_with_nonfinite"]),
        )
    console.print(table)
    gallery = gallery or path.with_suffix(".gallery.png")
    inspect.write_gallery(data, gallery, per_class=per_class)
    console.print(f"gallery: {gallery} (rows: {per_class} TP then {per_class} FP; columns: sci, ref, diff, scorr)")
