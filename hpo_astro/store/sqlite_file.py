"""A SQLite store file, seen from outside Optuna: what it is (an Optuna store, another program's database, a
damaged or half-created file), read through a read-only connection that leaves it byte-identical; the settings a
writer uses (WAL, busy timeout); and the lock that serialises the first opens of new stores in one folder."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

from hpo_astro.errors import UserError, one_line

SQLITE_BUSY_TIMEOUT = 120  # seconds a SQLite writer waits for the lock
SQLITE_MAGIC = b"SQLite format 3\x00"
# Tables every Optuna RDB store has; a reader needs these, and `run` refuses a database holding none of Optuna's.
REQUIRED_TABLES = frozenset({"studies", "trials", "version_info"})
OPTUNA_TABLES = REQUIRED_TABLES | {
    "study_directions",
    "study_user_attributes",
    "study_system_attributes",
    "trial_user_attributes",
    "trial_system_attributes",
    "trial_params",
    "trial_values",
    "trial_intermediate_values",
    "trial_heartbeats",
    "alembic_version",
}


@contextlib.contextmanager
def creation_lock(file: Path | None) -> Iterator[None]:
    """Serialise the opening of SQLite stores in one directory across processes, so that first opens of a new store
    do not race to create its schema: an flock on the directory itself (no lock file is left behind). Where the
    file system has no flock, the retries in `_construct` take over."""
    if file is None:
        yield
        return
    try:
        fd = os.open(file.parent if str(file.parent) else ".", os.O_RDONLY)
    except OSError:
        yield
        return
    try:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT * 1000}")
    cursor.execute("PRAGMA synchronous = NORMAL")  # safe with WAL: a crash loses at most the last commit
    cursor.close()


def enable_wal(url: str, engine_kwargs: dict[str, Any]) -> None:
    """Switch the SQLite file to write-ahead logging (persistent): readers no longer block the writer."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, **engine_kwargs)
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA journal_mode=WAL")
    finally:
        engine.dispose()


def sqlite_tables(path: Path, new_store_ok: bool = False) -> tuple[set[str], str]:
    """The tables of the SQLite file at `path` and the URI parameter that reads it ("mode=ro", or "immutable=1"
    where the file's directory is read-only so that a WAL database cannot be opened with mode=ro), through a
    read-only connection, after an integrity check. Anything but an Optuna store is a UserError; with
    `new_store_ok` (run) a 0-byte file or a database without any table is accepted as a store to create.

    A read-only connection to a WAL database creates its -wal/-shm files: the caller removes them (see
    `remove_read_leftovers`)."""
    try:
        with open(path, "rb") as fh:
            header = fh.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise UserError(f"cannot read the study store {path}: {exc.strerror or exc}") from None
    if not header:
        if new_store_ok:
            return set(), "mode=ro"
        raise UserError(f"{path} is not an Optuna study store (an empty file): run `hpo-astro run` first")
    if header != SQLITE_MAGIC:
        raise UserError(f"{path} is not an Optuna study store (not a SQLite database)")
    uri = "file:" + quote(os.path.abspath(path))
    failure: sqlite3.Error | None = None
    for param in ("mode=ro", "immutable=1"):
        try:
            connection = sqlite3.connect(f"{uri}?{param}", uri=True, timeout=SQLITE_BUSY_TIMEOUT)
        except sqlite3.Error as exc:
            failure = exc
            continue
        try:
            tables = {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            problems = [row[0] for row in connection.execute("PRAGMA quick_check(1)")]
            versioned = "version_info" not in tables or bool(
                connection.execute("SELECT count(*) FROM version_info").fetchone()[0]
            )
        except sqlite3.OperationalError as exc:
            failure = exc
            if cannot_open_read_only(exc):
                continue  # a WAL database on a read-only directory or medium: read it as immutable
            raise UserError(f"cannot read the study store {path}: {one_line(exc)}") from None
        except sqlite3.DatabaseError as exc:
            raise UserError(f"the study store {path} is damaged: {one_line(exc)}") from None
        finally:
            connection.close()
        if problems != ["ok"]:
            raise UserError(f"the study store {path} is damaged: {' '.join(problems)}")
        if not tables >= REQUIRED_TABLES and not (new_store_ok and (not tables or tables & OPTUNA_TABLES)):
            # (a database holding some of Optuna's tables: another run is creating the schema right now)
            held = ", ".join(sorted(tables)[:5]) or "no tables"
            raise UserError(f"{path} is not an Optuna study store (a SQLite database holding {held})")
        if not versioned and not new_store_ok:
            # Optuna writes its schema version last: a first `run` interrupted while creating the store left this.
            raise UserError(
                f"the study store {path} was interrupted while being created: re-run the `hpo-astro run` command "
                "that created it to complete it"
            )
        return tables, param
    raise UserError(f"cannot read the study store {path}: {one_line(failure) if failure else 'unknown error'}")


def cannot_open_read_only(exc: sqlite3.Error) -> bool:
    message = str(exc).lower()
    return "unable to open" in message or "readonly" in message or "read-only" in message


def wal_file(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


def remove_read_leftovers(path: Path, had_wal: bool) -> None:
    """A read-only connection to a WAL database creates -wal and -shm files and, unable to checkpoint, leaves them
    when it closes. A plain connection that reads nothing and closes as the last one deletes them (its checkpoint
    of an empty log writes nothing). While another process has the database open, it is not the last and the files
    stay: they are that process's."""
    sidecars = [wal_file(path), path.with_name(path.name + "-shm")]
    if had_wal or not any(p.exists() for p in sidecars):
        return
    with contextlib.suppress(sqlite3.Error, OSError):
        connection = sqlite3.connect(f"file:{quote(os.path.abspath(path))}?mode=rw", uri=True, timeout=5)
        try:
            connection.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            connection.close()


def is_read_only(path: Path) -> bool:
    """Whether a store file is read-only for our purposes: no write permission bit on it or on its directory (a
    user's chmod is honoured even by root, whom the kernel would let write), not writable by us, or on a read-only
    mount."""
    directory = path.parent if str(path.parent) else Path(".")
    try:
        mode, dir_mode, flags = path.stat().st_mode, directory.stat().st_mode, os.statvfs(directory).f_flag
    except OSError:
        return True
    return (
        not mode & 0o222
        or not dir_mode & 0o222
        or bool(flags & os.ST_RDONLY)
        or not os.access(path, os.W_OK)
        or not os.access(directory, os.W_OK)
    )
