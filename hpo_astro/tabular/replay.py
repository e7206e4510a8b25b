"""Replay: a study's trials answered from a table instead of training (`TableReplay`, what `TableReplay(table)`
returns), through the trainer's callbacks, so pruners, early stopping and checkpoints act as in a real run."""

from __future__ import annotations

import math
import zlib
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch

from hpo_astro.core.epochs import Callback, EpochLoop
from hpo_astro.core.hyperparameters import value_key
from hpo_astro.core.metrics import Metrics
from hpo_astro.core.train import TrainResult
from hpo_astro.data.prepare import DataSplits
from hpo_astro.store.record import REPLAYED, TABLE_ATTR, TEST_METRICS_ATTR
from hpo_astro.tabular.row import REQUIRED_METRICS, TableRow
from hpo_astro.tabular.table import Table


class TableReplay:
    """`TableReplay(table)`: `hpo_astro.core.train.train`'s contract, answered from the table.

    * The curve is the row's, replayed through the same `TrainState` and callbacks as the trainer: a pruner sees
      every epoch's metric and may stop it, a checkpoint callback saves the replay's state, and `resume` (such a
      checkpoint) continues after its last epoch. Early stopping is the row's: the curve ends where the tabulated
      run ended, with its stop reason (early stopping cannot be switched off: the epochs after it were never run).
    * `max_epochs` truncates the curve as training with that cap would have (the cosine schedule depends on t_max,
      not on the cap, so the first epochs of a longer run are those of a shorter one). A table cannot replay more
      epochs than it recorded: a replay that reaches the end of the row ends there, with the row's stop reason.
    * The best epoch is the best validation loss among the replayed epochs; its validation metrics are the row's
      when it is the row's best epoch, else the epoch's recorded loss, accuracy and ROC AUC (precision, recall, F1
      and FPR at 5% FNR were only measured at the row's best epoch: NaN).
    * wall_time is the sum of the recorded seconds of the epochs in the returned history (a resumed replay counts
      the epochs it inherited too): what training would have cost.
    * extra_attrs: `table` (the table's name) and, when the replay's restored weights are the very ones the table
      tested (its best epoch is the row's best epoch, always so when the whole curve was replayed), the row's
      `test_metrics`. A replay pruned or truncated before the row's best epoch reports no test metrics: its model
      was never tested.
    * `seed` chooses the run of a table of several seeds (`Table.seeds`): run `(c + seed) mod seeds`, where c is a
      hash of the configuration. So a study (or a benchmark repeat) with seed s draws one of the configuration's
      runs, deterministically, and a different one for each configuration; repeated evaluations of a configuration
      (`--eval-seeds`, `hpo-astro confirm`: seeds s, s + 1, ...) meet its other runs, as retraining it would, until
      they have met all `seeds` of them. A one-seed table always answers with its one run. The result reports the
      run's own training seed.
    * `data` is not used; there is no model (`model` is None: no weights to keep), and n_params is the real model's
      count.
    """

    trial_kind: ClassVar[str] = REPLAYED  # what the study records (`hpo_astro.store.record.TRIAL_KINDS`)
    # A replayed trial takes a millisecond and is replayed again whole if interrupted: a checkpoint would cost more
    # than it saves (the objective writes none for a trainer that says so).
    writes_checkpoints: ClassVar[bool] = False

    def __init__(self, table: Table) -> None:
        self.table = table
        self._n_params: dict[int, int] = {}

    def __call__(
        self,
        params: Mapping[str, Any],
        data: DataSplits | None = None,
        callbacks: Iterable[Callback] = (),
        max_epochs: int | None = None,
        seed: int = 0,
        resume: Mapping[str, Any] | None = None,
        **_: Any,  # the trainer's other options (device, capture, ...) mean nothing to a replay
    ) -> TrainResult:
        runs = self.table.runs(params)
        row = runs[run_index(runs[0].params, seed, len(runs))]
        history = row.history
        limit = len(history) if max_epochs is None else max(1, min(len(history), int(max_epochs)))
        state = EpochLoop(params, limit)
        if resume is not None:
            state.restore(resume)  # a checkpoint of an earlier version also holds a stand-in model's state: not read
        callbacks = list(callbacks)
        while state.running:
            epoch = history[state.epoch]
            number = state.epoch + 1
            state.end_epoch(
                epoch,
                lambda number=number: _epoch_val_metrics(row, number).as_dict(),
                callbacks,
                # The trainer's rule (strictly lower: the first best wins), except that a tie goes to the row's best
                # epoch: curves kept in a study are rounded, and the trainer chose that epoch at full precision.
                prefer=number == row.best_epoch,
                # The run ended here by early stopping (or divergence), which the trainer decides before the other
                # callbacks; replayed as recorded rather than recomputed from the (rounded) curve.
                stop=row.stop_reason if number == len(history) and row.stop_reason != "max_epochs" else None,
            )
        best_epoch, stop_reason = state.finish()
        reached_end = state.epoch >= len(history)
        best_is_rows = best_epoch == row.best_epoch and math.isfinite(history[row.best_epoch - 1].val_loss)
        extra: dict[str, Any] = {TABLE_ATTR: self.table.name}
        if reached_end or best_is_rows:
            extra[TEST_METRICS_ATTR] = dict(row.test_metrics)
        return TrainResult(
            params=dict(params),
            history=state.history,
            best_epoch=best_epoch,
            stop_reason=stop_reason,
            n_params=self._count(row),
            wall_time=sum(h.seconds for h in state.history),
            device="cpu",
            seed=self.table.seed if row.seed is None else row.seed,
            train_metrics=None,
            val_metrics=_epoch_val_metrics(row, best_epoch),
            model=None,  # nothing was trained: no weights to keep
            extra_attrs=extra,
        )

    def _count(self, row: TableRow) -> int:
        """The real model's parameter count, computed from the configuration (nothing is built)."""
        from hpo_astro.core.model import parameter_count

        if id(row) not in self._n_params:
            self._n_params[id(row)] = parameter_count(row.params, len(self.table.info.get("channels") or [None]))
        return self._n_params[id(row)]


