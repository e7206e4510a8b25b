"""Opening an Optuna study store, and the artifact store beside it.

URLs:
* any SQLAlchemy URL (`sqlite:///optuna.db`, `postgresql://user@host/db`, ...) -> `RDBStorage` with a heartbeat, so
  a trial whose process died is failed after `grace_period` seconds and re-queued with the same parameters;
  SQLite runs in WAL mode with a long busy timeout, so concurrent workers wait instead of failing with
  "database is locked";
* `journal:PATH` -> Optuna's `JournalStorage` on a log file (shared file systems; no heartbeat in Optuna);
* `grpc://HOST:PORT` -> Optuna's `GrpcStorageProxy` to a `hpo-astro storage-proxy` server (many workers).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import optuna

from hpo_astro.errors import UserError

DEFAULT_HEARTBEAT = 10  # seconds between heartbeats of a running trial
DEFAULT_GRACE = 30  # seconds without heartbeat after which a running trial counts as dead
MAX_RETRY = 20  # retries of one trial after its process died (a trial that kills its worker stops eventually)
SQLITE_BUSY_TIMEOUT = 120  # seconds a SQLite writer waits for the lock


def retry_callback() -> optuna.storages.RetryHeartbeatStaleTrialCallback:
    """Re-queue a dead trial with its parameters, user attributes (its checkpoint) and intermediate values."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY, inherit_intermediate_values=True)


def open_storage(
    url: str, heartbeat_interval: int | None = DEFAULT_HEARTBEAT, grace_period: int | None = DEFAULT_GRACE
) -> optuna.storages.BaseStorage:
    """Open an Optuna storage; a bad, unreachable or unwritable one is a UserError and nothing is written."""
    if url.startswith("journal:"):
        return _journal(url.removeprefix("journal:"))
    if url.startswith("grpc://"):
        return _grpc(url)
    return _rdb(url, heartbeat_interval, grace_period)


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


def open_existing_store(url: str) -> optuna.storages.BaseStorage:
    """Open a study store to read results. A SQLite or journal file that does not exist is an error: a command
    that only reads never creates a store."""
    file = store_file(url)
    if file is not None and not file.is_file():
        raise UserError(f"no study store at {file}: run `hpo-astro run` first, or pass --storage URL")
    return open_storage(url)


def _rdb(url: str, heartbeat_interval: int | None, grace_period: int | None) -> optuna.storages.RDBStorage:
    from sqlalchemy import event
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        parsed = make_url(url)
    except ArgumentError:
        raise UserError(
            f"malformed storage URL {url!r}; expected e.g. sqlite:///optuna.db, postgresql://user@host/db, "
            "journal:optuna.log or grpc://host:port"
        ) from None
    sqlite = parsed.get_backend_name() == "sqlite"
    engine_kwargs: dict[str, Any] = {}
    if sqlite and parsed.database not in (None, "", ":memory:"):
        _check_writable(Path(parsed.database))
    if sqlite:
        engine_kwargs["connect_args"] = {"timeout": SQLITE_BUSY_TIMEOUT}
    heartbeat: dict[str, Any] = {}
    if heartbeat_interval:
        heartbeat = {
            "heartbeat_interval": heartbeat_interval,
            "grace_period": grace_period or 3 * heartbeat_interval,
            "heartbeat_stale_trial_callback": retry_callback(),
        }
    try:
        if sqlite:
            _enable_wal(url, engine_kwargs)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            storage = optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, **heartbeat)
    except ImportError as exc:
        raise UserError(f"storage URL {url!r} needs a database driver that is not installed: {exc}") from None
    except UserError:
        raise
    except Exception as exc:  # sqlalchemy OperationalError and friends: unreachable or unusable database
        reason = " ".join(str(getattr(exc, "orig", exc)).split())
        raise UserError(f"cannot open storage {url!r}: {reason}") from None
    if sqlite:
        event.listen(storage.engine, "connect", _sqlite_pragmas)
    return storage


def _check_writable(path: Path) -> None:
    directory = path.parent if str(path.parent) else Path(".")
    if not directory.is_dir():
        raise UserError(f"storage directory does not exist: {directory}")
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


def _journal(path: str) -> optuna.storages.BaseStorage:
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    if not path:
        raise UserError("journal storage needs a path: journal:PATH")
    _check_writable(Path(path))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return JournalStorage(JournalFileBackend(path))


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
    except Exception as exc:
        raise UserError(f"cannot reach the storage proxy at {url}: {exc}") from None


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
