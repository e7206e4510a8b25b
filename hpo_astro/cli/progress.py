"""The live display of a running study (`run`, `worker`, `tabulate`, `confirm`): a bar of finished/target trials with
the best value so far, the trial running here from its first epoch and an ETA from the measured epoch times; a line
per trial this process finished, with the parameters that vary and its duration. While it runs, Optuna's log lines
are printed above the bar, never into it. -q shows none of it; -v adds Optuna's own line per trial."""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import ProgressColumn, Task
from rich.text import Text

from hpo_astro.cli.output import NORMAL, QUIET, VERBOSE, console, live_display, note, verbosity

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from hpo_astro.core.train import TrainState

OPTUNA_LEVELS = {QUIET: logging.WARNING, NORMAL: logging.WARNING, VERBOSE: logging.INFO}  # -vv and more: DEBUG
RECENT_EPOCHS = 50  # the ETA's epoch time: the mean of the last ones measured


def optuna_level(level: int) -> int:
    """The level of Optuna's logging for a verbosity (`hpo_astro.cli.output`)."""
    return OPTUNA_LEVELS.get(level, logging.DEBUG if level > VERBOSE else logging.ERROR)


class RunDisplay:
    """Live progress of a study, fed by the `hpo_astro.study.run.RunEvents` made of its methods. `workers`: the
    processes sharing the study (the ETA divides the trials left among them); `clock` measures the epochs."""

    def __init__(self, workers: int = 1, clock: Callable[[], float] = time.monotonic, out: Console | None = None):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        self.quiet = verbosity() <= QUIET
        self.clock, self.workers = clock, max(1, workers)
        self.progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("trials"),
            TextColumn("best {task.fields[best]}"),
            TextColumn("{task.fields[current]}"),
            TimeElapsedColumn(),
            _EtaColumn(self),
            console=out or console,
            transient=False,
            disable=self.quiet,
        )
        self.task: Any = None
        self.target = self.finished = 0
        self.trial: int | None = None  # the trial running here
        self.mark = 0.0  # when its last epoch ended, or it started
        self.epochs_run = 0  # by the running trial
        self.epochs_left: int | None = None  # of the running trial, once an epoch told its cap
        self.max_epochs: int | None = None  # the last cap an epoch told
        self.epoch_seconds: list[float] = []
        self.trial_epochs: list[int] = []  # epochs trained by each trial finished here
        self._handler = _OptunaLines()
        self._level = logging.WARNING  # Optuna's level before the display, restored after it
        self._notes = contextlib.nullcontext() if self.quiet else live_display(self.progress.console)

    def __enter__(self) -> RunDisplay:
        import optuna

        from hpo_astro.study import interrupts

        self._level = interrupts.optuna_level()
        interrupts.set_optuna_level(optuna_level(verbosity()))  # the runs here and in the worker processes
        self.progress.__enter__()
        self._notes.__enter__()
        # Optuna's handler writes to the stderr it found when Optuna was imported, into the bar; this one writes as
        # `note` does: above the bar while it runs on a terminal, else on the stderr of the moment.
        optuna.logging.disable_default_handler()
        logging.getLogger("optuna").addHandler(self._handler)
        return self

    def __exit__(self, *exc: object) -> None:
        import optuna

        from hpo_astro.study import interrupts

        interrupts.set_optuna_level(self._level)
        logging.getLogger("optuna").removeHandler(self._handler)
        optuna.logging.enable_default_handler()
        self._notes.__exit__(None, None, None)
        self.progress.__exit__(*exc)  # type: ignore[arg-type]

    def say(self, line: str) -> None:
        """A line above the bar (none with -q)."""
        if not self.quiet:
            self.progress.console.print(line, highlight=False, markup=False)

    def start(self, study: optuna.Study, finished: int, target: int) -> None:
        from hpo_astro.store.record import OBJECTIVE_KEY, STRATEGY_KEY

        verb = "resuming" if finished or study.trials else "starting"
        attrs = study.user_attrs
        self.say(
            f"{verb} study {study.study_name!r} ({attrs.get(STRATEGY_KEY, '?')}, "
            f"{_objective_text(study, attrs.get(OBJECTIVE_KEY))}): {finished}/{target} finished"
        )
        self.target, self.finished = target, finished
        self.task = self.progress.add_task(
            study.study_name, total=target, completed=finished, best=best_text(study), current=""
        )

    def trial_start(self, number: int) -> None:
        self.trial, self.mark, self.epochs_run, self.epochs_left = number, self.clock(), 0, None
        self._show(f"trial {number} epoch 1")

    def epoch(self, number: int, state: TrainState) -> None:
        now = self.clock()
        if self.trial != number:  # no start was told (a caller of its own): measured from now on
            self.trial, self.epochs_run = number, 0
        else:
            self.epoch_seconds.append(now - self.mark)
        self.mark, self.epochs_run, self.max_epochs = now, self.epochs_run + 1, state.max_epochs
        running = state.epoch < state.max_epochs and state.stop_reason is None
        self.epochs_left = state.max_epochs - state.epoch if running else 0
        shown = state.epoch + 1 if running else state.epoch
        self._show(f"trial {number} epoch {shown}/{state.max_epochs}")

    def wait(self, running: int) -> None:
        self._show(f"waiting for {running} running trial(s) elsewhere")

    def trial_end(self, study: optuna.Study, trial: FrozenTrial, finished: int) -> None:
        if self.epochs_run:
            self.trial_epochs.append(self.epochs_run)
        self.trial, self.finished = None, finished
        self.say(trial_line(trial))
        self.progress.update(self.task, completed=finished, best=best_text(study), current="")

    def _show(self, current: str) -> None:
        if self.task is not None:
            self.progress.update(self.task, current=current)

    def eta(self) -> float | None:
        """Seconds until the budget is reached, from the measured epoch times: the running trial's epochs left,
        then the trials left, each as many epochs as the trials finished here took (else the cap), shared among
        the workers. None until an epoch was measured."""
        recent = self.epoch_seconds[-RECENT_EPOCHS:]
        if not recent:
            return None
        per_epoch = sum(recent) / len(recent)
        per_trial = sum(self.trial_epochs) / len(self.trial_epochs) if self.trial_epochs else self.max_epochs or 0
        running = self.trial is not None
        current = (per_trial if self.epochs_left is None else self.epochs_left) if running else 0
        after = max(0, self.target - self.finished - running)
        seconds = per_epoch * (current + after * per_trial / self.workers)
        if running and current:  # the epoch under way is partly done
            seconds -= min(self.clock() - self.mark, per_epoch)
        return max(0.0, seconds)


