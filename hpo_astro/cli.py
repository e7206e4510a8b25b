"""The `hpo-astro` command line: thin Typer commands over the library. Bad input -> one line, exit 2."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from typer.core import TyperGroup

from hpo_astro.errors import UserError

if TYPE_CHECKING:  # heavy imports stay lazy so that `--help` and input errors answer at once
    import optuna
    from optuna.trial import FrozenTrial

    from hpo_astro.config import StudyConfig
    from hpo_astro.train import TrainState

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


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
    from hpo_astro.train import resolve_device, train

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


@app.command("run")
def run_command(
    strategy: Annotated[
        str | None, typer.Option("--strategy", "-s", help="random, ablation, genetic, bayesian, tpe or grid.")
    ] = None,
    n_trials: Annotated[
        int | None, typer.Option("--n-trials", "-n", help="Budget: finished (complete + pruned) trials.")
    ] = None,
    study: Annotated[str | None, typer.Option("--study", help="Study name [default: the strategy name].")] = None,
    storage: Annotated[
        str | None, typer.Option("--storage", help="Optuna storage URL [default: sqlite:///optuna.db].")
    ] = None,
    data: DataOpt = None,
    channels: ChannelsOpt = None,
    max_epochs: Annotated[int | None, typer.Option("--max-epochs", help="Cap epochs per trial below t_max.")] = None,
    pruner: Annotated[
        str | None, typer.Option("--pruner", help="none, median, hyperband or successive-halving.")
    ] = None,
    objective: Annotated[
        str | None, typer.Option("--objective", help="accuracy, loss or roc_auc (validation).")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Sampler and training seed [default: 0].")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML study file (options override it).")
    ] = None,
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="torch CPU threads.")] = None,
) -> None:
    """Create or resume a study and run it until it holds --n-trials finished trials."""
    import shlex
    import sys

    import torch

    from hpo_astro.config import StudyConfig, load_config
    from hpo_astro.data.prepare import parse_channels
    from hpo_astro.study import RunEvents, StudyFailed, run_study

    base = load_config(config) if config else StudyConfig()
    cfg = base.merged(
        strategy=strategy,
        n_trials=n_trials,
        study=study,
        storage=storage,
        data=data,
        channels=parse_channels(channels) if channels else None,
        max_epochs=max_epochs,
        pruner=pruner,
        objective=objective,
        seed=seed,
    )
    if threads:
        torch.set_num_threads(threads)
    resume = "hpo-astro " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    display = _RunDisplay(cfg)
    try:
        with display:
            result = run_study(cfg, RunEvents(display.start, display.epoch, display.trial_end))
    except KeyboardInterrupt:
        err_console.print(f"interrupted: the running trial was marked failed; resume with: {resume}", markup=False)
        raise typer.Exit(130) from None
    except StudyFailed as exc:
        err_console.print(f"error: {exc}", markup=False)
        raise typer.Exit(1) from None
    best = _best(result.study)
    console.print(
        f"study {result.study.study_name!r}: {result.finished}/{result.target} finished trials"
        f" ({result.ran} run now); best value {best}",
        highlight=False,
    )


class _RunDisplay:
    """Live progress: finished/target trials, best value so far, the current trial's epoch."""

    def __init__(self, cfg: StudyConfig) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.cfg = cfg
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
        verb = "resuming" if finished or study.trials else "starting"
        console.print(
            f"{verb} study {study.study_name!r} ({self.cfg.strategy}, {self.cfg.objective} "
            f"{self.cfg.direction}d): {finished}/{target} finished",
            highlight=False,
        )
        self.task = self.progress.add_task(
            study.study_name, total=target, completed=finished, best=_best(study), current=""
        )

    def epoch(self, number: int, state: TrainState) -> None:
        self.progress.update(self.task, current=f"trial {number} epoch {state.epoch}/{state.max_epochs}")

    def trial_end(self, study: optuna.Study, trial: FrozenTrial, finished: int) -> None:
        value = "" if trial.value is None else f" value {trial.value:.4f}"
        reason = trial.user_attrs.get("fail_reason", "")
        extra = f" ({reason})" if trial.state.name == "FAIL" and reason else ""
        self.progress.console.print(f"trial {trial.number} {trial.state.name.lower()}{value}{extra}", highlight=False)
        self.progress.update(self.task, completed=finished, best=_best(study), current="")


def _best(study: optuna.Study) -> str:
    try:
        return f"{study.best_value:.4f}"
    except ValueError:
        return "-"


@app.command("status")
def status_command(
    storage: Annotated[str, typer.Option("--storage", help="Optuna storage URL.")] = "sqlite:///optuna.db",
    study: Annotated[str | None, typer.Option("--study", help="Only this study.")] = None,
) -> None:
    """Each study with its strategy, trial counts by state, best value and best parameters."""
    from rich.table import Table

    from hpo_astro.study import study_status

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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
