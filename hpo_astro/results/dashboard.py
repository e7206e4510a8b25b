"""What optuna-dashboard shows of a study beyond Optuna's own records: the study note (what the study is, the command
that made it and how to resume it), the read-only artifact store `hpo-astro dashboard` serves the trials' artifacts
(the best weights) from, the wrapper that serves them as downloads only, and the one that keeps the dashboard
read-only: its writes are refused with a reason the page shows, its buttons for them hidden, and a notice says so.

The rest is recorded where the dashboard already looks: the objective's name is the study's metric name
(`hpo_astro.study.create.create_or_resume`), its per-epoch values the trials' intermediate values, the other per-epoch
metrics one `curve_*` user attribute each (`hpo_astro.store.record`), the best weights an artifact of their trial.
"""

from __future__ import annotations

import contextlib
import json
import shlex
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

import optuna

from hpo_astro.errors import UserError
from hpo_astro.store.record import StudyRecord
from hpo_astro.store.storage import artifact_dir, store_file
from hpo_astro.store.trials import directions_text, is_multi_objective

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def study_note(study: optuna.Study, command: list[str], program: str, cwd: Path, storage_url: str) -> str:
    """The study note (Markdown): what the study searches, the command that made it (`program` and its arguments, run
    in `cwd`), and how to resume it or add workers."""
    record = StudyRecord.from_attrs(study.user_attrs)
    made_by = " ".join(shlex.quote(part) for part in [program, *command])
    lines = [f"## {study.study_name}", ""]
    if record is not None:
        epochs = f"at most {record.max_epochs} epochs per trial" if record.max_epochs else "t_max epochs per trial"
        data = record.data or "the default simulated data set"
        split = "/".join(f"{f:g}" for f in record.split)
        runs = record.eval_seeds * record.folds
        evaluation = (
            f" Each configuration is scored by the mean of {runs} training runs ({record.eval_seeds} seed(s) x "
            f"{record.folds} fold(s)): its runs, their standard deviation and standard error are the trial "
            "attributes `eval_runs`, `eval_values`, `eval_std`, `eval_sem`"
            + ("." if is_multi_objective(study) else "; the intermediate values are the runs one after another.")
            if runs > 1
            else ""
        )
        if is_multi_objective(study):  # Optuna takes no intermediate values from a multi-objective trial
            evaluation += (
                " Its result is a Pareto front (the dashboard draws it); each trial's per-epoch metrics are its "
                "`curve_*` attributes, its cost `inference_cost`."
            )
        lines += [
            f"**{record.strategy}** search for **{record.n_trials} finished trials** (complete + pruned) of the "
            f"objective `{record.objective}` ({directions_text(study, record.objective)}), pruner {record.pruner}, "
            f"seed {record.seed}, {epochs}; data: {data} (channels {','.join(record.channels)}, split {split})."
            f"{evaluation}",
            "",
        ]
    worker = f"{program} worker --study {shlex.quote(study.study_name)} --storage {shlex.quote(storage_url)}"
    lines += [
        f"Made by `{made_by}` in `{cwd}`.",
        "",
        "* **Resume** after an interruption: run the same command again in the same folder; with a larger "
        "`--n-trials` it extends the study.",
        f"* **More workers**, from another shell or machine: `{worker}`.",
    ]
    return "\n".join(lines) + "\n"


def write_note(study: optuna.Study, body: str) -> bool:
    """Save `body` as the study's note unless it already has one (written by the run that created it, or by a user
    in a writable dashboard, which a later run must not overwrite). Whether it was written."""
    import optuna_dashboard

    if optuna_dashboard.get_note(study):
        return False
    optuna_dashboard.save_note(study, body)
    return True


def absolute_storage(url: str) -> str:
    """A SQLite or journal URL with an absolute path, so that a command quoted in the note works from any folder."""
    if url.startswith("sqlite:///") and not url.startswith("sqlite:////") and not url.endswith(":memory:"):
        path, sep, query = url.removeprefix("sqlite:///").partition("?")
        return f"sqlite:///{Path(path).resolve()}{sep}{query}"
    if url.startswith("journal:"):
        return f"journal:{Path(url.removeprefix('journal:')).resolve()}"
    return url


