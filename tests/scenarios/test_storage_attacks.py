"""The study store under attack: read-only commands that must not write (another program's database, an empty or
text file, a damaged store, a read-only copy), concurrent first opens of a new SQLite store, a journal path that
points at a user's file, and trials of a journal store whose process was killed."""

from __future__ import annotations

import datetime
import gc
import hashlib
import json
import multiprocessing
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import types
from pathlib import Path

import optuna
import pytest
from helpers import assert_refused, invoke, patience
from optuna.storages.journal import JournalFileBackend, JournalStorage
from optuna.trial import TrialState

from hpo_astro.errors import UserError
from hpo_astro.results import evaluate
from hpo_astro.store import recovery as recovery_module
from hpo_astro.store import sqlite_file as sqlite_file_module
from hpo_astro.store import storage as storage_module
from hpo_astro.store.record import internal_attr, params_full
from hpo_astro.store.recovery import fail_dead_trials, process_token
from hpo_astro.store.storage import (
    close_store,
    open_existing_store,
    open_storage,
    read_store,
    writable_store,
)

ROOT = os.geteuid() == 0  # root writes through chmod: there the checks below look at the bytes instead

# --- helpers ----------------------------------------------------------------------------------------------------


def _snapshot(path: Path) -> tuple[str, list[str]]:
    """The file's bytes (sha256) and its directory's listing, once the connections an in-process run left open are
    closed (the last close of a WAL store checkpoints it, changing its bytes but not its content). Collecting a test
    process's heap costs a third of a second, so only where a WAL file says a connection may still be open."""
    if Path(f"{path}-wal").exists():
        gc.collect()
    digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "absent"
    return digest, sorted(p.name for p in path.parent.iterdir())


def _journal_mode(path: Path) -> str:
    """From the file header (bytes 18-19: 1 rollback journal, 2 WAL), without opening a connection."""
    return {b"\x01\x01": "delete", b"\x02\x02": "wal"}.get(path.read_bytes()[18:20], "?")


def _foreign_sqlite(path: Path) -> None:
    with sqlite3.connect(path) as con:
        con.execute("CREATE TABLE invoices (id INTEGER PRIMARY KEY, amount REAL)")
        con.execute("INSERT INTO invoices (amount) VALUES (12.5)")
    con.close()


