"""The journal store (`journal:PATH`): Optuna's `JournalStorage` on a log file, with a backend whose appends never
leave half a record behind (a full disk, a file-size limit or a kill), and the check that a file is a journal."""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path
from typing import Any

import optuna

from hpo_astro.errors import UserError, one_line
from hpo_astro.io import check_writable

JOURNAL_PROBE = 1 << 20  # bytes read to find a journal's first line (a create-study record: a few hundred bytes)


def check_journal(path: Path) -> None:
    """Refuse a file that is not an Optuna journal (one JSON object with an "op_code" per line), from a bounded
    read of its first line; an empty file is an empty journal (Optuna creates one before its first record)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(JOURNAL_PROBE)
    except OSError as exc:
        raise UserError(f"cannot read the journal {path}: {exc.strerror or exc}") from None
    if not head:
        return
    try:
        first = json.loads(head.split(b"\n", 1)[0])
    except ValueError:  # JSONDecodeError and UnicodeDecodeError
        first = None
    if not isinstance(first, dict) or "op_code" not in first:
        raise UserError(f"{path} is not an Optuna study store (not an Optuna journal file)")


def journal_backend(path: str) -> optuna.storages.journal.BaseJournalBackend:
    """Optuna's journal file backend whose appends cannot leave half a record behind.

    Optuna appends a batch of records with one write under the journal's lock. A full disk, a file-size limit or a
    kill can stop that write part-way: the file then ends in an incomplete line, which Optuna's reader skips, but the
    next append would glue its records onto it and make a line no reader can decode. So an append that fails takes
    the file back to its length before the write, and every append first drops an incomplete last line (a record
    whose write never returned; under the lock, no other writer is half-way through)."""
    from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

    lock = JournalFileSymlinkLock(path)

    class WholeRecordsBackend(JournalFileBackend):
        def append_logs(self, logs: list[dict[str, Any]]) -> None:
            text = "".join(json.dumps(log, separators=(",", ":")) + "\n" for log in logs).encode("utf-8")
            lock.acquire()
            try:
                size = drop_incomplete_tail(Path(path))
                try:
                    with open(path, "ab") as fh:
                        fh.write(text)
                        fh.flush()
                        os.fsync(fh.fileno())
                except OSError:
                    with contextlib.suppress(OSError), open(path, "r+b") as fh:
                        fh.truncate(size)  # shrinking needs no space: the journal is as it was before the write
                    raise
            finally:
                lock.release()

    return WholeRecordsBackend(path, lock_obj=lock)


def drop_incomplete_tail(path: Path) -> int:
    """Cut a journal file after its last complete line (a record ends with a newline) and return its length. Only
    under the journal's lock: the tail is a write that failed or was killed."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    if size == 0:
        return 0
    with open(path, "r+b") as fh:
        end = size
        while end > 0:
            start = max(0, end - (1 << 16))
            fh.seek(start)
            chunk = fh.read(end - start)
            if end == size and chunk.endswith(b"\n"):
                return size
            newline = chunk.rfind(b"\n")
            if newline >= 0:
                keep = start + newline + 1
                fh.truncate(keep)
                return keep
            end = start
        fh.truncate(0)
        return 0


def open_journal(path: str, create: bool) -> optuna.storages.BaseStorage:
    from optuna.storages.journal import JournalStorage

    if not path:
        raise UserError("journal storage needs a path: journal:PATH")
    file = Path(path)
    if create:
        check_writable(file)
    elif not file.is_file():
        raise UserError(f"no study store at {file}: run `hpo-astro run` first, or pass --storage URL")
    if file.exists():
        check_journal(file)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return JournalStorage(journal_backend(path))
    except OSError as exc:
        raise UserError(f"cannot open the journal {path}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # not JSON, a record Optuna cannot replay
        raise UserError(f"the journal {path} is damaged: {one_line(exc)}") from None
