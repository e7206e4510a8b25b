"""Writing files for the user: atomically (never half-written), with the permissions a new file of theirs gets, and
with one clear line when it cannot be done.

A path that cannot be written (a directory, no permission) is bad input: `UserError`, exit code 2. A write that the
machine refuses (a full disk, a quota, an I/O error) is `CannotWrite`, exit code 1: the same command works again once
there is space.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from hpo_astro.errors import CannotWrite, UserError, write_fault


def os_reason(exc: BaseException) -> str:
    """An error's reason on one line: an OSError's strerror, else the first line of its message."""
    if getattr(exc, "strerror", None):
        return str(exc.strerror)  # type: ignore[attr-defined]
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def write_error(path: Path, exc: BaseException, what: str | None = None) -> UserError:
    """The one-line error for a failed write of `what` (default: `path`): `CannotWrite` when the machine refused it
    (full disk, quota, I/O error, also behind torch's RuntimeError), else `UserError` (a bad path)."""
    kind = CannotWrite if write_fault(exc) is not None else UserError
    return kind(f"cannot write {what or path}: {os_reason(exc)}")


class atomic_write:
    """Write to a temporary file beside `path` and rename it into place only if the block succeeds; the file gets the
    permissions the umask gives a new file (0644 under the usual 022), like every file the user writes.

    The temporary file never outlives the block: it is removed when the block, the close (a full disk shows up
    there, when buffers are flushed) or the rename fails. An OSError becomes one line, ``cannot write PATH: reason``
    (`UserError`, or `CannotWrite` for a full disk); other exceptions from the block propagate unchanged."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __enter__(self) -> BinaryIO:
        if self.path.is_dir():  # before any work: os.replace would only fail at the very end
            raise UserError(f"cannot write {self.path}: it is a directory")
        self._direct = is_device(self.path)
        if not self._direct and self.path.exists() and not self.path.is_file():
            raise UserError(f"cannot write {self.path}: it is not a regular file (a FIFO, socket or block device)")
        if self._direct:  # /dev/null, /dev/stdout: written in place; a rename would replace the device node
            try:
                self._fh = open(self.path, "wb")
            except OSError as exc:
                raise write_error(self.path, exc) from None
            return self._fh
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".part", dir=self.path.parent)
        except OSError as exc:
            raise write_error(self.path, exc) from None
        self._tmp = Path(tmp)
        self._fh = os.fdopen(fd, "wb")
        return self._fh

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        if self._direct:
            try:
                self._fh.close()
            except OSError as err:
                if exc is None:
                    raise write_error(self.path, err) from None
            if isinstance(exc, OSError):
                raise write_error(self.path, exc) from None
            return
        committed = False
        error = exc
        try:
            if exc is None:  # mkstemp made the file 0600: give it the mode any new file of the user's gets
                os.fchmod(self._fh.fileno(), 0o666 & ~umask())
            self._fh.close()
            if exc is None:
                os.replace(self._tmp, self.path)
                committed = True
        except OSError as err:
            error = error or err  # the block's own error, if any, says more than the close that followed it
        finally:
            if not committed:
                with contextlib.suppress(OSError):
                    self._tmp.unlink(missing_ok=True)
        if isinstance(error, OSError):
            raise write_error(self.path, error) from None


def umask() -> int:
    """The process's file-creation mask (read without changing it for longer than two calls)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def is_device(path: Path) -> bool:
    """Whether `path` is a character device (/dev/null, a terminal): an output written in place, never replaced.
    Any other existing path that is not a regular file (a FIFO, a socket, a block device) is refused by
    `check_output`: writing would block or replace what is there."""
    import stat

    try:
        return stat.S_ISCHR(path.stat().st_mode)
    except OSError:
        return False


def check_output(path: Path) -> None:
    """Refuse an output file that cannot be written, before any work is done (and before anything is cached)."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"cannot write {path}: it is a directory")
    if is_device(path):
        return
    if path.exists() and not path.is_file():
        raise UserError(f"cannot write {path}: it is not a regular file (a FIFO, socket or block device)")
    existing = next(p for p in (path.parent, *path.parent.parents) if p.exists() or p == p.parent)
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {path}: {existing} is not a writable directory")


def write_output(path: Path, data: str | bytes) -> Path:
    """Write an output file for the user atomically, with the permissions a new file of theirs gets."""
    path = Path(path)
    with atomic_write(path) as fh:
        fh.write(data.encode() if isinstance(data, str) else data)
    return path


_READ_CHUNK = 1 << 20


def read_regular_file(path: Path, limit: int, what: str, missing: str | None = None) -> bytes:
    """The bytes of `path`, read only when it is a regular file, and at most `limit` + 1 of them (the caller refuses
    more, in its own words). Opened without blocking and checked on the open file, so a FIFO without a writer,
    /dev/zero or a folder is refused before anything is read; read in pieces, so a small file costs little memory
    whatever the limit. `what` names the file in the one-line errors ("study file", "table", "model manifest");
    `missing` replaces the "WHAT not found: PATH" line."""
    import stat

    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise UserError(missing or f"{what} not found: {path}") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = "a directory" if stat.S_ISDIR(mode) else "not a regular file"
            raise UserError(f"cannot read {what} {path}: it is {kind}")
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, min(_READ_CHUNK, limit + 1 - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)
    return b"".join(chunks)


def check_writable(path: Path) -> None:
    """Refuse, in one line, a store file that cannot be created or written: its folder missing, not a file, no
    write permission."""
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise UserError(f"storage directory does not exist: {directory}")
    if path.exists() and not path.is_file():
        raise UserError(f"storage {path} is not a file")
    if (path.exists() and not os.access(path, os.W_OK)) or (not path.exists() and not os.access(directory, os.W_OK)):
        raise UserError(f"storage is not writable: {path}")


def strict_json(value: Any) -> Any:
    """A value JSON can hold without NaN: NaN and infinities become null, NumPy arrays and numbers become Python
    lists and numbers (by their `tolist`/`item`: no NumPy import here), tuples lists, and keys strings."""
    if hasattr(value, "tolist") and not isinstance(value, list | tuple | dict | str):
        return strict_json(value.tolist())  # a NumPy array or number (item() of a scalar is tolist() too)
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    return value
