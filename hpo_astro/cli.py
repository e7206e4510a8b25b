"""The `hpo-astro` command line: thin Typer commands over the library. Bad input -> one line, exit 2."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from typer.core import TyperGroup

from hpo_astro.errors import UserError

console = Console()
err_console = Console(stderr=True)


# Click's UsageError (Typer vendors Click, so reach it through a public subclass).
_UsageError: type[Exception] = typer.BadParameter.__mro__[1]


class _Group(TyperGroup):
    """Bad input anywhere below (a UserError, or a usage error such as an option out of range) becomes one line
    on stderr and exit code 2, with no traceback."""

    def invoke(self, ctx: typer.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except UserError as exc:
            _fail(str(exc))
        except _UsageError as exc:
            command = exc.ctx.command_path if getattr(exc, "ctx", None) else ctx.command_path
            _fail(f"{exc.format_message()} (see '{command} --help')")


def _fail(message: str) -> None:
    message = " ".join(message.split())
    err_console.print(f"error: {message}", style="red", highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(2)


app = typer.Typer(
    cls=_Group,
    help="Hyperparameter search for real/bogus CNNs on astronomical cutouts (Optuna studies).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
data_app = typer.Typer(cls=_Group, help="Simulate, download and inspect ExRomana data files.", no_args_is_help=True)
app.add_typer(data_app, name="data")

DataOpt = Annotated[
    Path | None,
    typer.Option("--data", help="ExRomana .npy file; default: the simulated set, generated once and cached."),
]
ChannelsOpt = Annotated[
    str | None,
    typer.Option("--channels", help="Comma-separated planes among sci,ref,diff,scorr [default: scorr]."),
]


@data_app.command("synth")
def data_synth(
    out: Annotated[Path, typer.Option("--out", help="Where to write the .npy file.")],
    n: Annotated[int, typer.Option("--n", min=2, help="Number of records.")] = 4676,
    seed: Annotated[int, typer.Option("--seed", help="Simulation seed.")] = 0,
) -> None:
    """Write a simulated data set in exactly the ExRomana file format."""
    from hpo_astro.data import exromana, simulate

    start = time.perf_counter()
    records = simulate.simulate_records(n=n, seed=seed)
    exromana.save(records, out)
    console.print(
        f"wrote {out}: {len(records['TP'])} TP + {len(records['FP'])} FP records "
        f"in {time.perf_counter() - start:.1f} s (sha256 {exromana.sha256_file(out)[:16]}…)"
    )


@data_app.command("download")
def data_download(
    out: Annotated[Path, typer.Option("--out", help="Destination file.")] = Path("exromana_training_samples.npy"),
    url: Annotated[str, typer.Option("--url", help="Source URL.")] = "",
) -> None:
    """Fetch the real ExRomana file (resumes a partial download), validate it and print its SHA-256."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    from hpo_astro.data import exromana

    url = url or exromana.OFFICIAL_URL
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

        path = exromana.download(url, out, progress=report)
    data = exromana.load(path)
    console.print(f"saved {path}: {data.counts['TP']} TP + {data.counts['FP']} FP records")
    console.print(f"sha256 {exromana.sha256_file(path)}")


@data_app.command("info")
def data_info(
    path: Annotated[Path, typer.Argument(help="ExRomana .npy file.")],
    gallery: Annotated[
        Path | None, typer.Option("--gallery", help="PNG to write [default: <file>.gallery.png].")
    ] = None,
    per_class: Annotated[int, typer.Option("--per-class", min=1, help="Gallery rows per class.")] = 6,
) -> None:
    """Counts per class, per-plane statistics, non-finite pixels, and a PNG gallery of TP and FP cutouts."""
    from rich.table import Table

    from hpo_astro.data import exromana, inspect

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


@app.command("train")
def train_command(
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="NAME=VALUE, repeatable; unset ones take the documented defaults."),
    ] = None,
    data: DataOpt = None,
    channels: ChannelsOpt = None,
    max_epochs: Annotated[int | None, typer.Option("--max-epochs", min=1, help="Cap epochs below t_max.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Training seed (init, shuffling, dropout).")] = 0,
    out: Annotated[Path | None, typer.Option("--out", help="Directory for weights and config.")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="torch CPU threads.")] = None,
) -> None:
    """Train one configuration, print per-epoch and validation metrics, save weights and configuration."""
    import torch

    from hpo_astro.data.prepare import PrepConfig, load_splits, parse_channels
    from hpo_astro.model import save_model
    from hpo_astro.space import SearchSpace, parse_assignments
    from hpo_astro.train import TrainState, resolve_device, train

    space = SearchSpace.paper()
    params = space.complete(parse_assignments(param, space))
    prep = PrepConfig(channels=parse_channels(channels))
    torch_device = resolve_device(device)
    if threads:
        torch.set_num_threads(threads)
    splits = load_splits(data, prep)
    console.print(
        f"data {splits.source} ({splits.fingerprint}): train {len(splits.y_train)}, "
        f"val {len(splits.y_val)}, test {len(splits.y_test)}; channels {','.join(splits.channels)}; "
        f"device {torch_device}"
    )
    console.print("params " + " ".join(f"{k}={v}" for k, v in params.items()))

    class PrintEpoch:
        def on_epoch_end(self, state: TrainState) -> None:
            m = state.last
            mark = " *" if state.best_epoch == m.epoch else ""
            console.print(
                f"epoch {m.epoch:3d}/{state.max_epochs}  train loss {m.train_loss:.4f} acc {m.train_accuracy:.4f}"
                f"  val loss {m.val_loss:.4f} acc {m.val_accuracy:.4f} auc {m.val_roc_auc:.4f}"
                f"  lr {m.lr:.2e}  {m.seconds:.1f}s{mark}",
                highlight=False,
            )

    result = train(params, splits, callbacks=[PrintEpoch()], max_epochs=max_epochs, seed=seed, device=torch_device)
    v = result.val_metrics
    console.print(
        f"stopped: {result.stop_reason}; best epoch {result.best_epoch}; {result.n_params:,} parameters; "
        f"{result.wall_time:.1f} s"
    )
    console.print(
        f"validation: loss {v.loss:.4f}  accuracy {v.accuracy:.4f}  ROC AUC {v.roc_auc:.4f}  precision "
        f"{v.precision:.4f}  recall {v.recall:.4f}  F1 {v.f1:.4f}  FPR@5%FNR {v.fpr_at_5fnr:.4f}",
        highlight=False,
    )
    out = out or Path("runs") / time.strftime("train-%Y%m%d-%H%M%S")
    manifest = {
        **result.summary(),
        "in_channels": splits.in_channels,
        "preprocessing": {
            "channels": list(splits.channels),
            "scaling": "zscale",
            "threshold": 0.5,
            "split_seed": splits.info["split_seed"],
        },
        "data": {"source": splits.source, "fingerprint": splits.fingerprint},
    }
    save_model(out, result.model, manifest)
    console.print(f"saved weights and configuration to {out}/")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
