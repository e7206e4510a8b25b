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
import os
import random
import time
import warnings
import weakref
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import optuna

from hpo_astro.errors import UserError, one_line
from hpo_astro.io import check_writable
from hpo_astro.store.journal import open_journal
from hpo_astro.store.recovery import retry_callback
from hpo_astro.store.sqlite_file import (
    SQLITE_BUSY_TIMEOUT,
    creation_lock,
    enable_wal,
    is_read_only,
    remove_read_leftovers,
    sqlite_pragmas,
    sqlite_tables,
    wal_file,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

DEFAULT_HEARTBEAT = 10  # seconds between heartbeats of a running trial
DEFAULT_GRACE = 30  # seconds without heartbeat after which a running trial counts as dead
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
        return open_journal(url.removeprefix("journal:"), create=True)
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
        check_writable(file)
        if file.exists():
            had_wal = wal_file(file).exists()
            try:
                tables, _ = sqlite_tables(file, new_store_ok=True)  # refuses another program's database first
            except UserError:
                remove_read_leftovers(file, had_wal)
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
        with creation_lock(file):
            if sqlite and new_store:  # an existing store keeps its journal mode: a refused run must not change it
                enable_wal(url, engine_kwargs)
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)

    storage = _construct(url, build, attempts=CREATE_ATTEMPTS if sqlite else 1)
    if sqlite:
        event.listen(storage.engine, "connect", sqlite_pragmas)
    return storage


def _construct(url: str, build: Any, attempts: int = 1) -> Any:
    """Build an RDBStorage; its errors become one-line UserErrors. A new SQLite store opened by several processes
    at once (without `creation_lock`): each checks that the tables are missing, then creates them, and all but one
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
    return one_line(exc)


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
        return open_journal(url.removeprefix("journal:"), create=False)
    if url.startswith("grpc://"):
        return _grpc(url)
    parsed = _parse(url)
    refuse_in_memory(url)
    file = store_file(url)
    if file is None:  # a database server: never create tables in it
        return _construct(url, lambda: optuna.storages.RDBStorage(url, skip_table_creation=True))
    if not file.is_file():
        raise UserError(f"no study store at {file}: run `hpo-astro run` first, or pass --storage URL")
    had_wal = wal_file(file).exists()
    try:
        _, param = sqlite_tables(file)
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
        remove_read_leftovers(file, had_wal)
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
        remove_read_leftovers(*opened)


@contextlib.contextmanager
def read_store(url: str) -> Iterator[optuna.storages.BaseStorage]:
    """`open_existing_store` for the duration of a `with` block."""
    storage = open_existing_store(url)
    try:
        yield storage
    finally:
        close_store(storage)


def writable_store(url: str) -> optuna.storages.BaseStorage | None:
    """A short-lived handle to write to an existing, valid store (the compare cache), or None when the store or its
    file system is read-only or it cannot be opened for writing. It never creates tables or switches the journal
    mode. Close it with `close_store`."""
    file = store_file(url)
    if file is not None and (not file.is_file() or is_read_only(file)):
        return None
    try:
        if url.startswith("journal:"):
            return open_journal(url.removeprefix("journal:"), create=False)
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
