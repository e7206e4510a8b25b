"""What `run` and `worker` write while a study runs, and the options that change it: a line per finished trial with
the parameters that vary and its duration; the bar's running trial from its first epoch and its ETA from measured
epoch times; Optuna's warnings above the bar, never in it; -v / -q; --timeout; and, on Ctrl-C, that the running
trial was checkpointed only when a checkpoint was written."""

from __future__ import annotations

import io
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna
import pytest
from helpers import assert_refused, fake_train, invoke, load_study
from optuna.trial import TrialState
from rich.console import Console

from hpo_astro.cli import progress
from hpo_astro.core.train import Callback
from hpo_astro.results.status import varying_params
from hpo_astro.store.record import CHECKPOINT_ATTR, internal_attr, params_full
from hpo_astro.study import run as run_module

# Two dimensions that vary and one fixed to a single value: a trial's line shows the first two only.
SPACE = "[space]\nconv_layers = [1, 2]\nfc_layers = [1]\nlr = [1e-2, 1e-3]\n"


def _run_args(tmp_path: Path, data: Path, *extra: object, n: int = 3) -> list[object]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    config = tmp_path / "space.toml"
    config.write_text(SPACE)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    return ["run", "-n", n, "--max-epochs", 2, "--data", data, "--storage", url, "--config", config, *extra]


def _trial_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("trial ")]


