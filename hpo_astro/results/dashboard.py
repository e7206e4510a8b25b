"""What optuna-dashboard shows of a study beyond Optuna's own records: the study note (what the study is, the command
that made it and how to resume it), the read-only artifact store `hpo-astro dashboard` serves the trials' artifacts
(the best weights) from, and the wrapper that serves them as downloads only.

The rest is recorded where the dashboard already looks: the objective's name is the study's metric name
(`hpo_astro.study.create.create_or_resume`), its per-epoch values the trials' intermediate values, the other per-epoch
metrics one `curve_*` user attribute each (`hpo_astro.store.record`), the best weights an artifact of their trial.
"""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, BinaryIO

import optuna

from hpo_astro.errors import UserError
from hpo_astro.store.record import StudyRecord
from hpo_astro.store.storage import artifact_dir, store_file

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
            "attributes `eval_runs`, `eval_values`, `eval_std`, `eval_sem`; the intermediate values are the runs "
            "one after another."
            if runs > 1
            else ""
        )
        lines += [
            f"**{record.strategy}** search for **{record.n_trials} finished trials** (complete + pruned) of the "
            f"objective `{record.objective}` ({study.direction.name.lower()}d), pruner {record.pruner}, seed "
            f"{record.seed}, {epochs}; data: {data} (channels {','.join(record.channels)}, split {split}).{evaluation}",
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


def dashboard_app(storage: optuna.storages.BaseStorage, artifact_store: ReadOnlyArtifacts | None) -> WSGIApp:
    """optuna-dashboard's app on `storage` (through its supported `wsgi` entry point), artifacts as downloads only."""
    import optuna_dashboard

    return downloads_only(optuna_dashboard.wsgi(storage, artifact_store=artifact_store))


def run_server(
    storage: optuna.storages.BaseStorage, host: str, port: int, artifact_store: ReadOnlyArtifacts | None = None
) -> None:
    """`optuna_dashboard.run_server` (same arguments, same bottle/wsgiref server, blocks until Ctrl-C), serving
    `dashboard_app` instead of the bare app."""
    import bottle

    bottle.run(dashboard_app(storage, artifact_store), host=host, port=port)