def run_index(params: Mapping[str, Any], seed: int, runs: int) -> int:
    """Which of a configuration's `runs` a replay with `seed` answers with (see `TableReplay`): a stable hash of the
    configuration (CRC32 of its sorted name=value pairs, the same in every process) plus the seed, modulo `runs`."""
    if runs == 1:
        return 0
    text = ";".join(f"{name}={value_key(params[name])}" for name in sorted(params))
    return (zlib.crc32(text.encode()) + seed) % runs


def _epoch_val_metrics(row: TableRow, epoch: int) -> Metrics:
    """The validation metrics of a replayed run whose best epoch is `epoch` (see `TableReplay`)."""
    if epoch == row.best_epoch:
        return Metrics(**{**dict.fromkeys(REQUIRED_METRICS, math.nan), **row.val_metrics})
    h = row.history[epoch - 1]
    nan = math.nan
    return Metrics(
        loss=h.val_loss,
        accuracy=h.val_accuracy,
        roc_auc=h.val_roc_auc,
        precision=nan,
        recall=nan,
        f1=nan,
        fpr_at_5fnr=nan,
    )


def table_data(table: Table) -> DataSplits:
    """The splits a table-answered study records: no tensors (the table answers, nothing is read), the fingerprint,
    channels and source file of the data the table was trained on, so the study's record names that data and
    `compare` can rebuild its best model from that file."""
    from hpo_astro.data.prepare import DEFAULT_CHANNELS

    empty = torch.zeros(0)
    return DataSplits(
        *(empty,) * 6,
        channels=tuple(table.info.get("channels") or DEFAULT_CHANNELS),
        fingerprint=table.data_fingerprint,
        source=str(table.info.get("data_source") or f"table {table.name}"),
    )