def served_folder(url: str, explicit: Path | None = None) -> Path | None:
    """The one artifact folder `hpo-astro dashboard` serves: `explicit` (its `--artifacts`), else `<file>.artifacts/`
    beside a SQLite or journal store when it exists. Never the folder a study records: a store from someone else
    can record any folder, and the dashboard would serve its files."""
    if explicit is not None:
        if not explicit.is_dir():
            raise UserError(f"--artifacts {explicit} is not a folder")
        return explicit.resolve()
    beside = artifact_dir(url) if store_file(url) is not None else None
    return beside.resolve() if beside is not None and beside.is_dir() else None


def unserved_folders(storage: optuna.storages.BaseStorage, served: Path | None) -> dict[Path, list[str]]:
    """The existing artifact folders the store's studies record, other than the served one, each with the studies
    that record it: the user is told how to serve them (`--artifacts`), as they are no longer served unasked."""
    unserved: dict[Path, list[str]] = {}
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        record = StudyRecord.from_attrs(summary.user_attrs)
        if record is None or not record.artifacts or not Path(record.artifacts).is_dir():
            continue
        folder = Path(record.artifacts).resolve()
        if folder != served:
            unserved.setdefault(folder, []).append(summary.study_name)
    return unserved


class ReadOnlyArtifacts:
    """The artifact store `hpo-astro dashboard` gives optuna-dashboard: it reads an artifact from whichever of the
    given folders holds it (artifact ids are UUIDs, unique across folders) and refuses writes and removals, as the
    read-only study store refuses the dashboard's other writes."""

    def __init__(self, folders: Iterable[Path]) -> None:
        self.stores = [optuna.artifacts.FileSystemArtifactStore(str(folder)) for folder in folders]

    def open_reader(self, artifact_id: str) -> BinaryIO:
        for store in self.stores:
            with contextlib.suppress(optuna.artifacts.exceptions.ArtifactNotFound):
                return store.open_reader(artifact_id)
        raise optuna.artifacts.exceptions.ArtifactNotFound(f"no artifact {artifact_id!r} in the studies' folders")

    def write(self, artifact_id: str, content_body: BinaryIO) -> None:
        raise PermissionError("hpo-astro dashboard serves the artifacts read-only")

    def remove(self, artifact_id: str) -> None:
        raise PermissionError("hpo-astro dashboard serves the artifacts read-only")


# What every artifact response carries instead of the type its store records: a download, never a page.
DOWNLOAD_HEADERS = (
    ("Content-Type", "application/octet-stream"),
    ("X-Content-Type-Options", "nosniff"),
    ("Content-Disposition", "attachment"),
)
_REPLACED = {"content-type", "content-encoding", "content-encodings", "content-disposition", "x-content-type-options"}


def _is_artifact(environ: dict[str, Any]) -> bool:
    """Whether a request reached an artifact route: by bottle's matched route (set before the response starts), or
    by the path as bottle reads it (it rewrites PATH_INFO in place, dropping bytes that are not UTF-8), so that no
    spelling of the path slips past a prefix test."""
    rule = getattr(environ.get("bottle.route"), "rule", "")
    return str(rule).startswith("/artifacts/") or str(environ.get("PATH_INFO", "")).startswith("/artifacts/")


