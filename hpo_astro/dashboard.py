"""What optuna-dashboard shows of a study beyond Optuna's own records: the study note (what the study is, the command
that made it and how to resume it), and the read-only artifact store `hpo-astro dashboard` serves the trials'
artifacts (the best weights) from.

The rest is recorded where the dashboard already looks: the objective's name is the study's metric name
(`hpo_astro.study.create_or_resume`), its per-epoch values the trials' intermediate values, the other per-epoch
metrics one `curve_*` user attribute each (`hpo_astro.record`), the best weights an artifact of their trial.
"""

from __future__ import annotations

import contextlib
import shlex
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

import optuna

from hpo_astro.record import StudyRecord
from hpo_astro.storage import find_artifact_dir


def study_note(study: optuna.Study, command: list[str], program: str, cwd: Path, storage_url: str) -> str:
    """The study note (Markdown): what the study searches, the command that made it (`program` and its arguments, run
    in `cwd`), and how to resume it or add workers."""
    record = StudyRecord.from_attrs(study.user_attrs)
    made_by = " ".join(shlex.quote(part) for part in [program, *command])
    lines = [f"## {study.study_name}", ""]
    if record is not None:
        epochs = f"at most {record.max_epochs} epochs per trial" if record.max_epochs else "t_max epochs per trial"
        data = record.data or "the default simulated data set"
        lines += [
            f"**{record.strategy}** search for **{record.n_trials} finished trials** (complete + pruned) of the "
            f"objective `{record.objective}` ({study.direction.name.lower()}d), pruner {record.pruner}, seed "
            f"{record.seed}, {epochs}; data: {data} (channels {','.join(record.channels)}).",
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


def artifact_folders(storage: optuna.storages.BaseStorage, url: str) -> list[Path]:
    """The artifact folders of every study in the store (where each recorded them, else `<file>.artifacts/` beside
    the store, for a store copied with that folder), existing ones only, each once."""
    folders: dict[Path, None] = {}
    for summary in optuna.get_all_study_summaries(storage, include_best_trial=False):
        record = StudyRecord.from_attrs(summary.user_attrs)
        folder = find_artifact_dir(record.artifacts if record is not None else None, url)
        if folder is not None:
            folders[folder.resolve()] = None
    return list(folders)


class ReadOnlyArtifacts:
    """The artifact store `hpo-astro dashboard` gives optuna-dashboard: it reads an artifact from whichever study
    folder holds it (artifact ids are UUIDs, unique across folders) and refuses writes and removals, as the read-only
    study store refuses the dashboard's other writes."""

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