class _EtaColumn(ProgressColumn):
    """`ETA 0:12:34`, from `RunDisplay.eta` at each refresh (`ETA -` until an epoch was measured)."""

    def __init__(self, display: RunDisplay) -> None:
        super().__init__()
        self.display = display

    def render(self, task: Task) -> Text:
        return Text(eta_text(self.display.eta()), style="progress.remaining")


def eta_text(seconds: float | None) -> str:
    return "ETA -" if seconds is None else f"ETA {timedelta(seconds=round(seconds))}"


class _OptunaLines(logging.Handler):
    """Optuna's log records, one line each (a traceback under it, as Optuna prints them), printed by `note`."""

    def __init__(self) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("optuna %(levelname)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        if _said_by_the_trial_line(record) and verbosity() <= NORMAL:
            return
        record.levelname = record.levelname.lower()
        note(self.format(record))


def _said_by_the_trial_line(record: logging.LogRecord) -> bool:
    """Optuna's "Trial N failed with ..." lines for a trial stopped the expected way (Ctrl-C, SIGTERM, a full disk:
    `NoInterruptTraceback` took their traceback off), which the trial's own line and the command's error already
    say; a real error keeps Optuna's line and its traceback. `-v` shows them all."""
    message = record.getMessage()
    return record.exc_info is None and message.startswith("Trial ") and " failed with " in message


def trial_line(trial: FrozenTrial) -> str:
    """A finished trial, as the run prints it: its state and value, its duration, the parameters that vary in the
    space (the fixed ones are every trial's) and why it failed."""
    from hpo_astro.results.status import trial_seconds, varying_params
    from hpo_astro.store.record import fail_reason

    if trial.values is None:
        value = ""
    elif len(trial.values) == 1:
        value = f" value {trial.values[0]:.4f}"
    else:
        value = " values " + ", ".join(f"{v:.4g}" for v in trial.values)
    seconds = trial_seconds(trial)
    took = "" if seconds is None else f" in {duration_text(seconds)}"
    params = params_text(varying_params(trial))
    reason = fail_reason(trial) if trial.state.name == "FAIL" else None
    return f"trial {trial.number} {trial.state.name.lower()}{value}{took}{': ' + params if params else ''}" + (
        f" ({reason})" if reason else ""
    )


def params_text(params: dict[str, Any]) -> str:
    return " ".join(
        f"{name}={value:g}" if isinstance(value, float) else f"{name}={value}" for name, value in params.items()
    )


def duration_text(seconds: float) -> str:
    """`4.2 s`, `3 min 05 s`, `2 h 07 min`."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    return f"{minutes // 60} h {minutes % 60:02d} min"


def _objective_text(study: optuna.Study, objective: Any) -> str:
    from hpo_astro.store.trials import directions_text

    if len(study.directions) > 1:
        return directions_text(study, objective if isinstance(objective, str) else None)
    return f"{objective if isinstance(objective, str) else '?'} {directions_text(study)}"


def best_text(study: optuna.Study) -> str:
    """The best value so far; a multi-objective study: the size of its Pareto front."""
    from hpo_astro.store.trials import is_multi_objective

    if is_multi_objective(study):
        front = study.best_trials
        return f"front of {len(front)}" if front else "-"
    try:
        return f"{study.best_value:.4f}"
    except ValueError:
        return "-"
