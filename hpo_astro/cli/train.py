"""The `train` command: one configuration trained and evaluated, its weights and configuration saved."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from hpo_astro.cli.application import app
from hpo_astro.cli.options import ChannelsOpt, DataOpt, ThreadsOpt, TrainEpochsOpt, TrainSeedOpt
from hpo_astro.cli.output import console

if TYPE_CHECKING:  # heavy imports stay lazy so that `--help` and input errors answer at once
    from hpo_astro.core.train import TrainState


@app.command("train")
def train_command(
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param", "-p", metavar="NAME=VALUE", help="Repeatable; unset ones take the documented defaults."
        ),
    ] = None,
    data: DataOpt = None,
    channels: ChannelsOpt = None,
    max_epochs: TrainEpochsOpt = None,
    seed: TrainSeedOpt = 0,
    out: Annotated[
        Path | None,
        typer.Option("--out", metavar="DIR", help="Directory for weights and config (default: runs/train-TIME)."),
    ] = None,
    device: Annotated[str, typer.Option("--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N.")] = "auto",
    threads: ThreadsOpt = None,
) -> None:
    """Train one configuration, print per-epoch and validation metrics, save weights and configuration."""
    from hpo_astro.core.space import SearchSpace, parse_assignments

    space = SearchSpace.paper()
    params = space.complete(parse_assignments(param, space))  # bad input answers before torch is imported (seconds)

    import torch

    from hpo_astro.core.model import model_manifest, save_model
    from hpo_astro.core.train import resolve_device, train
    from hpo_astro.data.prepare import PrepConfig, load_splits, parse_channels

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
