"""Helpers shared by the tests (fixtures live in conftest.py): the CLI runner with its one-line-error check, small
data files written as a user would, a small study store with real trials, study configurations for the run tests and
a fast stand-in for the trainer."""

from __future__ import annotations

import dataclasses
import functools
import re
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.trial import TrialState
from typer.testing import CliRunner, Result

from hpo_astro.cli import main
from hpo_astro.core.metrics import Metrics
from hpo_astro.core.space import SearchSpace
from hpo_astro.core.train import Callback, EpochMetrics, TrainFn, TrainResult, TrainState
from hpo_astro.data.prepare import DataSplits
from hpo_astro.study import run as run_module
from hpo_astro.study.config import StudyConfig
from hpo_astro.study.run import run_study


def write_npy_object(path: Path, obj: object) -> Path:
    np.save(path, np.asarray(obj, dtype=object), allow_pickle=True)
    return path


# --- the machine's speed: every time limit in the tests scales with it -------------------------------------------

REFERENCE_SECONDS = 0.31  # the workload below on the developers' idle 2-core machine (median of 3)


@functools.cache
def slowness() -> float:
    """How much slower this machine (with whatever runs beside the tests) trains than the developers' idle one: the
    best of three timings of a fixed 3-epoch training, divided by its reference time, at least 1. Time limits in the
    tests are `patience(seconds)`, so a slow or loaded machine waits longer instead of failing."""
    import torch

    from hpo_astro.core.hyperparameters import DEFAULT_PARAMS
    from hpo_astro.core.train import train

    params = {**DEFAULT_PARAMS, "conv_layers": 2, "fc_layers": 2, "fc_width": 32, "batch_size": 16, "t_max": 10}
    data = noise_splits(64)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        timings = []
        for _ in range(3):
            start = time.perf_counter()
            train(params, data, max_epochs=3, seed=0, device="cpu", early_stopping=False)
            timings.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return max(1.0, min(timings) / REFERENCE_SECONDS)


def patience(seconds: float) -> float:
    """A time limit of `seconds` on the developers' machine, scaled to this one's measured speed (see `slowness`).
    Limits are hang guards, never the thing tested: a test that waits bounds itself by progress."""
    return seconds * slowness()


# --- the CLI ----------------------------------------------------------------------------------------------------

runner = CliRunner()


# The trainer `invoke` hands to the app (Click's context object, see `hpo_astro.cli.output.injected_trainer`): None
# trains for real; the `fake_training` fixture sets `fake_train` for one test.
TRAINER: Any = None


def invoke(*args: object, train: Any = None) -> Result:
    """Run `hpo-astro ARGS...` in-process, through the console script's `main` (its error boundary included), with
    standard input, output and error captured; every argument is passed as a string. `train` (else `TRAINER`)
    replaces the trainer of the trials the command runs. An exception `main` lets through is the result's
    `exception` (exit code 1), as with Click's test runner."""
    trainer = train or TRAINER
    exception: BaseException | None = None
    exc_info = None
    with runner.isolation() as (stdout, stderr, output):
        try:
            exit_code = main([str(a) for a in args], prog_name="hpo-astro", obj={"train": trainer} if trainer else None)
        except Exception as exc:
            exception, exc_info, exit_code = exc, sys.exc_info(), 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        captured = stdout.getvalue(), stderr.getvalue(), output.getvalue()
    if exit_code and exception is None:
        exception = SystemExit(exit_code)
    return Result(runner, *captured, return_value=None, exit_code=exit_code, exception=exception, exc_info=exc_info)


def assert_refused(result: Result, message: str | re.Pattern[str]) -> None:
    """Bad input: exit code 2, exactly one `error: ...` line on stderr containing `message` (or matching it, for a
    compiled pattern), and no traceback."""
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    if isinstance(message, re.Pattern):
        assert message.search(lines[0]), result.stderr
    else:
        assert message in lines[0], result.stderr
    assert "Traceback" not in result.output


# --- a small store with real studies (compare, report, export, predict) -----------------------------------------

RESULT_SPACE = {  # the smallest models: the result tests are about results, not about training
    "conv_layers": [1],
    "fc_width": [32, 64],
    "lr": [1e-3, 1e-2],
    "batch_size": [64],
    "activation": ["ReLU", "GELU"],
}
GOOD_STUDIES = ("random", "tpe")  # studies with complete trials; "pruned-only" has only pruned and failed ones


def make_result_store(db: Path, data: Path) -> str:
    """Two small real studies (1 epoch per trial) and one whose trials were all pruned or failed."""
    url = f"sqlite:///{db}"
    space = SearchSpace.from_dict(RESULT_SPACE)
    for name, seed in zip(GOOD_STUDIES, (0, 1), strict=True):
        run_study(StudyConfig(strategy=name, storage=url, data=data, max_epochs=1, n_trials=3, space=space, seed=seed))
    with pytest.MonkeyPatch.context() as mp:  # a pruner that prunes every trial after its first epoch
        mp.setattr(run_module, "make_pruner", lambda cfg: optuna.pruners.ThresholdPruner(lower=2.0))
        cfg = StudyConfig(study="pruned-only", storage=url, data=data, max_epochs=2, n_trials=2, space=space)
        run_study(cfg)
    failed = optuna.load_study(study_name="pruned-only", storage=url)
    failed.tell(failed.ask(), state=TrialState.FAIL)
    return url


# --- studies for the run tests: a store in the test's folder, a small configuration ------------------------------

SMALL_SPACE = {"conv_layers": [1, 2], "fc_width": [32, 64], "lr": [1e-3, 1e-2], "activation": ["ReLU", "GELU"]}


