"""The rules of a run's epochs, once, for every way of producing epochs: the trainer (`hpo_astro.core.train`) and the
table replay (`hpo_astro.tabular.replay`) both drive an `EpochLoop`.

* An epoch's metrics are appended to the history (`EpochMetrics`); the best epoch is the one with the lowest finite
  validation loss (strictly lower: the first best wins).
* Callbacks (`Callback`) see the state after each epoch and may ask to stop (`request_stop`, the first reason wins):
  early stopping on validation loss (`EarlyStopping`), Optuna's pruning, checkpoints.
* A run that never had a finite validation loss keeps its last epoch as its best; a run nobody stopped ended by
  reaching its epoch cap ("max_epochs").
* The loop's bookkeeping (history, best epoch and loss, stop reason) is part of a checkpoint; what a trainer adds
  (weights, optimiser, random states) is the trainer's (`TrainState`).
No torch in here: a replayed run has no model to train.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

CHECKPOINT_FORMAT = 1
MAX_EPOCHS_REASON = "max_epochs"
EARLY_STOPPING_REASON = "early_stopping"
DIVERGED_REASON = "diverged"


@dataclass(frozen=True)
class EpochMetrics:
    """One epoch of a run. `as_dict` is `dataclasses.asdict` without its deep copy (the fields are flat numbers)."""

    epoch: int  # 1-based
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    val_roc_auc: float
    lr: float  # learning rate used during this epoch
    seconds: float
    # The operating points (`hpo_astro.core.metrics`): measured by the trainer; NaN where nothing measured them (a
    # table's replay: tables record the fields above), and then left out of `as_dict`. Not compared: an epoch is
    # what a table records of it (NaN is not equal to itself, so a copied unmeasured epoch would not equal it).
    val_fpr_at_5fnr: float = field(default=math.nan, compare=False)
    val_mdr_at_1fpr: float = field(default=math.nan, compare=False)
    # ... and at the study's stated rates (`hpo_astro.core.metrics.stated_rates`), where it states one
    val_fpr_at_fnr: float = field(default=math.nan, compare=False)
    val_mdr_at_fpr: float = field(default=math.nan, compare=False)

    @classmethod
    def of(cls, epoch: int, train_loss: float, train_accuracy: float, val: Any, lr: float, seconds: float) -> Any:
        """An epoch whose validation metrics are `val` (a `hpo_astro.core.metrics.Metrics`)."""
        return cls(
            epoch, train_loss, train_accuracy, val.loss, val.accuracy, val.roc_auc, lr, seconds, val.fpr_at_5fnr,
            val.mdr_at_1fpr, val.fpr_at_fnr, val.mdr_at_fpr,
        )  # fmt: skip

    def as_dict(self) -> dict[str, float]:
        out = dict(vars(self))
        for name in OPERATING_POINT_FIELDS:
            if math.isnan(out[name]):
                del out[name]
        return out


OPERATING_POINT_FIELDS = ("val_fpr_at_5fnr", "val_mdr_at_1fpr", "val_fpr_at_fnr", "val_mdr_at_fpr")


@dataclass
class EpochLoop:
    """Where a run stands after its last finished epoch: what a callback sees, and what it may stop."""

    params: Mapping[str, Any]
    max_epochs: int
    history: list[EpochMetrics] = field(default_factory=list)
    best_epoch: int = 0  # 0 = no finite validation loss yet
    best_val_loss: float = math.inf
    best_val_metrics: dict[str, float] | None = None  # the full validation metrics of the best epoch
    stop_reason: str | None = None
    val_history: list[dict[str, float]] | None = None  # each epoch's full validation metrics, when set to a list

    @property
    def epoch(self) -> int:
        return len(self.history)

    @property
    def last(self) -> EpochMetrics:
        return self.history[-1]

    @property
    def epochs_since_best(self) -> int:
        return self.epoch - self.best_epoch

    @property
    def running(self) -> bool:
        """Another epoch is due: the cap is not reached and nobody asked to stop."""
        return self.epoch < self.max_epochs and self.stop_reason is None

    def request_stop(self, reason: str) -> None:
        if self.stop_reason is None:
            self.stop_reason = reason

    def end_epoch(
        self,
        metrics: EpochMetrics,
        val_metrics: Callable[[], dict[str, float]],
        callbacks: Iterable[Callback],
        prefer: bool = False,
        stop: str | None = None,
    ) -> None:
        """Record a finished epoch, then run the callbacks on it.

        `val_metrics` gives the epoch's full validation metrics, asked for only when the epoch is the new best (which
        `keep_best` then keeps). `prefer`: this epoch wins a tie with the best so far (a replay's recorded best
        epoch, chosen at full precision). `stop`: a reason the run ends at this epoch, decided before the callbacks
        (a replay's recorded end)."""
        self.history.append(metrics)
        if self.val_history is not None:  # kept for every epoch (stacked runs replay them in run order)
            values = val_metrics()
            self.val_history.append(values)
            val_metrics = lambda: values  # noqa: E731
        val_loss = metrics.val_loss if math.isfinite(metrics.val_loss) else math.inf
        if val_loss < self.best_val_loss or (prefer and val_loss == self.best_val_loss):
            self.best_val_loss, self.best_epoch = val_loss, self.epoch
            self.best_val_metrics = val_metrics()
            self.keep_best()
        if not math.isfinite(metrics.train_loss):
            self.request_stop(DIVERGED_REASON)
        if stop is not None:
            self.request_stop(stop)
        for callback in callbacks:
            callback.on_epoch_end(self)

    def keep_best(self) -> None:
        """Called when an epoch becomes the best, before the callbacks see it: a trainer keeps its weights here."""

    def finish(self) -> tuple[int, str]:
        """The run's best epoch and stop reason once no epoch is due: a run without a finite validation loss keeps
        its last epoch; a run nobody stopped reached its cap."""
        if self.best_epoch == 0:
            self.best_epoch = self.epoch
        return self.best_epoch, self.stop_reason or MAX_EPOCHS_REASON

    def bookkeeping(self) -> dict[str, Any]:
        """The loop's part of a checkpoint (plain data)."""
        return {
            "format": CHECKPOINT_FORMAT,
            "params": dict(self.params),
            "max_epochs": self.max_epochs,
            "history": [h.as_dict() for h in self.history],
            "best_epoch": self.best_epoch,
            "best_val_loss": self.best_val_loss,
            "best_val_metrics": self.best_val_metrics,
            "stop_reason": self.stop_reason,
        }

    def restore_bookkeeping(self, checkpoint: Mapping[str, Any]) -> None:
        """Continue after a checkpoint's last epoch (made for the same parameters)."""
        if checkpoint.get("format") != CHECKPOINT_FORMAT:
            raise ValueError("not a checkpoint of this trainer version")
        if dict(checkpoint["params"]) != dict(self.params):
            raise ValueError("the checkpoint was made for other hyperparameters")
        self.history = [EpochMetrics(**h) for h in checkpoint["history"]]
        self.best_epoch = int(checkpoint["best_epoch"])
        self.best_val_loss = float(checkpoint["best_val_loss"])
        self.best_val_metrics = checkpoint.get("best_val_metrics")  # absent from older checkpoints: recomputed
        self.stop_reason = checkpoint["stop_reason"]

    def checkpoint(self) -> dict[str, Any]:
        """Everything needed to continue this run after its last finished epoch (a trainer adds its own state)."""
        return self.bookkeeping()

    def restore(self, checkpoint: Mapping[str, Any]) -> None:
        self.restore_bookkeeping(checkpoint)


class Callback(Protocol):
    def on_epoch_end(self, state: EpochLoop) -> None:
        """Called after each epoch's metrics are in `state.history`; call `state.request_stop` to stop."""


class EarlyStopping:
    """Stop when validation loss has not improved for `patience` epochs."""

    def __init__(self, patience: int) -> None:
        if patience < 1:
            raise ValueError("patience must be >= 1")
        self.patience = patience

    def on_epoch_end(self, state: EpochLoop) -> None:
        if state.epochs_since_best >= self.patience:
            state.request_stop(EARLY_STOPPING_REASON)
