"""The errors hpo-astro reports in one line, one hierarchy, each class with the exit code the command line ends with:

* `UserError` (exit 2): bad input (a file, a URL, an option value); nothing was written.
* `CannotWrite` (exit 1): the machine refused a write (disk full, quota, I/O error), not the input.
* `StudyFailed` (exit 1): a study stopped (several trials failed in a row); `WriteFailed`: it stopped because a
  checkpoint, the weights or the store could not be written, and re-running the same command resumes it.

`write_fault` tells a failed write to the disk or the store from other errors."""

from __future__ import annotations

import errno


class HpoAstroError(Exception):
    """An error reported in one line (the message as-is); the command line exits with `exit_code`."""

    exit_code = 1


class UserError(HpoAstroError):
    """Bad input from the user (a file, a URL, an option value). The message is shown as-is, on one line."""

    exit_code = 2


class CannotWrite(UserError):
    """The machine refused a write (disk full, quota, I/O error): not the user's input; exit code 1."""

    exit_code = 1


class StudyFailed(HpoAstroError):
    """Several trials in a row failed: something is wrong beyond one configuration (a bug, the device)."""


class WriteFailed(StudyFailed):
    """A checkpoint, the best weights or the study store could not be written (disk full, quota, I/O error). Not the
    configuration's fault: the run stops and the trial is re-queued, so re-running the same command resumes."""


# errno values that mean "the disk, not the input": full, over quota, file too large, read-only, I/O error
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EIO}


def write_fault(exc: BaseException) -> str | None:
    """A one-line reason when `exc`, or an error that caused it (torch's zip writer wraps the OSError in a
    RuntimeError; SQLAlchemy wraps SQLite's), is a failed write to the disk or the study store; None otherwise."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _WRITE_ERRNOS:
            return f"{current.strerror or current}" + (f": {current.filename}" if current.filename else "")
        text = str(current).lower()
        if "disk is full" in text or "disk i/o error" in text or "file write failed" in text:
            return " ".join(str(current).split())[:200]
        current = current.__cause__ or current.__context__
    return None


def one_line(message: str | BaseException) -> str:
    """A message, or an error's whole message, on one line, whatever the values quoted in it; for a database error
    wrapped by SQLAlchemy, the driver's own."""
    return " ".join(str(getattr(message, "orig", None) or message).split())


def described(exc: BaseException) -> str:
    """`ErrorClass: message`: how a failure someone else's code raised is reported (a trial's fail_reason, a sampler
    class that failed to import or construct, a plot Optuna refused)."""
    return f"{type(exc).__name__}: {exc}"