def store_url(tmp_path: Path) -> str:
    """The SQLite store `optuna.db` in the test's folder."""
    return f"sqlite:///{tmp_path / 'optuna.db'}"


def journal_url(tmp_path: Path) -> str:
    """The journal store `optuna.log` in the test's folder: about 5x faster per trial than SQLite (SQLAlchemy's cost
    per attribute write), for tests whose subject is not the store. Read it with `load_study`."""
    return f"journal:{tmp_path / 'optuna.log'}"


def load_study(url: str, name: str | None = None) -> optuna.Study:
    """`optuna.load_study` for any URL hpo-astro takes (Optuna's own does not read `journal:` URLs)."""
    from hpo_astro.store.storage import open_existing_store

    return optuna.load_study(study_name=name, storage=open_existing_store(url))


def study_config(tmp_path: Path, data: Path, **overrides: object) -> StudyConfig:
    """A random search of 4 trials of at most 3 epochs on `data`, in `journal_url(tmp_path)`, with `overrides`."""
    base = {"storage": journal_url(tmp_path), "data": data, "max_epochs": 3, "n_trials": 4}
    return StudyConfig(**{**base, **overrides})  # type: ignore[arg-type]


# --- a fast stand-in for the trainer, for tests about budgets, samplers and pruning -----------------------------


def _fake_value(params: Mapping[str, Any], seed: int = 0) -> float:
    return 0.5 + 0.1 * int(params["conv_layers"]) - 20 * float(params["lr"]) + (params["activation"] == "GELU") * 0.05


@dataclasses.dataclass(frozen=True)
class ScriptedTrainer:
    """A stand-in trainer with `hpo_astro.core.train.train`'s contract, a one-weight model and scripted metrics
    (milliseconds): its run of `params` with `seed` climbs linearly to validation accuracy `final(params, seed)`
    (training noise, scripted). Picklable when `final` is a module-level function, so worker processes get it."""

    final: Callable[[Mapping[str, Any], int], float]

    def __call__(
        self,
        params: Mapping[str, Any],
        data: object,
        callbacks: Iterable[Callback] = (),
        max_epochs: int | None = None,
        seed: int = 0,
        resume: Mapping[str, Any] | None = None,
        **_: object,
    ) -> TrainResult:
        return scripted_train(params, data, callbacks, max_epochs, seed, resume, final=self.final(params, seed))


# The usual stand-in: accuracy `_fake_value(params)`, whatever the seed.
fake_train = ScriptedTrainer(_fake_value)


def scripted_trainer(final: Callable[[Mapping[str, Any], int], float]) -> TrainFn:
    """A stand-in trainer like `fake_train` whose run of `params` with `seed` ends at `final(params, seed)`."""
    return ScriptedTrainer(final)


def scripted_train(
    params: Mapping[str, Any],
    data: object,
    callbacks: Iterable[Callback],
    max_epochs: int | None,
    seed: int,
    resume: Mapping[str, Any] | None,
    final: float,
) -> TrainResult:
    import torch

    epochs = min(int(params["t_max"]), max_epochs or 10**6)
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
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
    while state.epoch < epochs and state.stop_reason is None:
        epoch = state.epoch + 1
        acc = final * epoch / epochs
        state.history.append(
            EpochMetrics(
                epoch=epoch,
                train_loss=1 - acc,
                train_accuracy=acc,
                val_loss=1 - acc,
                val_accuracy=acc,
                val_roc_auc=acc,
                lr=1e-3,
                seconds=0.0,
            )
        )
        state.best_epoch = epoch
        for cb in callbacks:
            cb.on_epoch_end(state)
    last = state.last
    metrics = Metrics(
        loss=1 - last.val_accuracy,
        accuracy=last.val_accuracy,
        roc_auc=last.val_roc_auc,
        precision=1,
        recall=1,
        f1=1,
        fpr_at_5fnr=0,
    )
    return TrainResult(
        params=dict(params),
        history=state.history,
        best_epoch=state.best_epoch,
        stop_reason=state.stop_reason or "max_epochs",
        n_params=1,
        wall_time=0.0,
        device="cpu",
        seed=seed,
        train_metrics=metrics,
        val_metrics=metrics,
        model=model,
    )


def noise_splits(n: int = 96, seed: int = 0) -> DataSplits:
    """Random one-plane images with random labels (about 60% real): a model can only overfit them. Validation and
    test hold n // 2 each."""
    import torch

    g = torch.Generator().manual_seed(seed)

    def part(m: int) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.rand(m, 1, 64, 64, generator=g), (torch.rand(m, generator=g) < 0.6).float()

    (xt, yt), (xv, yv), (xs, ys) = part(n), part(n // 2), part(n // 2)
    return DataSplits(xt, yt, xv, yv, xs, ys, channels=("scorr",), fingerprint="noise")


def cli_commands() -> Iterator[tuple[list[str], Any]]:
    """Every command and group below the top level, with its words on the command line (`data synth`...)."""
    import typer

    from hpo_astro.cli import app

    root = typer.main.get_command(app)
    stack: list[tuple[list[str], typer.Context]] = [([], typer.Context(root, info_name="hpo-astro"))]
    while stack:
        words, ctx = stack.pop()
        group = ctx.command
        for name in group.list_commands(ctx):  # type: ignore[attr-defined]
            command = group.get_command(ctx, name)  # type: ignore[attr-defined]
            yield [*words, name], command
            if hasattr(command, "list_commands"):
                stack.append(([*words, name], typer.Context(command, info_name=name, parent=ctx)))
