"""Opening an Optuna study store, and the artifact store beside it.

URLs:
* any SQLAlchemy URL (`sqlite:///optuna.db`, `postgresql://user@host/db`, ...) -> `RDBStorage` with a heartbeat, so
  a trial whose process died is failed after `grace_period` seconds and re-queued with the same parameters;
  SQLite runs in WAL mode with a long busy timeout, so concurrent workers wait instead of failing with
  "database is locked";
* `journal:PATH` -> Optuna's `JournalStorage` on a log file (shared file systems). Optuna has no heartbeat there:
  `hpo_astro.store.recovery.fail_dead_trials` fails and re-queues a trial whose worker process on this machine is gone;
* `grpc://HOST:PORT` -> Optuna's `GrpcStorageProxy` to a `hpo-astro storage-proxy` server (many workers).

Two ways in: `open_storage` for the commands that write (run, worker, storage-proxy), which refuses to turn
another program's file into a study store; `open_existing_store` (or `read_store`) for those that only read
(status, compare, report, export, dashboard), which opens a SQLite file read-only and leaves it byte-identical.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import random
import sqlite3
import time
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import optuna

from hpo_astro.errors import UserError
from hpo_astro.store.recovery import retry_callback

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

DEFAULT_HEARTBEAT = 10  # seconds between heartbeats of a running trial
DEFAULT_GRACE = 30  # seconds without heartbeat after which a running trial counts as dead
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
JOURNAL_PROBE = 1 << 20  # bytes read to find a journal's first line (a create-study record: a few hundred bytes)
CREATE_ATTEMPTS = 5  # first opens of a new SQLite store racing to create the schema: the loser retries

# Read-only SQLite handles -> (file, whether its -wal file existed before we opened it), for close_store.
_read_handles: weakref.WeakKeyDictionary[Any, tuple[Path, bool]] = weakref.WeakKeyDictionary()


# --- opening a store to write -----------------------------------------------------------------------------------


def open_storage(
    url: str, heartbeat_interval: int | None = DEFAULT_HEARTBEAT, grace_period: int | None = DEFAULT_GRACE
) -> optuna.storages.BaseStorage:
    """Open an Optuna storage to run studies in, creating it when it does not exist. A bad, unreachable,
    unwritable or damaged store, or a file that is not an Optuna store (another program's database, a text file),
    is a UserError and nothing is written. An empty (0-byte) file, what `touch optuna.db` makes, becomes a store."""
    if url.startswith("journal:"):
        return _journal(url.removeprefix("journal:"), create=True)
    if url.startswith("grpc://"):
        return _grpc(url)
    refuse_in_memory(url)
    return _rdb(url, heartbeat_interval, grace_period)


def refuse_in_memory(url: str) -> None:
    """An in-memory SQLite URL keeps nothing after the command and cannot be shared by workers or the heartbeat's
    own connection: refused in one line (it used to fail with a traceback from Optuna's commit)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        return
    if parsed.get_backend_name() == "sqlite" and parsed.database in (None, "", ":memory:"):
        raise UserError(
            f"storage {url!r} is an in-memory SQLite database, which keeps nothing: give a file, e.g. "
            "sqlite:///optuna.db"
        )


def store_file(url: str) -> Path | None:
    """The local file behind a SQLite or journal URL; None for a server, in-memory SQLite or a malformed URL."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    if url.startswith("journal:"):
        return Path(url.removeprefix("journal:"))
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None  # open_storage words the error
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        return Path(parsed.database)
    return None


def _parse(url: str) -> URL:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url)
    except ArgumentError:
        raise UserError(
            f"malformed storage URL {url!r}; expected e.g. sqlite:///optuna.db, postgresql://user@host/db, "
            "journal:optuna.log or grpc://host:port"
        ) from None


def _rdb(url: str, heartbeat_interval: int | None, grace_period: int | None) -> optuna.storages.RDBStorage:
    from sqlalchemy import event

    parsed = _parse(url)
    sqlite = parsed.get_backend_name() == "sqlite"
    file = store_file(url) if sqlite else None
    engine_kwargs: dict[str, Any] = {}
    new_store = True
    if file is not None:
        _check_writable(file)
        if file.exists():
            had_wal = _wal_file(file).exists()
            try:
                tables, _ = _sqlite_tables(file, new_store_ok=True)  # refuses another program's database first
            except UserError:
                _remove_read_leftovers(file, had_wal)
                raise
            new_store = not tables
    if sqlite:
        engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT}
    heartbeat: dict[str, Any] = {}
    if heartbeat_interval:
        heartbeat = {
            "heartbeat_interval": heartbeat_interval,
            "grace_period": grace_period or 3 * heartbeat_interval,
            "heartbeat_stale_trial_callback": retry_callback(),
        }

    def build() -> optuna.storages.RDBStorage:
        with _creation_lock(file):
            if sqlite and new_store:  # an existing store keeps its journal mode: a refused run must not change it
                _enable_wal(url, engine_kwargs)
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)

    storage = _construct(url, build, attempts=CREATE_ATTEMPTS if sqlite else 1)
    if sqlite:
        event.listen(storage.engine, "connect", _sqlite_pragmas)
    return storage


@contextlib.contextmanager
def _creation_lock(file: Path | None) -> Iterator[None]:
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


def _construct(url: str, build: Any, attempts: int = 1) -> Any:
    """Build an RDBStorage; its errors become one-line UserErrors. A new SQLite store opened by several processes
    at once (without `_creation_lock`): each checks that the tables are missing, then creates them, and all but one
    fail with "table ... already exists", a duplicate version row, or "database is locked" (a read snapshot that
    cannot become a write): the schema is complete by then, so the losers retry."""
    from sqlalchemy.exc import IntegrityError, OperationalError, SQLAlchemyError

    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return build()
        except ImportError as exc:
            raise UserError(f"storage URL {url!r} needs a database driver that is not installed: {exc}") from None
        except UserError:
            raise
        except (OperationalError, IntegrityError) as exc:
            racing = isinstance(exc, IntegrityError) or "already exists" in str(exc) or "locked" in str(exc)
            if not racing or attempt == attempts - 1:
                raise UserError(f"cannot open storage {url!r}: {_reason(exc)}") from None
            time.sleep(random.uniform(0.05, 0.3))
        except (SQLAlchemyError, ValueError, RuntimeError, optuna.exceptions.StorageInternalError) as exc:
            # unreachable, unusable, damaged, too new (Optuna wraps a failed first commit in StorageInternalError)
            raise UserError(f"cannot open storage {url!r}: {_reason(exc)}") from None
    raise AssertionError("unreachable")  # pragma: no cover


def _reason(exc: BaseException) -> str:
    if isinstance(exc, optuna.exceptions.StorageInternalError) and exc.__cause__ is not None:
        exc = exc.__cause__  # Optuna's generic "an exception is raised during the commit": say which
    return " ".join(str(getattr(exc, "orig", None) or exc).split())


def _check_writable(path: Path) -> None:
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise UserError(f"storage directory does not exist: {directory}")
    if path.exists() and not path.is_file():
        raise UserError(f"storage {path} is not a file")
    if (path.exists() and not os.access(path, os.W_OK)) or (not path.exists() and not os.access(directory, os.W_OK)):
        raise UserError(f"storage is not writable: {path}")


def _sqlite_pragmas(connection: Any, _record: Any) -> None:
    cursor = connection.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT * 1000}")
    cursor.execute("PRAGMA synchronous = NORMAL")  # safe with WAL: a crash loses at most the last commit
    cursor.close()


def _enable_wal(url: str, engine_kwargs: dict[str, Any]) -> None:
    """Switch the SQLite file to write-ahead logging (persistent): readers no longer block the writer."""
    import sqlalchemy

    engine = sqlalchemy.create_engine(url, **engine_kwargs)
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("PRAGMA journal_mode=WAL")
    finally:
        engine.dispose()


# --- what a file is, read without writing -----------------------------------------------------------------------


def _sqlite_tables(path: Path, new_store_ok: bool = False) -> tuple[set[str], str]:
    """The tables of the SQLite file at `path` and the URI parameter that reads it ("mode=ro", or "immutable=1"
    where the file's directory is read-only so that a WAL database cannot be opened with mode=ro), through a
    read-only connection, after an integrity check. Anything but an Optuna store is a UserError; with
    `new_store_ok` (run) a 0-byte file or a database without any table is accepted as a store to create.

    A read-only connection to a WAL database creates its -wal/-shm files: the caller removes them (see
    `_remove_read_leftovers`)."""
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
            if _cannot_open_read_only(exc):
                continue  # a WAL database on a read-only directory or medium: read it as immutable
            raise UserError(f"cannot read the study store {path}: {_reason(exc)}") from None
        except sqlite3.DatabaseError as exc:
            raise UserError(f"the study store {path} is damaged: {_reason(exc)}") from None
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
    raise UserError(f"cannot read the study store {path}: {_reason(failure) if failure else 'unknown error'}")


def _cannot_open_read_only(exc: sqlite3.Error) -> bool:
    message = str(exc).lower()
    return "unable to open" in message or "readonly" in message or "read-only" in message


def _check_journal(path: Path) -> None:
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


def _journal_backend(path: str) -> optuna.storages.journal.BaseJournalBackend:
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


def _journal(path: str, create: bool) -> optuna.storages.BaseStorage:
    from optuna.storages.journal import JournalStorage

    if not path:
        raise UserError("journal storage needs a path: journal:PATH")
    file = Path(path)
    if create:
        _check_writable(file)
    elif not file.is_file():
        raise UserError(f"no study store at {file}: run `hpo-astro run` first, or pass --storage URL")
    if file.exists():
        _check_journal(file)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return JournalStorage(_journal_backend(path))
    except OSError as exc:
        raise UserError(f"cannot open the journal {path}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:  # not JSON, a record Optuna cannot replay
        raise UserError(f"the journal {path} is damaged: {_reason(exc)}") from None


def _grpc(url: str) -> optuna.storages.BaseStorage:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    if not parts.hostname or not parts.port:
        raise UserError(f"malformed gRPC storage URL {url!r}; expected grpc://HOST:PORT")
    try:
        from optuna.storages import GrpcStorageProxy

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            proxy = GrpcStorageProxy(host=parts.hostname, port=parts.port)
        proxy.wait_server_ready(timeout=10)
        return proxy
    except ImportError as exc:
        raise UserError(f"gRPC storage needs grpcio: pip install 'hpo-astro[grpc]' ({exc})") from None
    except (ConnectionError, OSError, ValueError) as exc:  # wait_server_ready: ConnectionError on timeout
        raise UserError(f"cannot reach the storage proxy at {url}: {exc}") from None


# --- opening a store to read ------------------------------------------------------------------------------------


def open_existing_store(url: str) -> optuna.storages.BaseStorage:
    """Open a study store to read results, without writing to it: a SQLite file through a read-only connection
    (its journal mode left alone, no heartbeat, no tables created), after checking that it is an Optuna store;
    a journal file after checking that it is one. A missing file is an error: a command that only reads never
    creates a store. Pass the handle to `close_store` when done (or use `read_store`)."""
    if url.startswith("journal:"):
        return _journal(url.removeprefix("journal:"), create=False)
    if url.startswith("grpc://"):
        return _grpc(url)
    parsed = _parse(url)
    refuse_in_memory(url)
    file = store_file(url)
    if file is None:  # a database server: never create tables in it
        return _construct(url, lambda: optuna.storages.RDBStorage(url, skip_table_creation=True))
    if not file.is_file():
        raise UserError(f"no study store at {file}: run `hpo-astro run` first, or pass --storage URL")
    had_wal = _wal_file(file).exists()
    try:
        _, param = _sqlite_tables(file)
        key, value = param.split("=")
        read_only = parsed.set(database="file:" + quote(os.path.abspath(file)), query={key: value, "uri": "true"})
        ro_url = read_only.render_as_string(hide_password=False)
        storage = _construct(
            url,
            lambda: optuna.storages.RDBStorage(
                ro_url,
                engine_kwargs={"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT}},
                skip_table_creation=True,
            ),
        )
    except BaseException:
        _remove_read_leftovers(file, had_wal)
        raise
    _read_handles[storage] = (file, had_wal)
    return storage


def close_store(storage: optuna.storages.BaseStorage) -> None:
    """Close a store's connections; for a SQLite file opened by `open_existing_store`, also remove the -wal/-shm
    files that reading a WAL database created, so the directory is left as it was."""
    engine = getattr(storage, "engine", None)
    if engine is not None:
        with contextlib.suppress(Exception):
            storage.remove_session()  # type: ignore[attr-defined]
        engine.dispose()
    opened = _read_handles.pop(storage, None)
    if opened is not None:
        _remove_read_leftovers(*opened)


@contextlib.contextmanager
def read_store(url: str) -> Iterator[optuna.storages.BaseStorage]:
    """`open_existing_store` for the duration of a `with` block."""
    storage = open_existing_store(url)
    try:
        yield storage
    finally:
        close_store(storage)


def _wal_file(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


def _remove_read_leftovers(path: Path, had_wal: bool) -> None:
    """A read-only connection to a WAL database creates -wal and -shm files and, unable to checkpoint, leaves them
    when it closes. A plain connection that reads nothing and closes as the last one deletes them (its checkpoint
    of an empty log writes nothing). While another process has the database open, it is not the last and the files
    stay: they are that process's."""
    sidecars = [_wal_file(path), path.with_name(path.name + "-shm")]
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


def writable_store(url: str) -> optuna.storages.BaseStorage | None:
    """A short-lived handle to write to an existing, valid store (the compare cache), or None when the store or its
    file system is read-only or it cannot be opened for writing. It never creates tables or switches the journal
    mode. Close it with `close_store`."""
    file = store_file(url)
    if file is not None and (not file.is_file() or is_read_only(file)):
        return None
    try:
        if url.startswith("journal:"):
            return _journal(url.removeprefix("journal:"), create=False)
        if url.startswith("grpc://"):
            return _grpc(url)
        kwargs: dict[str, Any] = {}
        if file is not None:
            kwargs["engine_kwargs"] = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT}}
        return _construct(url, lambda: optuna.storages.RDBStorage(url, skip_table_creation=True, **kwargs))
    except UserError:
        return None


# --- artifacts --------------------------------------------------------------------------------------------------


def artifact_dir(url: str, override: str | os.PathLike | None = None) -> Path:
    """Where checkpoints and best weights go: beside a SQLite or journal file (`<file>.artifacts/`), else
    `./hpo-astro-artifacts/` (put it on a file system every worker sees)."""
    if override:
        return Path(override)
    if url.startswith("journal:"):
        return Path(url.removeprefix("journal:") + ".artifacts")
    if url.startswith("sqlite:///") and not url.endswith(":memory:"):
        return Path(url.removeprefix("sqlite:///") + ".artifacts")
    return Path("hpo-astro-artifacts")


def find_artifact_dir(recorded: str | None, url: str | None = None) -> Path | None:
    """A study's artifact folder, for reading: the one it recorded when that exists, else the default one for
    `url` (a SQLite or journal file copied to another machine together with its `<file>.artifacts/` folder)."""
    for candidate in (recorded, artifact_dir(url) if url else None):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    return None


def artifact_store(directory: Path) -> optuna.artifacts.FileSystemArtifactStore:
    directory.mkdir(parents=True, exist_ok=True)
    return optuna.artifacts.FileSystemArtifactStore(str(directory))
