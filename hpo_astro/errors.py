"""Errors the command line reports in one line: `UserError` (bad input, exit 2) and failed writes to the disk or the
study store (`write_fault`, exit 1: the run can be resumed once there is space)."""

from __future__ import annotations

import errno


class UserError(Exception):
    """Bad input from the user (a file, a URL, an option value). The message is shown as-is, on one line."""


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


def one_line(exc: BaseException) -> str:
    """An error's whole message on one line; for a database error wrapped by SQLAlchemy, the driver's own."""
    return " ".join(str(getattr(exc, "orig", None) or exc).split())
