"""Ctrl-C and SIGTERM during a study: raised only where stopping is safe, and logged without a traceback.

Raised at an arbitrary point, an interrupt can do harm: inside `torch.save` it comes out of the zip writer as a
RuntimeError (an ordinary failed trial, and the run carries on: the signal is lost); between Optuna starting a
trial's heartbeat thread and entering its `with` block it leaves that thread running forever (the process never
exits). So during a trial signals are deferred (`Interrupts.deferred`: remembered, raised when the block ends) except
inside training (`Interrupts.allowed`), and inside training again while an epoch's checkpoint is written. (The best
weights are saved after training, where signals are already deferred.)
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import Iterator

import optuna

from hpo_astro.errors import write_fault


class Interrupts:
    """Where SIGINT and SIGTERM become KeyboardInterrupt: at once, or when the innermost `deferred` block ends."""

    def __init__(self) -> None:
        self.depth = 0  # nesting of `deferred` blocks; 0: a signal raises at once
        self.pending: int | None = None  # a signal that arrived while deferred

    def handler(self, signum: int, frame: object) -> None:
        if self.depth:
            self.pending = signum
            return
        raise KeyboardInterrupt(f"signal {signum}")

    def raise_pending(self) -> None:
        if self.pending is not None:
            signum, self.pending = self.pending, None
            raise KeyboardInterrupt(f"signal {signum}")

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self.depth += 1
        try:
            yield
        finally:
            self.depth -= 1
            if self.depth == 0:
                self.raise_pending()

    @contextlib.contextmanager
    def allowed(self) -> Iterator[None]:
        """Signals act at once inside (a signal deferred until now is raised on entry)."""
        saved, self.depth = self.depth, 0
        try:
            self.raise_pending()
            yield
        finally:
            self.depth = saved

    @contextlib.contextmanager
    def installed(self) -> Iterator[None]:
        """Route SIGINT and SIGTERM (preemption, `kill`) here: the Ctrl-C path keeps the checkpoint, fails the trial
        and re-queues it. Outside the main thread signals are left alone."""
        try:
            previous = {sig: signal.signal(sig, self.handler) for sig in (signal.SIGINT, signal.SIGTERM)}
        except ValueError:  # not the main thread
            yield
            return
        try:
            yield
        finally:
            for sig, old in previous.items():
                signal.signal(sig, old)
            self.depth, self.pending = 0, None


# Signal handlers belong to the process, so the run loop, the objective and its checkpoint callback share one.
process_interrupts = Interrupts()


class NoInterruptTraceback(logging.Filter):
    """Ctrl-C, SIGTERM and a full disk are expected ways to stop: Optuna's failed-trial warning keeps its line (which
    trial, which parameters) but not a traceback. Real errors keep theirs."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if error is not None and (isinstance(error, KeyboardInterrupt) or write_fault(error) is not None):
            record.exc_info = None
        return True


_traceback_filter = NoInterruptTraceback()
_optuna_level = [logging.WARNING]  # what a run logs of Optuna's (`set_optuna_level`)


def set_optuna_level(level: int) -> None:
    """The level of Optuna's logging in the runs this process starts from now on (default WARNING: no line per
    trial); the command line's -v and -q change it, and worker processes take it from their parent."""
    _optuna_level[0] = level


def optuna_level() -> int:
    return _optuna_level[0]


def configure_logging() -> None:
    """Optuna's warnings only (no line per trial; see `set_optuna_level`), without the tracebacks of interrupts and
    write faults. Done when a run starts, not when the library is imported; calling it again adds nothing (one
    filter instance)."""
    optuna.logging.set_verbosity(_optuna_level[0])
    logging.getLogger("optuna.study._optimize").addFilter(_traceback_filter)