def test_a_finished_trial_line_gives_the_parameters_that_vary_and_its_duration(
    tmp_path: Path, small_file: Path, fake_training: None
) -> None:
    result = invoke(*_run_args(tmp_path, small_file))
    assert result.exit_code == 0, result.output
    lines = _trial_lines(result.stdout)
    study = load_study(f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(lines) == len(study.trials) == 3
    for line, trial in zip(lines, study.trials, strict=True):
        assert params_full(trial)["fc_layers"] == 1  # fixed: every trial's, not shown
        params = f"conv_layers={trial.params['conv_layers']} lr={trial.params['lr']:g}"
        assert re.fullmatch(rf"trial {trial.number} complete value {trial.value:.4f} in \d+\.\d s: {params}", line)


def test_a_parameter_fixed_to_one_value_is_not_shown() -> None:
    """Whether or not the objective asks Optuna for a dimension fixed to one value, its line never shows it."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    trial = optuna.trial.create_trial(
        params={"conv_layers": 2, "fc_layers": 1, "lr": 1e-3, "fc_width": 64, "dropout": 0.5},
        distributions={
            "conv_layers": CategoricalDistribution([1, 2]),
            "fc_layers": CategoricalDistribution([1]),
            "lr": FloatDistribution(1e-4, 1e-2, log=True),
            "fc_width": IntDistribution(64, 64),
            "dropout": FloatDistribution(0.5, 0.5),
        },
        value=0.9,
    )
    assert varying_params(trial) == {"conv_layers": 2, "lr": 1e-3}
    assert re.fullmatch(
        r"trial -1 complete value 0\.9000 in 0\.0 s: conv_layers=2 lr=0\.001", progress.trial_line(trial)
    )


def test_quiet_drops_the_bar_and_the_trial_lines_and_verbose_adds_optunas(
    tmp_path: Path, small_file: Path, fake_training: None
) -> None:
    normal = invoke(*_run_args(tmp_path / "normal", small_file))
    assert normal.exit_code == 0, normal.output
    assert len(_trial_lines(normal.stdout)) == 3 and "Trial 0 finished with value" not in normal.output
    for args in (["-q", *_run_args(tmp_path / "global", small_file)], _run_args(tmp_path / "own", small_file, "-q")):
        quiet = invoke(*args)
        assert quiet.exit_code == 0, quiet.output
        assert _trial_lines(quiet.stdout) == [] and "starting study" not in quiet.stdout and "next:" not in quiet.stdout
        assert "3/3 finished trials" in quiet.stdout  # the result stays
    for args in (["-v", *_run_args(tmp_path / "verbose", small_file)], _run_args(tmp_path / "v", small_file, "-v")):
        verbose = invoke(*args)
        assert verbose.exit_code == 0, verbose.output
        assert len(_trial_lines(verbose.stdout)) == 3
        assert "optuna info: Trial 2 finished with value" in verbose.stderr
    assert_refused(invoke("-v", "-q", "status"), "-v/--verbose and -q/--quiet contradict each other")


@dataclass
class _State:
    """What the display reads of a trainer's state after an epoch."""

    epoch: int
    max_epochs: int
    stop_reason: str | None = None


def test_the_bar_shows_the_running_trial_from_its_first_epoch_and_an_eta_from_epoch_times() -> None:
    now = [1000.0]
    display = progress.RunDisplay(clock=lambda: now[0], out=Console(file=io.StringIO()))
    study = optuna.create_study(direction="maximize")
    display.start(study, finished=0, target=3)
    assert display.eta() is None and progress.eta_text(display.eta()) == "ETA -"  # nothing measured yet
    display.trial_start(0)
    assert display.progress.tasks[0].fields["current"] == "trial 0 epoch 1"  # before its first epoch ends
    now[0] += 10.0
    display.epoch(0, _State(epoch=1, max_epochs=4))
    assert display.progress.tasks[0].fields["current"] == "trial 0 epoch 2/4"
    # 10 s per epoch: 3 epochs left in this trial, then 2 trials of 4 epochs
    assert display.eta() == pytest.approx(10.0 * (3 + 2 * 4))
    now[0] += 4.0  # 4 s into the next epoch
    assert display.eta() == pytest.approx(10.0 * (3 + 2 * 4) - 4.0)
    now[0] += 26.0  # a slower epoch: 30 s, the mean is now 20 s
    display.epoch(0, _State(epoch=2, max_epochs=4, stop_reason="pruned"))
    assert display.progress.tasks[0].fields["current"] == "trial 0 epoch 2/4"
    trial = study.ask()
    study.tell(trial, state=TrialState.PRUNED)
    display.trial_end(study, study.trials[0], finished=1)
    # 2 trials left, each of 2 epochs (as the one finished here took), 20 s each
    assert display.eta() == pytest.approx(20.0 * 2 * 2) and progress.eta_text(display.eta()) == "ETA 0:01:20"


def test_the_run_loop_tells_the_bar_a_trial_started_before_its_first_epoch(
    tmp_path: Path, small_file: Path, fake_training: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[tuple[str, int]] = []
    start, epoch = progress.RunDisplay.trial_start, progress.RunDisplay.epoch
    monkeypatch.setattr(progress.RunDisplay, "trial_start", lambda self, n: (seen.append(("start", n)), start(self, n)))
    monkeypatch.setattr(progress.RunDisplay, "epoch", lambda self, n, s: (seen.append(("epoch", n)), epoch(self, n, s)))
    result = invoke(*_run_args(tmp_path, small_file, n=2))
    assert result.exit_code == 0, result.output
    assert seen == [("start", 0), ("epoch", 0), ("epoch", 0), ("start", 1), ("epoch", 1), ("epoch", 1)]


def test_optunas_warnings_print_above_the_bar_not_into_it() -> None:
    """Optuna's own handler writes to the stderr it found when Optuna was imported, past the live display; while the
    display runs, its records reach the display's console (which prints them above the bar), then Optuna's handler
    is back."""
    screen = io.StringIO()
    display = progress.RunDisplay(out=Console(file=screen, force_terminal=True, width=120))
    with display:
        display.start(optuna.create_study(), finished=0, target=3)
        optuna.logging.get_logger("optuna.study.study").warning("the sampler fell back: WXYZ")
    assert "optuna warning: the sampler fell back: WXYZ" in screen.getvalue()
    assert optuna.logging._default_handler in logging.getLogger("optuna").handlers


def test_an_optuna_warning_during_a_run_is_a_line_of_the_commands_output(
    tmp_path: Path, small_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def warning_train(params: Mapping[str, Any], data: object, **kwargs: Any) -> Any:
        optuna.logging.get_logger("optuna.trial").warning("a warning while training")
        return fake_train(params, data, **kwargs)

    result = invoke(*_run_args(tmp_path, small_file, n=1), train=warning_train)
    assert result.exit_code == 0, result.output
    assert "optuna warning: a warning while training" in result.stderr.splitlines()


@dataclass(frozen=True)
class _StopAt:
    """Ctrl-C in training after `epoch` epochs (0: before the first)."""

    epoch: int

    def __call__(self, params: Mapping[str, Any], data: object, callbacks: Iterable[Callback] = (), **kw: Any) -> Any:
        if self.epoch == 0:
            raise KeyboardInterrupt
        return fake_train(params, data, callbacks=[*callbacks, self], **kw)

    def on_epoch_end(self, state: Any) -> None:
        if state.epoch == self.epoch:
            raise KeyboardInterrupt


@pytest.mark.parametrize("epoch", [0, 2])
def test_ctrl_c_says_the_trial_was_checkpointed_only_when_it_was(epoch: int, tmp_path: Path, small_file: Path) -> None:
    args = _run_args(tmp_path, small_file, "--checkpoint-interval", 0, n=2)
    args[args.index("--max-epochs") + 1] = 3
    result = invoke(*args, train=_StopAt(epoch))
    assert result.exit_code == 130, result.output
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("interrupted")]
    if epoch:
        assert "the running trial #0 was checkpointed at epoch 2 and re-queued" in line
    else:
        assert "checkpointed" not in line and "#0 was re-queued; it had no checkpoint yet" in line
    assert "resume with:" in line
    study = load_study(f"sqlite:///{tmp_path / 'optuna.db'}")
    assert [t.state for t in study.trials] == [TrialState.FAIL, TrialState.WAITING]
    pointer = internal_attr(study.trials[1], CHECKPOINT_ATTR)  # what the retry resumes from
    assert (pointer is not None and pointer["epoch"] == 2) if epoch else pointer is None


def test_timeout_starts_no_trial_past_it_and_the_same_command_goes_on_to_the_budget(
    tmp_path: Path, small_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each trial takes 100 s on a fake clock: --timeout 150 lets a second trial start at 100 s (the running one
    finishes), none at 200 s. The budget stays the number of finished trials: re-running goes on towards it."""
    now = [0.0]
    monkeypatch.setattr(run_module, "clock", lambda: now[0])

    def slow_train(*args: Any, **kwargs: Any) -> Any:
        now[0] += 100.0
        return fake_train(*args, **kwargs)

    args = _run_args(tmp_path, small_file, "--timeout", 150, n=5)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = invoke(*args, train=slow_train)
    assert first.exit_code == 0, first.output
    assert "2/5 finished trials" in first.stdout
    assert "stopped at the time budget (--timeout 150 s)" in first.stderr
    again = invoke(*args, train=slow_train)
    assert again.exit_code == 0 and "4/5 finished trials (2 run by this process)" in again.stdout, again.output
    last = invoke(*[a for a in args if a not in ("--timeout", 150)], train=slow_train)
    assert last.exit_code == 0 and "5/5 finished trials (1 run by this process)" in last.stdout, last.output
    assert "time budget" not in last.stderr
    assert [t.state for t in load_study(url).trials] == [TrialState.COMPLETE] * 5


def test_a_worker_with_no_time_left_starts_no_trial(
    tmp_path: Path, small_file: Path, fake_training: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(run_module, "clock", lambda: 0.0)  # the clock stands still: a timeout of 0 has passed
    made = invoke(*_run_args(tmp_path, small_file, n=3), "--timeout", 0)
    assert made.exit_code == 0 and "0/3 finished trials" in made.stdout, made.output
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    joined = invoke("worker", "--study", "random", "--storage", url, "--timeout", 0)
    assert joined.exit_code == 0, joined.output
    assert "0/3 finished trials (0 run by this process)" in joined.stdout and "time budget" in joined.stderr
    assert load_study(url).trials == []
    done = invoke("worker", "--study", "random", "--storage", url, "--timeout", 1000)
    assert done.exit_code == 0 and "3/3 finished trials (3 run by this process)" in done.stdout, done.output
