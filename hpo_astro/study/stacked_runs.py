"""A trial's seeds trained as one stacked model (`hpo_astro.core.stacked`), seen by Optuna exactly as the same runs
trained one after another.

The runs train in lockstep, but a trial of several runs reports them as one series, run after run
(`hpo_astro.study.evaluation`). `RunOrderReports` keeps that order: the first unfinished run's epochs are reported as
they end; a later run's epochs wait until the runs before it have ended, and are then reported (and offered to the
pruner) one by one, as a sequential trial would have. Each run's epochs are replayed through the same epoch rules
(`EpochLoop`) with the stop its lone run decided, so a run that stopped early at an epoch is not pruned there, as in a
sequential trial. When the pruner stops run c at epoch e, every run stops, run c's result is its state at epoch e and
the runs after it are dropped: the trial records what the sequential trial would have recorded.

A stacked trial writes no checkpoint while it trains (the stack's state is one object for all its runs): a trial
interrupted mid-way trains its runs again from the start, and ends as it would have (the same seeds, the same
arithmetic).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from hpo_astro.core.epochs import EpochLoop
from hpo_astro.core.metrics import Metrics
from hpo_astro.core.stacked import train_stacked
from hpo_astro.core.train import TrainResult
from hpo_astro.data.prepare import DataSplits
from hpo_astro.study.evaluation import EvalPlan

PRUNED = "pruned"


class RunOrderReports:
    """Callbacks for a stacked trial's runs (`watcher(r)`) that report to Optuna in run order and prune as a
    sequential trial would. `make_pruning(r)` gives the pruning callback of run r (an `OptunaPruning`)."""

    def __init__(self, params: Mapping[str, Any], max_epochs: int, n_runs: int, make_pruning: Callable[[int], Any]):
        self.params, self.max_epochs, self.n_runs, self.make_pruning = params, max_epochs, n_runs, make_pruning
        self.loops: dict[int, EpochLoop] = {}  # the lockstep runs, as their callbacks saw them
        self.views: list[EpochLoop] = []  # the runs as a sequential trial saw them, up to the cursor
        self.val_history: dict[int, list[dict[str, float]]] = {r: [] for r in range(n_runs)}
        self.pruned_at: tuple[int, int] | None = None  # (run, epoch) where the pruner stopped the trial

    def watcher(self, run: int) -> _Watcher:
        return _Watcher(self, run)

    def _seen(self, run: int, loop: EpochLoop) -> None:
        self.loops[run] = loop
        self.val_history[run].append(dict(loop.val_history[-1]))  # type: ignore[attr-defined]  # a stacked run's
        if self.pruned_at is None:
            self._advance()
        if self.pruned_at is not None:  # the trial ends: every run stops
            for other in self.loops.values():
                if other.running:  # a run that reached its cap has no stop reason: it keeps none
                    other.request_stop(PRUNED)

    def _advance(self) -> None:
        """Replay, in run order, every epoch that can be reported now."""
        while self.pruned_at is None:
            if not self.views or not self.views[-1].running:  # the current run has ended: the next one begins
                if len(self.views) == self.n_runs:
                    return
                self.views.append(EpochLoop(params=self.params, max_epochs=self.max_epochs))
                self.pruning = self.make_pruning(len(self.views) - 1)
                continue
            run, view = len(self.views) - 1, self.views[-1]
            loop = self.loops.get(run)
            if loop is None or view.epoch >= loop.epoch:
                return  # this run has not ended another epoch yet
            epoch = view.epoch
            last = epoch + 1 == loop.epoch and not loop.running
            view.end_epoch(
                loop.history[epoch],
                lambda values=self.val_history[run][epoch]: values,
                [self.pruning],
                stop=loop.stop_reason if last else None,
            )
            if view.stop_reason == PRUNED:
                self.pruned_at = (run, view.epoch)

    def result(self, run: int, lockstep: TrainResult) -> TrainResult:
        """Run `run` as the sequential trial ended it: the lockstep result, or, for the run the pruner stopped, its
        state at that epoch (no model: a pruned trial keeps none)."""
        if self.pruned_at is None or run < self.pruned_at[0]:
            return lockstep
        view = self.views[run]
        had_best = view.best_epoch > 0
        best_epoch, stop_reason = view.finish()
        values = view.best_val_metrics if had_best else self.val_history[run][view.epoch - 1]
        return TrainResult(
            params=lockstep.params,
            history=view.history,
            best_epoch=best_epoch,
            stop_reason=stop_reason,
            n_params=lockstep.n_params,
            wall_time=lockstep.wall_time,
            device=lockstep.device,
            seed=lockstep.seed,
            train_metrics=None,
            val_metrics=Metrics(**values),
            model=None,
        )

    def ended_runs(self) -> int:
        """How many runs the sequential trial ran: all, or up to the one the pruner stopped."""
        return self.n_runs if self.pruned_at is None else self.pruned_at[0] + 1


class _Watcher:
    """One lockstep run's callback: hands each of its epochs to the reports."""

    def __init__(self, reports: RunOrderReports, run: int) -> None:
        self.reports, self.run = reports, run

    def on_epoch_end(self, state: EpochLoop) -> None:
        self.reports._seen(self.run, state)


def train_runs_stacked(
    params: Mapping[str, Any],
    data: DataSplits,
    plan: EvalPlan,
    make_pruning: Callable[[int], Any],
    max_epochs: int | None,
    device: str,
) -> list[TrainResult]:
    """Train every run of `plan` (one fold, several seeds) stacked; the results of the runs a sequential trial would
    have ended (all, or up to the one the pruner stopped), each as that trial would have recorded it."""
    runs = plan.runs()
    t_max = int(params["t_max"])
    epochs = t_max if max_epochs is None else max(1, min(t_max, int(max_epochs)))
    reports = RunOrderReports(params, epochs, len(runs), make_pruning)
    results = train_stacked(
        params,
        data,
        [run.seed for run in runs],
        callbacks=[[reports.watcher(run.index)] for run in runs],
        max_epochs=max_epochs,
        device=device,
    )
    return [reports.result(r, results[r]) for r in range(reports.ended_runs())]