def downloads_only(app: WSGIApp) -> WSGIApp:
    """Wrap optuna-dashboard's WSGI app: it serves an artifact with the content type recorded in the store (a hostile
    store records text/html: a page on the dashboard's origin, its script run) and `Access-Control-Allow-Origin: *`
    (any site the user visits may read it). Artifact responses become application/octet-stream, nosniff, attachment;
    no response allows other origins."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            kept = [(name, value) for name, value in headers if not name.lower().startswith("access-control-")]
            if _is_artifact(environ):
                kept = [(name, value) for name, value in kept if name.lower() not in _REPLACED]
                kept += DOWNLOAD_HEADERS
            return start_response(status, kept, exc_info)

        return app(environ, start)

    return wrapped


# optuna-dashboard (0.21) has no read-only mode: it offers every write, and the read-only store answered each with
# HTTP 500 and a traceback. Its page shows the `reason` of a refused request ("Failed to upload <reason>", ...).
READ_ONLY_REASON = (
    "this dashboard is read-only (hpo-astro dashboard): it does not create, rename or delete studies, edit notes, "
    "or upload or delete artifacts; `optuna-dashboard STORAGE` serves a writable one"
)
# What the page gets: the buttons of those writes hidden (by the labels and icons optuna-dashboard gives them; the
# page's Content-Security-Policy allows inline styles, not scripts), and a notice at the bottom.
READ_ONLY_STYLE = (
    b'<style id="hpo-astro-read-only-style">button[aria-label="delete study"],button[aria-label="rename study"],'
    b'button[aria-label="delete artifact"],button[aria-label="skip trial"],button:has(svg[data-testid="AddBoxIcon"]),'
    b'button:has(svg[data-testid="EditIcon"]),button:has(svg[data-testid="DeleteIcon"]),:has(> input[type="file"])'
    b"{display:none!important}</style>"
)
READ_ONLY_NOTICE = (
    b'<div id="hpo-astro-read-only" role="status" style="position:fixed;left:0;right:0;bottom:0;z-index:99999;'
    b"padding:4px 12px;background:#fff3cd;color:#664d03;border-top:1px solid #ffda6a;font:13px/1.4 sans-serif;"
    b'text-align:center">Read-only: <b>hpo-astro dashboard</b> serves this store read-only; creating, renaming and '
    b"deleting studies, editing notes and uploading or deleting artifacts are refused.</div>"
)
_UNCHANGED_PAGE = {"content-length", "etag", "last-modified", "accept-ranges"}  # the file's, not the page sent


def read_only(app: WSGIApp) -> WSGIApp:
    """Wrap optuna-dashboard's WSGI app: any request but GET and HEAD is refused (403, `READ_ONLY_REASON` as JSON,
    the app never sees it), and its page (the one HTML it serves) gets `READ_ONLY_STYLE` and `READ_ONLY_NOTICE`.
    Bottle starts a response before it returns its body, so a page is known by its first line and headers."""

    def wrapped(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        method = str(environ.get("REQUEST_METHOD", "GET")).upper()
        if method not in ("GET", "HEAD"):
            body = json.dumps({"reason": READ_ONLY_REASON}).encode()
            start_response("403 Forbidden", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
            return [body]
        held: list[tuple[str, list[tuple[str, str]], Any]] = []

        def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            kind = next((value for name, value in headers if name.lower() == "content-type"), "")
            if method == "GET" and status.startswith("200") and kind.startswith("text/html"):
                held.append((status, headers, exc_info))
                return lambda data: None  # the page is sent below, rewritten
            return start_response(status, headers, exc_info)

        chunks = app(environ, start)
        if not held:
            return chunks
        try:
            page = b"".join(chunks)
        finally:
            getattr(chunks, "close", lambda: None)()
        page = page.replace(b"</head>", READ_ONLY_STYLE + b"</head>", 1).replace(
            b"<body>", b"<body>" + READ_ONLY_NOTICE, 1
        )
        status, headers, exc_info = held[0]
        headers = [(name, value) for name, value in headers if name.lower() not in _UNCHANGED_PAGE]
        start_response(status, [*headers, ("Content-Length", str(len(page)))], exc_info)
        return [page]

    return wrapped


def dashboard_app(storage: optuna.storages.BaseStorage, artifact_store: ReadOnlyArtifacts | None) -> WSGIApp:
    """optuna-dashboard's app on `storage` (through its supported `wsgi` entry point), artifacts as downloads only,
    read-only."""
    import optuna_dashboard

    return read_only(downloads_only(optuna_dashboard.wsgi(storage, artifact_store=artifact_store)))


def run_server(
    storage: optuna.storages.BaseStorage, host: str, port: int, artifact_store: ReadOnlyArtifacts | None = None
) -> None:
    """`optuna_dashboard.run_server` (same arguments, same bottle/wsgiref server, blocks until Ctrl-C), serving
    `dashboard_app` instead of the bare app."""
    import bottle

    bottle.run(dashboard_app(storage, artifact_store), host=host, port=port)
