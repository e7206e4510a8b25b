"""A toy problem for population-based training (tests/study/test_pbt.py): the "model" is one number w, which grows by
the optimiser's current learning rate every epoch; its validation accuracy is w. A member with a larger learning rate
is better at every epoch, so a bad member that copies a good member's checkpoint (w) and a neighbour of its learning
rate ends strictly better than it would alone. The learning rate is read from the optimiser, so a continued
checkpoint must carry the new one (`hpo_astro.study.pbt_plan.continue_with`). The trainer can kill its own process
(SIGKILL) the first time it finishes a given epoch: `PBT_TOY_KILL="3,6"` and a folder `PBT_TOY_MARKS` remembering
the kills done; `PBT_TOY_SLEEP` seconds per epoch make workers overlap. `diverge=(lr, epoch)` (bind it with
functools.partial) makes the weights NaN at that epoch for a member training with that learning rate."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from hpo_astro.core.epochs import Callback, EpochMetrics
from hpo_astro.core.metrics import Metrics
from hpo_astro.core.train import TrainResult, TrainState

TOY_SPACE = {
    "lr": [0.1, 0.2, 0.3, 0.4],
    "conv_layers": [1],
    "fc_width": [32],
    "weight_decay": [0.0],
    "dropout_rate": [0.0],
    "t_max": [100],
}


def _metrics(w: float) -> Metrics:
    return Metrics(loss=100.0 - w, accuracy=w, roc_auc=w, precision=1.0, recall=1.0, f1=1.0, fpr_at_5fnr=0.0)


def _maybe_kill(epoch: int) -> None:
    kills, marks = os.environ.get("PBT_TOY_KILL"), os.environ.get("PBT_TOY_MARKS")
    if not kills or not marks or str(epoch) not in kills.split(","):
        return
    mark = Path(marks) / f"killed-at-{epoch}"
    if mark.exists():
        return
    mark.write_text("")
    os.kill(os.getpid(), signal.SIGKILL)


def toy_train(
    params: Mapping[str, Any],
    data: object,
    callbacks: Iterable[Callback] = (),
    max_epochs: int | None = None,
    seed: int = 0,
    resume: Mapping[str, Any] | None = None,
    diverge: tuple[float, int] | None = None,
    **_: object,
) -> TrainResult:
    """`hpo_astro.core.train.train`'s contract on the toy problem (module level: worker processes pickle it)."""
    epochs = min(int(params["t_max"]), max_epochs or 10**6)
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    optimizer = torch.optim.SGD(model.parameters(), lr=float(params["lr"]))
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(params["t_max"]))  # never stepped
    state = TrainState(
        params=params,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        shuffle_generator=torch.Generator().manual_seed(seed),
        max_epochs=epochs,
    )
    if resume is not None:
        state.restore(resume)
    callbacks = list(callbacks)
    while state.running:
        lr = float(optimizer.param_groups[0]["lr"])
        with torch.no_grad():
            model.weight += lr
            if diverge is not None and abs(lr - diverge[0]) < 1e-9 and state.epoch + 1 == diverge[1]:
                model.weight.fill_(float("nan"))
        w = float(model.weight.item())
        metrics = _metrics(w)
        state.end_epoch(EpochMetrics.of(state.epoch + 1, 100.0 - w, w, metrics, lr, 0.0), metrics.as_dict, callbacks)
        _maybe_kill(state.epoch)
        time.sleep(float(os.environ.get("PBT_TOY_SLEEP", "0")))  # seconds per epoch: workers that overlap
    best_epoch, stop_reason = state.finish()
    if state.best_weights is not None:
        model.load_state_dict(state.best_weights)
    return TrainResult(
        params=dict(params),
        history=state.history,
        best_epoch=best_epoch,
        stop_reason=stop_reason,
        n_params=1,
        wall_time=0.0,
        device="cpu",
        seed=seed,
        train_metrics=None,
        val_metrics=Metrics(**state.best_val_metrics) if state.best_val_metrics else _metrics(0.0),
        model=model,
    )