def _damaged_copy(store: str, path: Path) -> None:
    """A real store with garbage over the pages after the schema: SQLite opens it, then finds it malformed."""
    source, copy = sqlite3.connect(store.removeprefix("sqlite:///")), sqlite3.connect(path)
    source.backup(copy)
    source.close()
    copy.close()
    data = bytearray(path.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    data[2 * page : len(data) - page] = b"\xa5" * (len(data) - 3 * page)
    path.write_bytes(bytes(data))


BAD_FILES = {
    "foreign sqlite": ("a SQLite database holding invoices", _foreign_sqlite),
    "empty file": ("an empty file", lambda path: path.write_bytes(b"")),
    "text file": ("not a SQLite database", lambda path: path.write_text("my notes\nbuy milk\n")),
}


def _reader(command: str, url: str, tmp_path: Path) -> list[object]:
    return {
        "status": ["status", "--storage", url],
        "compare": ["compare", "--storage", url],
        "report": ["report", "--storage", url, "--out", tmp_path / "report"],
        "export": ["export", "--storage", url, "--study", "random", "--out", tmp_path / "model"],
        "dashboard": ["dashboard", "--storage", url],
    }[command]


READERS = ("status", "compare", "report", "export", "dashboard")


@pytest.fixture
def no_dashboard(monkeypatch: pytest.MonkeyPatch) -> list[optuna.storages.BaseStorage]:
    """optuna-dashboard's server replaced by a call that reads the store it is given, instead of blocking."""
    from hpo_astro.results import dashboard as dashboard_module

    served: list[optuna.storages.BaseStorage] = []

    def run_server(storage: optuna.storages.BaseStorage, host: str, port: int, **_: object) -> None:
        served.append(storage)
        optuna.get_all_study_summaries(storage, include_best_trial=False)

    monkeypatch.setattr(dashboard_module, "run_server", run_server)
    return served


# --- 1. read-only commands never write ------------------------------------------------------------------------


@pytest.mark.parametrize("command", READERS)
@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_readers_refuse_a_file_that_is_not_a_store_and_leave_it_byte_identical(
    kind: str, command: str, tmp_path: Path, no_dashboard: list
) -> None:
    message, make = BAD_FILES[kind]
    db = tmp_path / "store" / "data.db"
    db.parent.mkdir()
    make(db)
    before = _snapshot(db)
    result = invoke(*_reader(command, f"sqlite:///{db}", tmp_path))
    assert_refused(result, f"{db} is not an Optuna study store ({message}")
    assert _snapshot(db) == before
    assert not no_dashboard and not (tmp_path / "report").exists() and not (tmp_path / "model").exists()


def test_readers_refuse_a_foreign_database_in_wal_mode_and_leave_no_wal_files(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    _foreign_sqlite(db)
    with sqlite3.connect(db) as con:
        con.execute("PRAGMA journal_mode=WAL")
    con.close()
    before = _snapshot(db)
    assert_refused(invoke("status", "--storage", f"sqlite:///{db}"), "is not an Optuna study store")
    assert_refused(invoke("compare", "--storage", f"sqlite:///{db}"), "is not an Optuna study store")
    assert _snapshot(db) == before and _journal_mode(db) == "wal"


@pytest.mark.parametrize("command", READERS)
def test_a_damaged_store_is_one_line_for_readers(command: str, store: str, tmp_path: Path, no_dashboard: list) -> None:
    db = tmp_path / "damaged" / "optuna.db"
    db.parent.mkdir()
    _damaged_copy(store, db)
    before = _snapshot(db)
    assert_refused(invoke(*_reader(command, f"sqlite:///{db}", tmp_path)), f"the study store {db} is damaged")
    assert _snapshot(db) == before


def test_run_refuses_another_programs_database_a_text_file_and_a_damaged_store(
    store: str, tmp_path: Path, small_file: Path
) -> None:
    files = {"foreign": tmp_path / "app.db", "text": tmp_path / "notes.db", "damaged": tmp_path / "damaged.db"}
    _foreign_sqlite(files["foreign"])
    files["text"].write_text("my notes\n")
    _damaged_copy(store, files["damaged"])
    messages = {
        "foreign": "is not an Optuna study store (a SQLite database holding invoices)",
        "text": "is not an Optuna study store (not a SQLite database)",
        "damaged": "is damaged",
    }
    for kind, db in files.items():
        before = _snapshot(db)
        result = invoke("run", "--n-trials", 1, "--data", small_file, "--max-epochs", 1, "--storage", f"sqlite:///{db}")
        assert_refused(result, messages[kind])
        assert_refused(invoke("storage-proxy", "--storage", f"sqlite:///{db}"), messages[kind])  # it serves writers
        assert _snapshot(db) == before, kind


def test_an_empty_file_becomes_a_store_for_run_only(tmp_path: Path) -> None:
    """`touch optuna.db` makes a 0-byte file, which SQLite treats as an empty database: `run` may start a store in
    it; the readers refuse it (it holds no studies, and reading never creates tables)."""
    db = tmp_path / "optuna.db"
    db.touch()
    assert_refused(invoke("compare", "--storage", f"sqlite:///{db}"), "is not an Optuna study store (an empty file)")
    assert db.stat().st_size == 0
    storage = open_storage(f"sqlite:///{db}", heartbeat_interval=None)
    close_store(storage)
    with sqlite3.connect(db) as con:
        tables = {name for (name,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    con.close()
    assert {"studies", "trials", "version_info"} <= tables
    assert invoke("status", "--storage", f"sqlite:///{db}").stdout.startswith("no studies")


def test_a_refused_run_leaves_an_existing_stores_journal_mode(store: str, small_file: Path) -> None:
    """`run` refused because the store's study of that name is another study: the store stays in rollback-journal
    mode and byte-identical (opening it for the run used to switch it to WAL first). New stores are WAL."""
    db = Path(store.removeprefix("sqlite:///"))
    with sqlite3.connect(db) as con:
        con.execute("PRAGMA journal_mode=DELETE")
    con.close()
    before = _snapshot(db)
    refused = invoke("run", "--study", "random", "--strategy", "tpe", "-n", 3, "--data", small_file, "--storage", store)
    assert refused.exit_code == 2, refused.output
    assert _journal_mode(db) == "delete" and _snapshot(db) == before


def test_readers_never_switch_the_journal_mode(store: str) -> None:
    """A valid store in rollback-journal mode (made by another tool, or copied): reading it must not turn it into
    WAL mode; compare writes its cache (the store is writable) without switching either."""
    db = Path(store.removeprefix("sqlite:///"))
    with sqlite3.connect(db) as con:
        con.execute("PRAGMA journal_mode=DELETE")
    con.close()
    before = _snapshot(db)
    status = invoke("status", "--storage", store)
    assert status.exit_code == 0 and "random" in status.stdout
    assert _snapshot(db) == before and _journal_mode(db) == "delete"
    assert invoke("compare", "--storage", store, "--study", "random").exit_code == 0
    assert _journal_mode(db) == "delete" and _snapshot(db)[1] == before[1]
    assert evaluate.CACHE_ATTR in optuna.load_study(study_name="random", storage=store).user_attrs


def test_readers_work_on_a_read_only_store_and_leave_it_untouched(
    store: str, tmp_path: Path, no_dashboard: list
) -> None:
    """A copy made read-only (chmod 444 on the file, 555 on its folder): status, compare (which skips writing its
    cache), report, export and the dashboard still work, and the file and folder are exactly as they were. As root
    the kernel ignores those modes, so what is checked is that nothing was written (bytes, journal mode, files)."""
    db = Path(store.removeprefix("sqlite:///"))
    folder = db.parent
    mode = _journal_mode(db)
    before = _snapshot(db)
    db.chmod(0o444)
    folder.chmod(0o555)
    out = tmp_path.parent / f"{tmp_path.name}-out"  # outputs go outside the read-only folder
    try:
        status = invoke("status", "--storage", store)
        assert status.exit_code == 0, status.output
        assert "random" in status.stdout and "best params of random" in status.stdout
        compared = invoke("compare", "--storage", store, "--study", "random", "--format", "json")
        assert compared.exit_code == 0, compared.output
        assert json.loads(compared.stdout)["studies"][0]["study"] == "random"
        report = invoke("report", "--storage", store, "--study", "random", "--out", out / "report")
        assert report.exit_code == 0, report.output
        exported = invoke("export", "--storage", store, "--study", "random", "--out", out / "model")
        assert exported.exit_code == 0, exported.output
        assert invoke("dashboard", "--storage", store).exit_code == 0 and len(no_dashboard) == 1
    finally:
        folder.chmod(0o755)
        db.chmod(0o644)
        shutil.rmtree(out, ignore_errors=True)
    assert _snapshot(db) == before and _journal_mode(db) == mode
    assert evaluate.CACHE_ATTR not in optuna.load_study(study_name="random", storage=store).user_attrs


def test_open_existing_store_is_read_only_and_cleans_up(store: str) -> None:
    db = Path(store.removeprefix("sqlite:///"))
    before = _snapshot(db)
    with read_store(store) as storage:
        study = optuna.load_study(study_name="random", storage=storage)
        assert len(study.trials) == 3
        with pytest.raises(optuna.exceptions.StorageInternalError) as info:
            study.set_user_attr("x", 1)  # a reader's handle cannot write, whatever a caller tries
        assert "readonly database" in str(info.value.__cause__)
    assert _snapshot(db) == before  # and no -wal/-shm left behind


def test_the_compare_cache_goes_through_a_separate_writable_handle(store: str) -> None:
    db = Path(store.removeprefix("sqlite:///"))
    handle = writable_store(store)
    assert handle is not None
    close_store(handle)
    db.chmod(0o444)  # read-only by intent: honoured even by root
    try:
        assert writable_store(store) is None
    finally:
        db.chmod(0o644)
    assert writable_store(f"sqlite:///{db.parent / 'missing.db'}") is None
    assert not (db.parent / "missing.db").exists()


def test_the_dashboard_reads_through_open_existing_store(
    store: str, no_dashboard: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened: list[str] = []
    original = storage_module.open_existing_store

    def spy(url: str) -> optuna.storages.BaseStorage:
        opened.append(url)
        return original(url)

    monkeypatch.setattr(storage_module, "open_existing_store", spy)
    db = Path(store.removeprefix("sqlite:///"))
    before = _snapshot(db)
    assert invoke("dashboard", "--storage", store).exit_code == 0
    assert opened == [store] and len(no_dashboard) == 1
    assert _snapshot(db) == before


# --- 2. concurrent first opens of a new SQLite store ----------------------------------------------------------


def _open_at_once(url: str, barrier: multiprocessing.synchronize.Barrier, results: multiprocessing.Queue) -> None:
    barrier.wait()
    try:
        close_store(open_storage(url, heartbeat_interval=None))
        results.put("ok")
    except UserError as exc:
        results.put(str(exc))


@pytest.mark.parametrize("flock", [True, False])
def test_concurrent_first_opens_of_a_new_store_all_succeed(
    flock: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Several processes open the same new SQLite file at once (4 workers starting): none may fail. Without flock
    (some network file systems) the losers of the schema race retry."""
    if not flock:

        def no_flock(fd: int, operation: int) -> None:
            raise OSError(38, "Function not implemented")

        monkeypatch.setattr(sqlite_file_module.fcntl, "flock", no_flock)
    context = multiprocessing.get_context("fork")  # the children inherit the patch
    n = 4
    for round_ in range(5):
        url = f"sqlite:///{tmp_path / f'new-{round_}.db'}"
        barrier, results = context.Barrier(n), context.Queue()
        procs = [context.Process(target=_open_at_once, args=(url, barrier, results)) for _ in range(n)]
        for p in procs:
            p.start()
        outcomes = [results.get(timeout=patience(120)) for _ in procs]
        for p in procs:
            p.join(timeout=patience(60))
        assert outcomes == ["ok"] * n, outcomes
        with read_store(url) as storage:
            assert optuna.get_all_study_summaries(storage, include_best_trial=False) == []


# --- 3a. a journal path that is not a journal -----------------------------------------------------------------


@pytest.mark.parametrize(
    "content", ["my notes\nbuy milk\n", '{"not": "a journal record"}\n', "[1, 2]\n", "\x00\x01binary"]
)
def test_a_journal_path_on_a_users_file_is_refused_untouched(content: str, tmp_path: Path, small_file: Path) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_text(content)
    before = _snapshot(notes)
    url = f"journal:{notes}"
    run = invoke("run", "--n-trials", 1, "--data", small_file, "--max-epochs", 1, "--storage", url)
    assert_refused(run, f"{notes} is not an Optuna study store (not an Optuna journal file)")
    for command in ("status", "compare"):
        assert_refused(invoke(command, "--storage", url), "not an Optuna journal file")
    with pytest.raises(UserError, match="not an Optuna journal"):
        open_existing_store(url)
    assert _snapshot(notes) == before


def test_an_empty_or_real_journal_is_accepted(tmp_path: Path) -> None:
    log = tmp_path / "optuna.log"
    log.touch()  # Optuna creates the file before its first record
    assert invoke("status", "--storage", f"journal:{log}").stdout.startswith("no studies")
    storage = open_storage(f"journal:{log}")
    optuna.create_study(study_name="s", storage=storage)
    assert "s" in invoke("status", "--storage", f"journal:{log}").stdout


# --- 3b. dead trials of a journal store -----------------------------------------------------------------------


def _dead_pid() -> int:
    proc = subprocess.Popen(["sleep", "60"])
    proc.kill()
    proc.wait()
    return proc.pid


def _journal_study(tmp_path: Path) -> optuna.Study:
    storage = JournalStorage(JournalFileBackend(str(tmp_path / "optuna.log")))
    return optuna.create_study(study_name="j", storage=storage, direction="maximize")


def _running(study: optuna.Study, lr: float, **attrs: object) -> optuna.Trial:
    trial = study.ask()
    trial.suggest_categorical("lr", [1e-3, 1e-2])
    trial.set_user_attr("params_full", {"lr": lr})
    for key, value in attrs.items():
        trial.set_user_attr(key, value)
    return trial


def test_process_token_is_the_start_time_of_a_live_process() -> None:
    assert process_token() is not None and process_token() == process_token(os.getpid())
    assert process_token(_dead_pid()) is None
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        token = process_token(sleeper.pid)
        assert token is not None and token.isdigit() and token != process_token(1)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_fail_dead_trials_fails_and_requeues_a_dead_local_worker_only(tmp_path: Path) -> None:
    host = socket.gethostname()
    study = _journal_study(tmp_path)
    dead = _running(study, 1e-3, worker=f"{host}:{_dead_pid()}")
    me = _running(study, 1e-3, worker=f"{host}:{os.getpid()}", worker_start=process_token())
    remote = _running(study, 1e-3, worker="another-node:12345")
    reused = _running(study, 1e-3, worker=f"{host}:{os.getpid()}", worker_start="1")  # our pid, another start
    fresh = _running(study, 1e-3)  # no worker yet: the sampler may still be choosing
    assert fail_dead_trials(study, grace_period=30) == [dead.number, reused.number]
    trials = {t.number: t for t in study.get_trials()}
    assert trials[dead.number].state == TrialState.FAIL and trials[reused.number].state == TrialState.FAIL
    for alive in (me, remote, fresh):
        assert trials[alive.number].state == TrialState.RUNNING
    queued = study.get_trials(states=(TrialState.WAITING,))
    assert sorted(t.system_attrs["failed_trial"] for t in queued) == [dead.number, reused.number]
    for t in queued:
        assert t.params == trials[t.system_attrs["failed_trial"]].params
        assert internal_attr(t, "worker") is None and internal_attr(t, "worker_start") is None  # the next sets its own
        assert params_full(t) == {"lr": 1e-3}
    assert fail_dead_trials(study, grace_period=30) == []  # nothing is failed or queued twice


def test_fail_dead_trials_fails_a_trial_that_never_started_its_objective(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    study = _journal_study(tmp_path)
    sampled = _running(study, 1e-2)  # killed after recording its parameters: worth a retry
    bare = study.ask()  # killed while the sampler chose: nothing to retry
    assert fail_dead_trials(study, grace_period=1) == []  # younger than 60 s

    class Later(datetime.datetime):
        @classmethod
        def now(cls, tz: datetime.tzinfo | None = None) -> datetime.datetime:  # type: ignore[override]
            return datetime.datetime.now(tz) + datetime.timedelta(seconds=61)

    monkeypatch.setattr(
        recovery_module, "datetime", types.SimpleNamespace(datetime=Later, timedelta=datetime.timedelta)
    )
    assert fail_dead_trials(study, grace_period=1) == [sampled.number, bare.number]
    (queued,) = study.get_trials(states=(TrialState.WAITING,))
    assert queued.system_attrs["failed_trial"] == sampled.number and params_full(queued) == {"lr": 1e-2}


def _journal_states(path: Path, study: str) -> list[optuna.trial.FrozenTrial]:
    try:
        return optuna.load_study(study_name=study, storage=JournalStorage(JournalFileBackend(str(path)))).trials
    except (KeyError, ValueError):
        return []  # not created yet, or a line being written


def test_a_run_killed_on_a_journal_store_resumes_to_exactly_the_budget(tmp_path: Path, small_file: Path) -> None:
    """kill -9 mid-training on a journal store (no heartbeat in Optuna): re-running the same command used to wait
    forever on the dead trial; it must fail and re-queue it, and finish with exactly the budget."""
    log = tmp_path / "optuna.log"
    config = tmp_path / "journal.toml"
    config.write_text(
        f'strategy = "random"\nstudy = "killed"\nn_trials = 2\nmax_epochs = 4\nseed = 3\n'
        f'storage = "journal:{log}"\ndata = "{small_file}"\n'
        "[space]\nconv_layers = [1]\nfc_layers = [1]\nfc_width = [32]\nlr = [1e-3, 1e-2]\nbatch_size = [64]\n"
    )
    cmd = [sys.executable, "-m", "hpo_astro.cli", "run", "--config", str(config), "--threads", "1"]
    env = {**os.environ, "HPO_ASTRO_CACHE": os.environ["HPO_ASTRO_CACHE"]}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + patience(120)
    while time.time() < deadline and proc.poll() is None:  # until a trial has checkpointed an epoch
        trials = _journal_states(log, "killed")
        if any(t.state == TrialState.RUNNING and internal_attr(t, "checkpoint") for t in trials):
            break
        time.sleep(0.1)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert [t.state for t in _journal_states(log, "killed")] == [TrialState.RUNNING]
    done = invoke(*cmd[3:])  # the same command, in this process (a process start costs seconds of imports)
    assert done.exit_code == 0, done.output[-2000:]
    trials = _journal_states(log, "killed")
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == 2 and not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    assert trials[0].state == TrialState.FAIL
    (retry,) = [t for t in trials if t.system_attrs.get("failed_trial") == 0]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["resumed_from_epoch"] >= 1


def test_a_store_that_mode_ro_cannot_open_is_read_as_immutable(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A WAL database in a directory the user cannot write (a read-only medium, another user's folder): SQLite's
    mode=ro needs to create the -shm file there and fails ("attempt to write a readonly database"), so it is read
    with immutable=1. Simulated by failing mode=ro connections (as root the kernel would let mode=ro through)."""
    real_connect = sqlite3.connect

    class NoModeRo(sqlite3.Connection):
        def execute(self, *args: object) -> sqlite3.Cursor:  # type: ignore[override]
            raise sqlite3.OperationalError("attempt to write a readonly database")

    def connect(database: str, *args: object, **kwargs: object) -> sqlite3.Connection:
        if "mode=ro" in str(database):
            return real_connect(database, *args, factory=NoModeRo, **kwargs)  # type: ignore[misc]
        return real_connect(database, *args, **kwargs)  # type: ignore[misc]

    monkeypatch.setattr(sqlite_file_module.sqlite3, "connect", connect)
    db = Path(store.removeprefix("sqlite:///"))
    before = _snapshot(db)
    with read_store(store) as storage:
        assert storage.engine.url.query["immutable"] == "1"  # type: ignore[attr-defined]
        monkeypatch.undo()
        assert len(optuna.load_study(study_name="tpe", storage=storage).trials) == 3
    assert _snapshot(db) == before
