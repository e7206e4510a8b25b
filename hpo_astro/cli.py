"""The `hpo-astro` command line: thin Typer commands over the library. Bad input -> one line, exit 2."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from typer.core import TyperGroup

from hpo_astro.errors import UserError, write_fault

if TYPE_CHECKING:  # heavy imports stay lazy so that `--help` and input errors answer at once
    import optuna
    from optuna.trial import FrozenTrial

    from hpo_astro.core.train import TrainState
    from hpo_astro.study.config import StudyConfig
    from hpo_astro.study.objective import TrainFn
    from hpo_astro.study.run import RunResult

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)


# Click's UsageError (Typer vendors Click, so reach it through a public subclass).
_UsageError: type[Exception] = typer.BadParameter.__mro__[1]


class _Group(TyperGroup):
    """Bad input anywhere below (a UserError, or a usage error such as an option out of range) becomes one line
    on stderr and exit code 2, with no traceback. Also how every command's help reads (see `_polish`)."""

    def make_context(self, info_name, args, parent=None, **extra):  # type: ignore[no-untyped-def,override]
        # The top level's own usage errors (an unknown option, a missing command) arise here, before `invoke`, where
        # Typer would draw them in a Rich box: one `error:` line too. Asking for help with no arguments stays help.
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except _UsageError as exc:
            if type(exc).__name__ == "NoArgsIsHelpError":
                raise
            command = exc.ctx.command_path if getattr(exc, "ctx", None) else info_name
            _fail(f"{exc.format_message()} (see '{command} --help')")

    def invoke(self, ctx: typer.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except typer.Exit:  # a command that has said its one line already (Click's Exit is a RuntimeError)
            raise
        except UserError as exc:  # bad input: exit 2; a write the machine refused (CannotWrite): exit 1
            _fail(str(exc), code=getattr(exc, "exit_code", 2))
        except _UsageError as exc:
            if getattr(exc, "ctx", None):
                command = exc.ctx.command_path
            else:  # raised while the subcommand parsed its options: its help, not the group's
                command = " ".join(filter(None, [ctx.command_path, ctx.invoked_subcommand]))
            _fail(f"{exc.format_message()} (see '{command} --help')")
        except Exception as exc:  # a full disk or a failing store anywhere: one line too, never a traceback
            reason = write_fault(exc)
            if reason is not None:
                _fail(f"cannot write: {reason}; free some space and re-run the same command", code=1)
            if not _store_fault(exc):
                raise
            _fail(f"the study store failed: {' '.join(str(getattr(exc, 'orig', None) or exc).split()[:40])}")

    def get_command(self, ctx: typer.Context, cmd_name: str):  # type: ignore[no-untyped-def,override]
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _polish(command, ctx)
        return command

    def get_params(self, ctx: typer.Context):  # type: ignore[no-untyped-def,override]
        return [_as_flag(param) for param in super().get_params(ctx)]  # the group's own: --version, --help


def _polish(command: typer.core.TyperCommand, ctx: typer.Context) -> None:
    """How a command's help reads, for every command (those added later too): a docstring's line breaks are not
    sentence breaks (Rich help keeps them, so a command's summary in the list stopped mid-sentence), and a boolean
    flag takes no value, so it is shown as `--png`, not `--png <bool>`."""
    if command.help:
        command.help = _unwrap(command.help)
    for param in command.params:
        _as_flag(param)
    _as_flag(command.get_help_option(ctx))


def _unwrap(text: str) -> str:
    """Paragraphs (blank-line separated) on one line each: the help formatter wraps them to the terminal."""
    import inspect

    paragraphs = re.split(r"\n\s*\n", inspect.cleandoc(text))
    return "\n\n".join(" ".join(paragraph.split()) for paragraph in paragraphs)


def _as_flag(param: object) -> object:
    # Typer shows an option's value type unless it has a metavar; an empty one shows nothing.
    if getattr(param, "is_flag", False) and getattr(param, "metavar", "") is None:
        param.metavar = ""  # type: ignore[attr-defined]
    return param


def _store_fault(exc: BaseException) -> bool:
    """A database error past the checks made when the store was opened (a page damaged after its integrity check,
    a lock held past the busy timeout): bad input, one line. sqlalchemy is looked up only if already loaded."""
    import sqlite3
    import sys

    sqlalchemy_exc = sys.modules.get("sqlalchemy.exc")
    return isinstance(exc, sqlite3.DatabaseError) or (
        sqlalchemy_exc is not None and isinstance(exc, sqlalchemy_exc.DatabaseError)
    )


def _fail(message: str, code: int = 2) -> None:
    message = " ".join(message.split())
    err_console.print(f"error: {message}", style="red", highlight=False, markup=False, soft_wrap=True)
    raise typer.Exit(code)


app = typer.Typer(
    cls=_Group,
    help="Hyperparameter search for real/bogus CNNs on astronomical cutouts (Optuna studies).",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)
data_app = typer.Typer(cls=_Group, help="Simulate, download and inspect ExRomana data files.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _print_version(value: bool) -> None:
    if value:
        from hpo_astro import __version__

        console.print(f"hpo-astro {__version__}", highlight=False)
        raise typer.Exit()


class _LibraryNotes(logging.Handler):
    """The library's INFO lines (e.g. that the default data set is being simulated), one plain line each on stderr."""

    def emit(self, record: logging.LogRecord) -> None:
        _note(record.getMessage())


_library_notes = _LibraryNotes(logging.INFO)


@app.callback()
def _global_options(
    version: Annotated[
        bool,
        typer.Option("--version", is_eager=True, callback=_print_version, help="Print the version and exit."),
    ] = False,
) -> None:
    logger = logging.getLogger("hpo_astro")
    logger.setLevel(logging.INFO)
    logger.addHandler(_library_notes)  # the same handler each time: added once per process


DataOpt = Annotated[
    Path | None,
    typer.Option("--data", help="Data file (.npz, or ExRomana .npy); default: the simulated set, cached once."),
]
ChannelsOpt = Annotated[
    str | None,
    typer.Option("--channels", help="Comma-separated planes among sci,ref,diff,scorr (default: scorr)."),
]
ArtifactsOpt = Annotated[
    Path | None,
    typer.Option("--artifacts", help="Checkpoint/weights directory (default: beside the SQLite or journal file)."),
]
HeartbeatOpt = Annotated[
    int | None, typer.Option("--heartbeat", min=0, help="Seconds between trial heartbeats; 0 disables (default: 10).")
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
CaptureOpt = Annotated[
    bool | None,
    typer.Option(
        "--capture/--no-capture",
        help="On CUDA, record each trial's train step once as a CUDA graph and replay it (default); "
        "--no-capture runs every step eagerly. CPU is always eager.",
    ),
]
GraceOpt = Annotated[
    int | None,
    typer.Option("--grace-period", min=1, help="Seconds without heartbeat before a trial is dead (default: 30)."),
]


@data_app.command("synth")
def data_synth(
    out: Annotated[
        Path,
        typer.Option(
            "--out",
            help="File to write: X.npz writes the project's non-pickle format (samples + labels); X.npy writes "
            "exactly the ExRomana format (a NumPy pickle of {'TP': [...], 'FP': [...]}), for compatibility.",
        ),
    ],
    n: Annotated[
        int,
        typer.Option("--n", min=2, max=100_000, help="Number of records (64 KB each in memory while simulating)."),
    ] = 4676,
    seed: Annotated[int, typer.Option("--seed", min=0, max=2**32 - 1, help="Simulation seed.")] = 0,
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
    src: Annotated[Path, typer.Argument(help="Any supported data file: ExRomana .npy, a bare pickle, or .npz.")],
    out: Annotated[Path, typer.Option("--out", help="The .npz file to write.")],
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
    out: Annotated[Path, typer.Option("--out", help="Destination file.")] = Path("exromana_training_samples.npy"),
    url: Annotated[str, typer.Option("--url", help="Source URL.")] = "",
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
    path: Annotated[Path, typer.Argument(help="Data file: ExRomana .npy (or a bare pickle) or .npz.")],
    gallery: Annotated[
        Path | None, typer.Option("--gallery", help="PNG to write (default: <file>.gallery.png).")
    ] = None,
    per_class: Annotated[int, typer.Option("--per-class", min=1, help="Gallery rows per class.")] = 6,
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


@app.command("train")
def train_command(
    param: Annotated[
        list[str] | None,
        typer.Option("--param", "-p", help="NAME=VALUE, repeatable; unset ones take the documented defaults."),
    ] = None,
    data: DataOpt = None,
    channels: ChannelsOpt = None,
    max_epochs: Annotated[int | None, typer.Option("--max-epochs", min=1, help="Cap epochs below t_max.")] = None,
    seed: Annotated[
        int, typer.Option("--seed", min=0, max=2**32 - 1, help="Training seed (init, shuffling, dropout).")
    ] = 0,
    out: Annotated[Path | None, typer.Option("--out", help="Directory for weights and config.")] = None,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda or cuda:N.")] = "auto",
    threads: Annotated[int | None, typer.Option("--threads", min=1, max=1024, help="torch CPU threads.")] = None,
) -> None:
    """Train one configuration, print per-epoch and validation metrics, save weights and configuration."""
    import torch

    from hpo_astro.core.model import model_manifest, save_model
    from hpo_astro.core.space import SearchSpace, parse_assignments
    from hpo_astro.core.train import resolve_device, train
    from hpo_astro.data.prepare import PrepConfig, load_splits, parse_channels

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

    result = train(
        params,
        splits,
        callbacks=[PrintEpoch()],
        max_epochs=max_epochs,
        seed=seed,
        device=torch_device,
        evaluate_train=True,
    )
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
    summary = result.summary()  # the history, metrics and seed go in beside the model's own fields
    manifest = model_manifest(summary.pop("params"), splits, prep, extra=summary)
    save_model(out, result.model, manifest)
    console.print(f"saved weights and configuration to {out}/")


@app.command("run")
def run_command(
    strategy: Annotated[
        str | None,
        typer.Option(
            "--strategy",
            "-s",
            help="random, ablation, genetic, bayesian, tpe, grid, bohb or qmc; or your own Optuna sampler class by "
            "import path, package.module:ClassName.",
        ),
    ] = None,
    n_trials: Annotated[
        int | None, typer.Option("--n-trials", "-n", help="Budget: finished (complete + pruned) trials.")
    ] = None,
    study: Annotated[str | None, typer.Option("--study", help="Study name (default: the strategy name).")] = None,
    storage: Annotated[
        str | None, typer.Option("--storage", help="Optuna storage URL (default: sqlite:///optuna.db).")
    ] = None,
    data: DataOpt = None,
    channels: ChannelsOpt = None,
    max_epochs: Annotated[int | None, typer.Option("--max-epochs", help="Cap epochs per trial below t_max.")] = None,
    pruner: Annotated[
        str | None,
        typer.Option(
            "--pruner", help="none, median, hyperband or successive-halving (default: hyperband for bohb, else none)."
        ),
    ] = None,
    objective: Annotated[
        str | None, typer.Option("--objective", help="accuracy, loss or roc_auc (validation).")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Sampler and training seed (default: 0).")] = None,
    config: Annotated[
        Path | None, typer.Option("--config", "-c", help="TOML study file (options override it).")
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option("--threads", min=1, max=1024, help="torch CPU threads per worker (default: cores / workers)."),
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", "-w", min=1, help="Worker processes on this machine (default: 1).")
    ] = None,
    artifacts: ArtifactsOpt = None,
    heartbeat: HeartbeatOpt = None,
    grace_period: GraceOpt = None,
    checkpoint_interval: CheckpointOpt = None,
    devices: DevicesOpt = None,
    capture: CaptureOpt = None,
) -> None:
    """Create or resume a study and run it until it holds --n-trials finished trials."""
    from hpo_astro.data.prepare import parse_channels
    from hpo_astro.study.config import StudyConfig, load_config

    base = load_config(config) if config else StudyConfig()
    cfg = base.merged(
        strategy=strategy,
        n_trials=n_trials,
        study=study,
        storage=storage,
        data=data,
        channels=parse_channels(channels) if channels is not None else None,
        max_epochs=max_epochs,
        pruner=pruner,
        objective=objective,
        seed=seed,
        workers=workers,
        artifacts=artifacts,
        heartbeat_interval=heartbeat,
        grace_period=grace_period,
        checkpoint_interval=checkpoint_interval,
        devices=_devices(devices),
        capture=capture,
    )
    _execute(cfg, threads)
    _next_steps(cfg.storage, cfg.study_name)


def _program() -> str:
    """How the user ran hpo-astro, so that the commands printed for them work where they are: `hpo-astro` when
    that is what the shell finds on PATH, else the path they typed (e.g. `.venv/bin/hpo-astro`)."""
    import shutil
    import sys

    typed = sys.argv[0] if sys.argv else ""
    if Path(typed).name != "hpo-astro":  # python -m hpo_astro.cli, or a test runner
        return "hpo-astro"
    on_path = shutil.which("hpo-astro")
    if on_path and Path(on_path).resolve() == Path(typed).resolve():
        return "hpo-astro"
    return typed


def _next_steps(storage: str, study: str) -> None:
    """After a run: the commands that look at its results, as the user can paste them."""
    import shlex

    from hpo_astro.study.config import DEFAULT_STORAGE

    program = _program()
    where = "" if storage == DEFAULT_STORAGE else f" --storage {shlex.quote(storage)}"
    report = Path("reports") / re.sub(r"[^A-Za-z0-9_.-]+", "-", study).strip("-.")
    steps = [
        (f"{program} dashboard{where}", "browse every trial in optuna-dashboard"),
        (f"{program} report{where} --study {shlex.quote(study)} --out {report}", "the HTML report"),
        (f"{program} compare{where}", "the best trial of each study on train/val/test"),
    ]
    width = max(len(command) for command, _ in steps)
    console.print("next:", highlight=False)
    for command, what in steps:
        console.print(f"  {command.ljust(width)}  # {what}", highlight=False, markup=False)


def _devices(option: str | None) -> tuple[str, ...] | None:
    return None if option is None else tuple(d.strip() for d in option.split(",") if d.strip())


@app.command("worker")
def worker_command(
    study: Annotated[str, typer.Option("--study", help="The study to join (it must exist in the store).")],
    storage: Annotated[str, typer.Option("--storage", help="Optuna storage URL.")] = "sqlite:///optuna.db",
    threads: Annotated[int | None, typer.Option("--threads", min=1, max=1024, help="torch CPU threads.")] = None,
    artifacts: ArtifactsOpt = None,
    heartbeat: HeartbeatOpt = None,
    grace_period: GraceOpt = None,
    checkpoint_interval: CheckpointOpt = None,
    devices: Annotated[
        str | None, typer.Option("--devices", help="The device this worker trains on (cpu, cuda, cuda:N).")
    ] = None,
    capture: CaptureOpt = None,
    strategy: Annotated[
        str | None,
        typer.Option(
            "--strategy",
            help="For a study whose strategy is a sampler class by import path: that path again, to allow importing "
            "it (a path only the store names is never imported: importing runs its code).",
        ),
    ] = None,
    trust_sampler: Annotated[
        bool, typer.Option("--trust-sampler", help="Import the sampler class path the study recorded, whatever it is.")
    ] = False,
) -> None:
    """Join an existing study from another shell or machine, with the configuration it recorded."""
    from hpo_astro.study.workers import config_from_study

    cfg = config_from_study(
        storage,
        study,
        trusted_sampler=True if trust_sampler else (strategy or False),
        artifacts=artifacts,
        heartbeat_interval=heartbeat,
        grace_period=grace_period,
        checkpoint_interval=checkpoint_interval,
        devices=_devices(devices),
        capture=capture,
    )
    from hpo_astro.tabular import train_for_study

    _execute(cfg, threads, joined=True, train=train_for_study(cfg.study_name))  # a table study records test metrics
    _next_steps(cfg.storage, cfg.study_name)


@app.command("storage-proxy")
def storage_proxy_command(
    storage: Annotated[str, typer.Option("--storage", help="The storage the proxy serves.")] = "sqlite:///optuna.db",
    host: Annotated[str, typer.Option("--host", help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port to listen on.")] = 13000,
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


def _execute(cfg: StudyConfig, threads: int | None, joined: bool = False, train: TrainFn | None = None) -> RunResult:
    """Run `cfg` with a live display; Ctrl-C / SIGTERM print the command that resumes. `train` replaces the trainer
    (see `run_study`)."""
    import shlex
    import sys

    from hpo_astro.study.run import RunEvents, StudyFailed, run_study
    from hpo_astro.study.workers import run_workers

    resume = " ".join(shlex.quote(a) for a in [_program(), *sys.argv[1:]])
    display = _RunDisplay(cfg)

    def start(study: optuna.Study, finished: int, target: int) -> None:
        if not joined:  # the command that made the study, for its note in optuna-dashboard
            from hpo_astro.results.dashboard import absolute_storage, study_note, write_note

            write_note(study, study_note(study, sys.argv[1:], _program(), Path.cwd(), absolute_storage(cfg.storage)))
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
        _fail(str(exc), code=1)
    best = _best(result.study)
    console.print(
        f"study {result.study.study_name!r}: {result.finished}/{result.target} finished trials"
        f" ({result.ran} run by this process); best value {best}",
        highlight=False,
    )
    return result


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

    def wait(self, running: int) -> None:
        self.progress.update(self.task, current=f"waiting for {running} running trial(s) elsewhere")

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


StorageOpt = Annotated[str, typer.Option("--storage", help="Optuna storage URL.")]
StudiesOpt = Annotated[
    list[str] | None, typer.Option("--study", help="A study to include, repeatable (default: every study).")
]
StudyDataOpt = Annotated[
    Path | None,
    typer.Option("--data", help="The studies' data file, when it is no longer where the study recorded it."),
]


def _note(message: str) -> None:
    err_console.print(message, markup=False, highlight=False)


@app.command("compare")
def compare_command(
    storage: StorageOpt = "sqlite:///optuna.db",
    study: StudiesOpt = None,
    fmt: Annotated[str, typer.Option("--format", help="table, markdown, csv or json.")] = "table",
    out: Annotated[Path | None, typer.Option("--out", help="Write to this file instead of stdout.")] = None,
    data: StudyDataOpt = None,
) -> None:
    """Evaluate each study's best trial on train/val/test: the paper's final table, plus ROC AUC, precision, recall,
    F1, FPR at 5% FNR, wall time and trials used. Cached in the store: a second run is instant."""
    from hpo_astro.io import check_output, write_output
    from hpo_astro.report.compare import check_format, compare_studies, render, rich_table

    check_format(fmt)
    if out is not None:
        check_output(out)
    comparison = compare_studies(storage, study, data, events=_note)
    for _, why in comparison.skipped:
        _note(f"skipped: {why}")
    if out is not None:
        write_output(out, render(comparison, fmt))
        console.print(f"wrote {out}")
    elif fmt == "table":
        console.print(rich_table(comparison))
    else:
        typer.echo(render(comparison, fmt), nl=False)


@app.command("report")
def report_command(
    out: Annotated[Path, typer.Option("--out", help="Directory for index.html and one page per study.")],
    storage: StorageOpt = "sqlite:///optuna.db",
    study: StudiesOpt = None,
    png: Annotated[bool, typer.Option("--png", help="Also write every figure as a PNG (kaleido + Chrome).")] = False,
    data: StudyDataOpt = None,
) -> None:
    """Write a self-contained HTML report (interactive Plotly, works offline): the paper's figures per study,
    cross-study overlays, Optuna's plots, each best model's confusion matrix and misclassified cutouts."""
    from hpo_astro.report.html import build_report

    report = build_report(storage, out, study, data=data, png=png, events=_note)
    for _, why in report.skipped:
        _note(f"skipped: {why}")
    images = f" and {len(report.images)} PNG images" if report.images else ""
    console.print(f"wrote {len(report.pages)} pages{images} to {out}/; open {out / 'index.html'}")


@app.command("export")
def export_command(
    study: Annotated[str, typer.Option("--study", help="The study whose best model to export.")],
    out: Annotated[Path, typer.Option("--out", help="Directory for model.pt and model.json.")],
    storage: StorageOpt = "sqlite:///optuna.db",
    data: StudyDataOpt = None,
) -> None:
    """Export a study's best model: weights, hyperparameters and preprocessing (channels, scaling, threshold)."""
    from hpo_astro.results.export import export_best

    exported = export_best(storage, study, out, data, events=_note)
    t = exported.evaluation.test
    console.print(
        f"exported trial #{exported.manifest['study']['trial']} of study {study!r} to {out}/: test accuracy "
        f"{t['accuracy']:.4f}, ROC AUC {t['roc_auc']:.4f}, FPR@5%FNR {t['fpr_at_5fnr']:.4f}",
        highlight=False,
    )
    if exported.matches_cache is False:
        _note("warning: these metrics differ from the ones `compare` cached for this trial (another device?)")


@app.command("predict")
def predict_command(
    model: Annotated[Path, typer.Option("--model", help="A directory written by `hpo-astro export` (or train).")],
    data: Annotated[Path, typer.Option("--data", help="ExRomana file (labelled) or a list of records to score.")],
    out: Annotated[Path, typer.Option("--out", help="CSV of index,label,score,prediction.")] = Path("scores.csv"),
    split: Annotated[
        str, typer.Option("--split", help="all, or train/val/test: that split of a labelled file, as in training.")
    ] = "all",
) -> None:
    """Score cutouts with an exported model, without the study store; print metrics when labels are present."""
    from hpo_astro.results.export import predict, write_scores

    prediction = predict(model, data, split)
    write_scores(prediction, out)
    n, n_real = len(prediction.scores), int(prediction.predictions.sum())
    console.print(
        f"scored {n} cutouts of {data}{'' if split == 'all' else f' ({split} split)'} with {model} (channels "
        f"{','.join(prediction.channels)}, threshold {prediction.threshold:g}): {n_real} real, {n - n_real} bogus; "
        f"wrote {out}",
        highlight=False,
    )
    if prediction.metrics is not None:
        m = prediction.metrics
        console.print(
            f"metrics: loss {m.loss:.4f}  accuracy {m.accuracy:.4f}  ROC AUC {m.roc_auc:.4f}  precision "
            f"{m.precision:.4f}  recall {m.recall:.4f}  F1 {m.f1:.4f}  FPR@5%FNR {m.fpr_at_5fnr:.4f}",
            highlight=False,
        )


@app.command("dashboard")
def dashboard_command(
    storage: StorageOpt = "sqlite:///optuna.db",
    host: Annotated[str, typer.Option("--host", help="Interface to bind; 0.0.0.0 exposes it to the network.")] = (
        "127.0.0.1"
    ),
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="TCP port.")] = 8080,
    artifacts_dir: Annotated[
        Path | None,
        typer.Option(
            "--artifacts",
            help="Serve the trials' artifacts from this folder (default: the one beside the SQLite or journal file).",
        ),
    ] = None,
) -> None:
    """Browse the study store with optuna-dashboard (every trial, its curves and attributes); Ctrl-C stops it."""
    import shlex

    from hpo_astro.results.dashboard import ReadOnlyArtifacts, run_server, served_folder, unserved_folders
    from hpo_astro.store.storage import read_store

    # One folder, never one the store names (a store from someone else could name any); served as downloads only.
    folder = served_folder(storage, artifacts_dir)
    with read_store(storage) as store:  # read-only: the dashboard's own writes (notes, ...) are refused
        for other, studies in unserved_folders(store, folder).items():
            names, serve = ", ".join(repr(name) for name in studies), shlex.quote(str(other))
            _note(f"note: {other} (the artifact folder of {names}) is not served; add --artifacts {serve} to serve it")
        artifacts = ReadOnlyArtifacts([folder]) if folder is not None else None
        shown = f"[{host}]" if ":" in host else host
        console.print(f"optuna-dashboard on {storage}: http://{shown}:{port}/ (Ctrl-C to stop)", highlight=False)
        if host not in ("127.0.0.1", "localhost", "::1"):
            _note(f"warning: bound to {host}, reachable from other machines; optuna-dashboard has no authentication")
        try:
            run_server(store, host=host, port=port, artifact_store=artifacts)
        except KeyboardInterrupt:
            pass
        except OSError as exc:
            raise UserError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None


@app.command("tabulate")
def tabulate_command(
    out: Annotated[str, typer.Option("--out", help="The table's name: its study is table/NAME in the store.")],
    space: Annotated[
        Path | None,
        typer.Option(
            "--space",
            "--config",
            help="Study file whose space section is enumerated (its other settings apply, except strategy, study, "
            "n_trials and pruner). Leave out to resume the table study in the store.",
        ),
    ] = None,
    storage: Annotated[str, typer.Option("--storage", help="Optuna storage URL.")] = "sqlite:///optuna.db",
    data: DataOpt = None,
    max_epochs: Annotated[int | None, typer.Option("--max-epochs", min=1, help="Cap epochs per configuration.")] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", min=0, max=2**32 - 1, help="Training seed (default: 0).")
    ] = None,
    workers: Annotated[
        int | None, typer.Option("--workers", "-w", min=1, help="Worker processes (default: 1).")
    ] = None,
    threads: Annotated[
        int | None,
        typer.Option("--threads", min=1, max=1024, help="torch CPU threads per worker (default: cores / workers)."),
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the finished table here (default: NAME.json; .gz: gzip'd).")
    ] = None,
    max_configs: Annotated[
        int, typer.Option("--max-configs", min=1, help="Refuse a space with more configurations than this.")
    ] = 10_000,
) -> None:
    """Train every configuration of a finite space once, whole curves and test metrics included (a grid study
    named table/NAME: resumable, --workers like run), then write the table that `benchmark --table` replays."""
    from hpo_astro import tabular
    from hpo_astro.io import check_output

    json_path = json_out or Path(f"{tabular.check_name(out)}.json")
    check_output(json_path)  # before hours of training, not after
    cfg = tabular.tabulate_config(
        space, out, storage, max_configs, data=data, max_epochs=max_epochs, seed=seed, workers=workers
    )
    result = _execute(cfg, threads, train=tabular.tabulate_train)
    try:
        table = tabular.table_from_study(result.study, cfg.storage)
    except UserError as exc:  # configurations whose training failed: not the input's fault
        _fail(str(exc), code=1)
    table.save(json_path)
    epochs = sum(len(row.history) for row in table.rows)
    console.print(
        f"table {out!r}: {len(table.rows)} configurations, {epochs} epochs, "
        f"{table.info['training_seconds']:.0f} s of training; wrote {json_path}",
        highlight=False,
    )


@app.command("benchmark")
def benchmark_command(
    strategies: Annotated[
        str,
        typer.Option(
            "--strategies",
            "-s",
            help="Comma-separated strategies to compare: registry names (random, ablation, genetic, bayesian, tpe, "
            "...) or sampler classes as package.module:ClassName.",
        ),
    ],
    n_trials: Annotated[int, typer.Option("--n-trials", "-n", min=1, help="Budget of every study: finished trials.")],
    out: Annotated[
        Path,
        typer.Option(
            "--out", help="Directory for index.html, benchmark.json and the CSV files (and the default store)."
        ),
    ],
    repeats: Annotated[
        int, typer.Option("--repeats", "-r", min=1, help="Studies per strategy; repeat r uses seed + r.")
    ] = 10,
    table: Annotated[
        str | None,
        typer.Option(
            "--table",
            help="Answer every trial from this table instead of training: a table file, a tabulate study table/NAME "
            "in --storage (default optuna.db), or a shipped table.",
        ),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Study file: its space, baseline and settings apply to every study."),
    ] = None,
    data: DataOpt = None,
    channels: ChannelsOpt = None,
    max_epochs: Annotated[int | None, typer.Option("--max-epochs", min=1, help="Cap epochs per trial.")] = None,
    pruner: Annotated[
        str | None, typer.Option("--pruner", help="none, median, hyperband or successive-halving.")
    ] = None,
    objective: Annotated[
        str | None, typer.Option("--objective", help="accuracy, loss or roc_auc (validation).")
    ] = None,
    seed: Annotated[
        int, typer.Option("--seed", min=0, max=2**32 - 1, help="Base seed: repeat r of every strategy uses seed + r.")
    ] = 0,
    workers: Annotated[
        int, typer.Option("--workers", "-w", min=1, help="Studies run side by side, one process each.")
    ] = 1,
    storage: Annotated[
        str | None,
        typer.Option("--storage", help="Optuna storage URL for the studies (default: a journal file in --out)."),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option("--name", help="Benchmark name in the study names bench/NAME/... (default: --out's name)."),
    ] = None,
    budget: Annotated[
        int | None,
        typer.Option("--budget", min=1, help="Trials at which the pairwise table compares (default: --n-trials)."),
    ] = None,
    top_k: Annotated[
        int,
        typer.Option(
            "--top-k", min=0, help="Top configurations per strategy re-trained with as many fresh seeds (0: none)."
        ),
    ] = 3,
) -> None:
    """Compare strategies over repeated, paired studies: anytime curves, final test quality with confidence
    intervals, pairwise significance and the selection-bias check, as HTML, JSON and CSV. Resumable; a finished
    benchmark only re-renders."""
    from hpo_astro.benchmark import BenchmarkSpec, run_benchmark
    from hpo_astro.data.prepare import parse_channels
    from hpo_astro.study.config import load_config
    from hpo_astro.study.run import StudyFailed

    spec = BenchmarkSpec(
        strategies=tuple(s.strip() for s in strategies.split(",") if s.strip()),
        repeats=repeats,
        n_trials=n_trials,
        out=out,
        name=name,
        storage=storage,
        table=table,
        base=load_config(config) if config else None,
        data=data,
        channels=parse_channels(channels) if channels is not None else None,
        max_epochs=max_epochs,
        pruner=pruner,
        objective=objective,
        seed=seed,
        workers=workers,
        budget=budget,
        top_k=top_k,
    )
    display = _BenchmarkDisplay(len(spec.strategies) * repeats)
    try:
        with display:
            result = run_benchmark(spec, events=_note, on_outcome=display.outcome)
    except KeyboardInterrupt:
        import shlex
        import sys

        resume = " ".join(shlex.quote(a) for a in [_program(), *sys.argv[1:]])
        err_console.print(f"interrupted; finished studies are kept, resume with: {resume}", markup=False)
        raise typer.Exit(130) from None
    except StudyFailed as exc:
        _fail(str(exc), code=1)
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


def main() -> None:
    app()


if __name__ == "__main__":
    main()
