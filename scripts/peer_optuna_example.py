"""The script a user would write instead of hpo-astro, in the shape of optuna-examples' `pytorch/pytorch_simple.py`:
one objective that builds the model for the trial's parameters, trains it epoch by epoch, reports the validation
accuracy each epoch and prunes; `study.optimize` over a grid. It is the peer that `scripts/bench.py --peer` times
against `hpo-astro run` on the same grid, data and CNN.

Same work as hpo-astro's trainer: the same model (`hpo_astro.core.model.build_model`), the same prepared splits
(`hpo_astro.data.prepare.load_splits`: a user would write a loader of their own; loading is not what is compared),
AdamW with the trial's learning rate and weight decay, BCE with the positive-class weight, the cosine schedule, the
epoch cap. No early stopping and no checkpoints, as in optuna-examples.

Two forms, both measured by bench.py: `--plain` is what optuna-examples does (a `DataLoader` over a
`TensorDataset`, the default memory layout); the default is the best version of the same loop on this hardware
(batches indexed from tensors held whole, channels_last and validation in chunks of 128 on CPU, as hpo-astro's
trainer does), so a ratio against it credits hpo-astro with nothing a user could not have written.

    python scripts/peer_optuna_example.py --grid grid.toml --storage sqlite:///peer.db [--data FILE] [--plain]
"""

from __future__ import annotations

import argparse
import itertools
import time
import tomllib
from pathlib import Path
from typing import Any

import optuna
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from hpo_astro.core.hyperparameters import DEFAULT_PARAMS
from hpo_astro.core.model import build_model
from hpo_astro.data.prepare import load_splits


def objective_for(data: Any, space: dict[str, list[Any]], max_epochs: int, plain: bool) -> Any:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    channels_last = not plain and device.type == "cpu"
    # Validation in chunks: 1024 as a user would write it; at its best the chunk hpo-astro measured fastest on CPU
    chunk = 1024 if plain or device.type == "cuda" else 128
    layout = torch.channels_last if channels_last else torch.contiguous_format
    x, y = data.x_train.to(device).contiguous(memory_format=layout), data.y_train.to(device)
    xv, yv = data.x_val.to(device).contiguous(memory_format=layout), data.y_val.to(device)

    def objective(trial: optuna.Trial) -> float:
        params = {**DEFAULT_PARAMS, **{name: trial.suggest_categorical(name, values) for name, values in space.items()}}
        torch.manual_seed(trial.number)
        model = build_model(params, in_channels=x.shape[1]).to(device, memory_format=layout)
        optimizer = torch.optim.AdamW(model.parameters(), lr=params["lr"], weight_decay=params["weight_decay"])
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(params["t_max"]))
        criterion = nn.BCEWithLogitsLoss(pos_weight=torch.tensor(data.pos_weight, device=device))
        batch = int(params["batch_size"])
        loader = DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=True, drop_last=len(y) % batch == 1)
        accuracy = 0.0
        for epoch in range(min(max_epochs, int(params["t_max"]))):
            model.train()
            if plain:
                steps = iter(loader)
            else:
                steps = ((x[i], y[i]) for i in torch.randperm(len(y), device=device).split(batch) if len(i) > 1)
            for xb, yb in steps:
                optimizer.zero_grad()
                criterion(model(xb).squeeze(1), yb).backward()
                optimizer.step()
            scheduler.step()
            model.eval()
            with torch.no_grad():
                logits = torch.cat([model(xv[i : i + chunk]).squeeze(1) for i in range(0, len(yv), chunk)])
            accuracy = ((logits > 0) == (yv > 0.5)).float().mean().item()
            trial.report(accuracy, epoch)
            if trial.should_prune():
                raise optuna.TrialPruned()
        return accuracy

    return objective


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--grid", type=Path, required=True, help="a study file: its [space] and max_epochs")
    parser.add_argument("--storage", default="sqlite:///peer.db")
    parser.add_argument("--data", default=None)
    parser.add_argument("--plain", action="store_true", help="optuna-examples' own loop: DataLoader, default layout")
    args = parser.parse_args()
    start = time.perf_counter()
    settings = tomllib.loads(args.grid.read_text())
    space = settings["space"]
    data = load_splits(args.data)
    study = optuna.create_study(
        direction="maximize", storage=args.storage, sampler=optuna.samplers.GridSampler(space, seed=0)
    )
    n_trials = len(list(itertools.product(*space.values())))
    study.optimize(objective_for(data, space, int(settings.get("max_epochs", 3)), args.plain), n_trials=n_trials)
    print(f"best accuracy {study.best_value:.4f} in {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
