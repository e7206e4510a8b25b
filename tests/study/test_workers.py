"""Crash safety and parallel workers with real processes: SIGKILL chaos, 4 workers on one SQLite file,
PostgreSQL (started by .ci/run in CI), and rebuilding a study's configuration for joining workers."""

from __future__ import annotations

import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import optuna
import pytest
from helpers import assert_refused, invoke, patience, slowness
from optuna.trial import TrialState

from hpo_astro.core.space import SearchSpace
from hpo_astro.store.record import CHECKPOINT_ATTR, WORKER_ATTR, internal_attr, params_full
from hpo_astro.study import workers
from hpo_astro.study.config import StudyConfig
from hpo_astro.study.objective import SURPLUS_ATTR
from hpo_astro.study.run import RunEvents
from hpo_astro.study.workers import config_from_study, run_workers, threads_per_worker

# Small, quick architectures: a trial of a few epochs takes about a second on the small data set.
FAST_SPACE = {
    "conv_layers": [1, 2],
    "conv_kernel_size": [3],
    "fc_layers": [1, 2],
    "fc_width": [32],
    "lr": [1e-3, 1e-2],
    "dropout_rate": [0.0, 0.1],
    "batch_size": [64],
    "t_max": [10],
}


def _toml(path: Path, space: dict[str, list] | None = None, **values: object) -> Path:
    lines = [f"{k} = {v!r}".replace("'", '"') for k, v in values.items()]
    lines.append("[space]")
    lines += [f"{k} = {v!r}".replace("'", '"') for k, v in {**FAST_SPACE, **(space or {})}.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _states(db: Path) -> dict[str, int]:
    with sqlite3.connect(db) as con:
        try:
            return dict(con.execute("SELECT state, COUNT(*) FROM trials GROUP BY state").fetchall())
        except sqlite3.OperationalError:
            return {}


def _running_trial_of(db: Path, pid: int) -> tuple[int, int] | None:
    """(number, highest checkpointed epoch or -1) of the running trial of process `pid`; None while it has none.
    Trials of killed processes that are not yet failed stay RUNNING too: they are not this process's."""
    import json

    with sqlite3.connect(db) as con:
        try:
            rows = con.execute(
                "SELECT t.number, a.key, a.value_json FROM trials t "
                "JOIN trial_system_attributes a ON a.trial_id = t.trial_id "
                "WHERE t.state = 'RUNNING' AND a.key IN ('hpo_astro:worker', 'hpo_astro:checkpoint')"
            ).fetchall()
        except sqlite3.OperationalError:
            return None
    mine = {n for n, key, value in rows if key == "hpo_astro:worker" and json.loads(value).endswith(f":{pid}")}
    if not mine:
        return None
    epochs = [json.loads(v).get("epoch", -1) for n, key, v in rows if key == "hpo_astro:checkpoint" and n in mine]
    return min(mine), max(epochs, default=-1)


def test_threads_are_split_between_workers() -> None:
    assert threads_per_worker(1, cores=8) == 8
    assert threads_per_worker(4, cores=8) == 2
    assert threads_per_worker(4, cores=2) == 1


def _wait(condition: Callable[[], bool], proc: subprocess.Popen, what: str, limit: float) -> None:
    """Wait until `condition` holds or `proc` has exited: a bound by progress. `limit` (scaled to the machine's
    measured speed) only turns a hang into a failure that says what never happened."""
    give_up = time.monotonic() + patience(limit)
    while proc.poll() is None and not condition():
        if time.monotonic() > give_up:
            proc.kill()
            pytest.fail(f"hung: {what}")
        time.sleep(0.02)


def test_kill_9_at_random_moments_loses_nothing(tmp_path: Path, small_file: Path) -> None:
    """4 SIGKILLs over one study, in a seeded random order: while the process starts, as its trial begins, and after
    1 and 2 checkpointed epochs (somewhere inside the next one); the same command restarted each time. Ends with
    exactly N finished trials, none running, every killed trial retried (resuming from its checkpoint), and a sound
    database. Every wait is for progress (a trial of this process running, a checkpoint written), so a slow machine
    only takes longer."""
    n_trials, db = 6, tmp_path / "chaos.db"
    config = _toml(
        tmp_path / "chaos.toml",
        strategy="random",
        study="chaos",
        n_trials=n_trials,
        max_epochs=6,
        storage=f"sqlite:///{db}",
        data=str(small_file),
        heartbeat_interval=1,
        grace_period=3,
        checkpoint_interval=0,  # every epoch: the kills below wait for a random number of checkpointed epochs
        seed=5,
    )
    cmd = [sys.executable, "-m", "hpo_astro.cli", "run", "--config", str(config), "--threads", "1"]
    env = {**os.environ, "HPO_ASTRO_CACHE": str(tmp_path / "cache")}
    rng = random.Random(0)
    moments: list[str | int] = ["starting", 0, 1, 2]  # each moment once (a process start costs seconds)
    rng.shuffle(moments)
    hits = 0
    for moment in moments:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        pid = proc.pid
        if moment == "starting":
            time.sleep(rng.uniform(0.0, 1.5) * slowness())  # importing, opening the store, preparing the data
        else:
            epochs = int(moment)
            _wait(lambda: _running_trial_of(db, pid) is not None, proc, "no trial started", 120)  # noqa: B023
            _wait(
                lambda: (_running_trial_of(db, pid) or (0, -1))[1] >= epochs,  # noqa: B023
                proc, f"no checkpoint of epoch {epochs}", 120,
            )  # fmt: skip
            time.sleep(rng.uniform(0.0, 0.3))  # somewhere inside the next epoch
        assert proc.poll() is None, "the study finished before all kills: make trials longer"
        hits += _running_trial_of(db, proc.pid) is not None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert hits >= 3  # the trial-time moments hit a running trial (a "starting" kill may too, on a fast machine)
    final = invoke(*cmd[3:])  # the same command, in this process (a process start costs seconds of imports)
    assert final.exit_code == 0, final.output[-2000:]

    study = optuna.load_study(study_name="chaos", storage=f"sqlite:///{db}")
    trials = study.trials
    finished = [t for t in trials if t.state in (TrialState.COMPLETE, TrialState.PRUNED)]
    assert len(finished) == n_trials
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
    failed = [t for t in trials if t.state == TrialState.FAIL]
    surplus = [t for t in failed if t.user_attrs.get(SURPLUS_ATTR)]
    assert len(failed) - len(surplus) >= hits  # every kill that hit a running trial failed it
    for t in failed:
        if t not in surplus and params_full(t):
            assert t.number in retried, f"killed trial {t.number} was never retried"
    resumed = [t for t in finished if t.system_attrs.get("retry_history")]
    assert resumed, "no killed trial finished as a retry"
    by_number = {t.number: t for t in trials}
    for t in resumed:
        predecessor = by_number[t.system_attrs["retry_history"][-1]]
        pointer = internal_attr(predecessor, CHECKPOINT_ATTR)
        if pointer:
            assert t.user_attrs["resumed_from_epoch"] == pointer["epoch"], t.number
    assert any(t.user_attrs.get("resumed_from_epoch", 0) >= 1 for t in resumed)  # checkpoints were used
    with sqlite3.connect(db) as con:
        assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    # checkpoints of finished trials are gone; only the best trial's weights remain
    leftovers = [p for p in (tmp_path / "chaos.db.artifacts").iterdir() if p.name.startswith("ckpt-")]
    assert not leftovers


def test_sigterm_checkpoints_and_requeues(tmp_path: Path, small_file: Path) -> None:
    db = tmp_path / "term.db"
    config = _toml(
        tmp_path / "term.toml",
        # One long trial (no early stop before epoch 12), so the signal cannot land between two trials: a short
        # one can end between the moment its first checkpoint is seen and the moment the signal arrives (an epoch here
        # takes about 0.3 s: eleven of them left are seconds of margin against a poll of 0.1 s).
        space={"early_stop_patience": [12], "t_max": [12]},
        strategy="random",
        study="term",
        n_trials=1,
        max_epochs=12,
        storage=f"sqlite:///{db}",
        data=str(small_file),
        seed=1,
    )
    cmd = [sys.executable, "-m", "hpo_astro.cli", "run", "--config", str(config), "--threads", "1"]
    env = {**os.environ, "HPO_ASTRO_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + patience(120)
    study = None
    while time.time() < deadline:  # wait for the first checkpoint of the first trial
        time.sleep(0.1)
        if db.exists() and _states(db).get("RUNNING"):
            study = optuna.load_study(study_name="term", storage=f"sqlite:///{db}")
            if study.trials and internal_attr(study.trials[-1], CHECKPOINT_ATTR):
                break
    proc.send_signal(signal.SIGTERM)
    start = time.time()
    _, err = proc.communicate(timeout=patience(60))
    assert time.time() - start < 10 and proc.returncode == 130, err
    states = _states(db)
    assert states.get("FAIL") == 1 and states.get("WAITING") == 1 and not states.get("RUNNING")
    resumed = invoke(*cmd[3:])  # the same command, in this process (a process start costs seconds of imports)
    assert resumed.exit_code == 0, resumed.output
    study = optuna.load_study(study_name="term", storage=f"sqlite:///{db}")
    retry = [t for t in study.trials if t.system_attrs.get("retry_history")]
    assert len(retry) == 1 and retry[0].state == TrialState.COMPLETE and retry[0].user_attrs["resumed_from_epoch"] >= 1
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 1


def _wait_for_other_workers(study: optuna.Study, n: int, timeout: float = 180.0) -> None:
    """Block until trials of `n` processes other than this one are in the store.

    Children are spawned (a fresh interpreter that imports torch: seconds), while a trial on a fast machine (a GPU)
    takes well under a second: without holding this process back, it could finish the whole budget alone and the
    test would prove nothing about parallel workers."""
    me = f"{socket.gethostname()}:{os.getpid()}"
    deadline = time.time() + patience(timeout)
    while time.time() < deadline:
        others = {internal_attr(t, WORKER_ATTR) for t in study.get_trials(deepcopy=False)} - {me, None}
        if len(others) >= n:
            return
        time.sleep(0.05)
    pytest.fail(f"only {len(others)} of {n} worker processes started a trial in {timeout:.0f} s")


def _parallel(
    storage: str, small_file: Path, study: str, workers: int, n_trials: int, artifacts: Path | None = None
) -> optuna.Study:
    """`workers` processes on one study, this one held back until the others have each started a trial."""
    cfg = StudyConfig(
        strategy="random",
        study=study,
        storage=storage,
        n_trials=n_trials,
        max_epochs=2,
        data=small_file,
        space=SearchSpace.from_dict(FAST_SPACE),
        workers=workers,
        artifacts=artifacts,
    )
    events = RunEvents(on_start=lambda study, finished, target: _wait_for_other_workers(study, workers - 1))
    result = run_workers(cfg, events)
    assert result.finished == n_trials
    return result.study


def test_four_workers_on_one_sqlite_file(tmp_path: Path, small_file: Path, capfd: pytest.CaptureFixture) -> None:
    study = _parallel(f"sqlite:///{tmp_path / 'four.db'}", small_file, "four", workers=4, n_trials=12)
    trials = study.trials
    assert len([t for t in trials if t.state == TrialState.COMPLETE]) == 12
    assert not [t for t in trials if t.state == TrialState.FAIL and not t.user_attrs.get(SURPLUS_ATTR)]
    assert len({internal_attr(t, WORKER_ATTR) for t in trials} - {None}) >= 3  # really parallel
    assert not [t for t in trials if t.state == TrialState.RUNNING]
    out, err = capfd.readouterr()
    assert "database is locked" not in out + err
    # each trial's sampler seed derives from the study's progress, so parallel workers do not repeat each other
    assert len({tuple(sorted(t.params.items())) for t in trials}) > 4


def _postgres_url() -> str | None:
    url = os.environ.get("HPO_ASTRO_TEST_POSTGRES")
    if not url:
        if os.environ.get("CI") == "true":
            pytest.fail("CI must run the PostgreSQL test: .ci/run sets HPO_ASTRO_TEST_POSTGRES")
        pytest.skip("no PostgreSQL server: set HPO_ASTRO_TEST_POSTGRES=postgresql://user:pass@127.0.0.1/db")
    return url


def test_four_workers_on_postgresql(small_file: Path, tmp_path: Path) -> None:
    url = _postgres_url()
    name = f"pg-{os.getpid()}-{int(time.time())}"
    study = _parallel(url, small_file, name, workers=4, n_trials=12, artifacts=tmp_path / "artifacts")
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 12
    assert len({internal_attr(t, WORKER_ATTR) for t in study.trials} - {None}) >= 3
    optuna.delete_study(study_name=name, storage=url)


def test_a_joining_worker_rebuilds_the_configuration(tmp_path: Path, small_file: Path) -> None:
    storage = f"sqlite:///{tmp_path / 'join.db'}"
    _parallel(storage, small_file, "join", workers=1, n_trials=2)
    cfg = config_from_study(storage, "join", n_trials=3)
    assert cfg.strategy == "random" and cfg.n_trials == 3 and cfg.max_epochs == 2
    assert cfg.space == SearchSpace.from_dict(FAST_SPACE) and cfg.data == small_file
    from hpo_astro.study.run import run_study

    result = run_study(cfg)
    assert result.finished == 3
    from hpo_astro.errors import UserError

    with pytest.raises(UserError, match="no study named 'nope'"):
        config_from_study(storage, "nope")


def test_journal_file_storage_with_two_workers(tmp_path: Path, small_file: Path) -> None:
    study = _parallel(f"journal:{tmp_path / 'optuna.log'}", small_file, "journal", workers=2, n_trials=4)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 4
    assert (tmp_path / "optuna.log.artifacts").is_dir()  # artifacts beside the journal file


def test_grpc_storage_proxy(tmp_path: Path, small_file: Path) -> None:
    import threading

    from optuna.storages import run_grpc_proxy_server

    from hpo_astro.store.storage import open_storage

    backend = open_storage(f"sqlite:///{tmp_path / 'behind-proxy.db'}", heartbeat_interval=None)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    threading.Thread(
        target=run_grpc_proxy_server, args=(backend,), kwargs={"host": "127.0.0.1", "port": port}, daemon=True
    ).start()
    study = _parallel(
        f"grpc://127.0.0.1:{port}", small_file, "proxied", workers=1, n_trials=2, artifacts=tmp_path / "artifacts"
    )
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 2
    direct = optuna.load_study(study_name="proxied", storage=f"sqlite:///{tmp_path / 'behind-proxy.db'}")
    assert len(direct.trials) == 2  # the trials landed in the database behind the proxy


def test_run_workers_and_worker_commands(tmp_path: Path, small_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = f"sqlite:///{tmp_path / 'cli.db'}"
    config = _toml(tmp_path / "cli.toml", strategy="tpe", study="cli", max_epochs=3)
    gate = workers._FirstTrialGate.on_start  # hold this process until the spawned one has a trial (see above)

    def on_start(self: workers._FirstTrialGate, study: optuna.Study, finished: int, target: int) -> None:
        gate(self, study, finished, target)
        _wait_for_other_workers(study, 1)

    with monkeypatch.context() as patch:  # undone alone: the fixture's cache redirection stays for the worker below
        patch.setattr(workers._FirstTrialGate, "on_start", on_start)
        ran = invoke(
            "run", "--config", config, "--n-trials", 8, "--workers", 2, "--storage", store, "--data", small_file
        )
    assert ran.exit_code == 0, ran.output
    study = optuna.load_study(study_name="cli", storage=store)
    assert len(study.get_trials(states=(TrialState.COMPLETE,))) == 8
    # the spawned worker ran trials (all 8, on a fast machine, while this one was held back)
    me = f"{socket.gethostname()}:{os.getpid()}"
    assert len({internal_attr(t, WORKER_ATTR) for t in study.trials} - {me}) == 1
    study.set_user_attr("n_trials", 10)  # more budget: a worker joins and does the rest
    joined = invoke("worker", "--study", "cli", "--storage", store, "--threads", 1)
    assert joined.exit_code == 0, joined.output
    assert "10/10 finished trials (2 run by this process)" in joined.stdout
    missing = invoke("worker", "--study", "nope", "--storage", store)
    assert_refused(missing, "no study named 'nope'")
    assert_refused(invoke("storage-proxy", "--storage", "not a url"), "malformed storage URL")


def _print_marker(marker: str, parent: None) -> None:
    print(f"{marker} {os.environ.get('HPO_ASTRO_MARKER')}", file=sys.stderr, flush=True)


def test_a_worker_writes_to_the_parents_current_output_with_its_current_environment(
    capfd: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers start from a fork server (started once, by an earlier test, with other output and variables): each
    takes its parent's output and environment as they are when it starts, so its messages reach the user (here the
    capture) and its cache is the one set now."""
    from hpo_astro.study.workers import ParentContext, worker_context

    for round_ in (1, 2):
        monkeypatch.setenv("HPO_ASTRO_MARKER", f"set-for-round-{round_}")
        child = worker_context().Process(target=_print_marker, args=(f"marker-{round_}", ParentContext()))
        child.start()
        child.join()
        assert child.exitcode == 0
        assert f"marker-{round_} set-for-round-{round_}" in capfd.readouterr().err
