"""The best model of a study, exported and usable without the study store.

`export_best` writes a model directory: `model.pt` (the state dict, loaded with `weights_only=True`) and
`model.json` (hyperparameters, preprocessing: channels, plane names, ZScale, non-finite handling, decision
threshold, split settings; the BCE pos_weight; the study and trial it came from; its train/val/test metrics).
`predict` scores cutouts with such a directory (or one written by `hpo-astro train`): it reads an ExRomana file
safely, preprocesses it exactly as training did (`hpo_astro.data.prepare.preprocess` with the settings the manifest
recorded: planes, ZScale contrast), writes
`index,label,score,prediction` per cutout and computes the metrics when the file carries labels.

Files to score: an ExRomana file (`{"TP": [...], "FP": [...]}`: labels known), or a plain list of records
(`[{"sample": (64, 64, 4) array}, ...]`: unlabelled).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, get_args

import numpy as np
import torch

from hpo_astro.core.metrics import Metrics
from hpo_astro.core.model import MANIFEST_FILE, WEIGHTS_FILE, load_model, model_manifest, save_model
from hpo_astro.data import exromana
from hpo_astro.data.prepare import PrepConfig
from hpo_astro.errors import UserError
from hpo_astro.io import umask, write_output
from hpo_astro.results import SplitName
from hpo_astro.results.choice import choose_trial
from hpo_astro.results.evaluate import (
    Evaluation,
    Events,
    export_evaluation,
    load_studies,
    study_data,
    study_prep,
    study_record,
    trial_seed,
)
from hpo_astro.store.record import trial_params
from hpo_astro.store.storage import read_store
from hpo_astro.store.trials import directions_text

if TYPE_CHECKING:
    import optuna

SPLIT_NAMES: tuple[str, ...] = get_args(SplitName)


# --- export ---------------------------------------------------------------------------------------------------


@dataclass
class Exported:
    directory: Path
    manifest: dict[str, Any]
    evaluation: Evaluation
    matches_cache: bool | None  # compare's cached numbers are this model's (None: nothing was cached)


def export_best(
    url: str,
    study_name: str,
    out: Path,
    data: Path | None = None,
    events: Events | None = None,
    pick: str | None = None,
) -> Exported:
    """Rebuild the study's best model (saved weights, else retraining with its stored seed), evaluate it (unless
    `compare`'s cache holds this model's evaluation) and write it to `out`. An existing `out` is replaced only when it
    holds an earlier export. `pick` is a rule choosing the trial (`hpo_astro.results.pick`: `best:accuracy`,
    `latency<50us`), for a multi-objective study's Pareto front above all."""
    with read_store(url) as storage:  # read-only; compare's cache is written through a separate handle
        (study,) = load_studies(storage, url, [study_name])
        return _export_best(study, url, out, data, events, pick)


def _export_best(
    study: optuna.Study, url: str, out: Path, data: Path | None, events: Events | None, pick: str | None = None
) -> Exported:
    choice = choose_trial(study, pick)
    trial = choice.trial
    out = Path(out)
    check_export_dir(out)  # before the evaluation, which can take minutes
    splits = study_data(study, data)
    model, evaluation, matches = export_evaluation(study, trial, splits, events, url)  # compare's cache reused
    record = study_record(study)  # None for a study another program made: recorded as null
    study_info = {
        "name": study.study_name,
        "strategy": record.strategy if record is not None else None,
        "objective": record.objective if record is not None else None,
        "direction": directions_text(study),
        "trial": trial.number,
        "value": trial.values[0] if len(trial.values) == 1 else None,
        "values": list(trial.values),
        "chosen_by": choice.describe(),
        "train_seed": trial_seed(study, trial),
        "max_epochs": record.max_epochs if record is not None else None,
        "model_source": evaluation.source,
    }
    manifest = model_manifest(
        trial_params(trial),
        splits,
        study_prep(study),  # how study_data prepared the splits
        threshold=float(evaluation.test.get("threshold", 0.5)),
        extra={
            "study": study_info,
            "metrics": {"train": evaluation.train, "val": evaluation.val, "test": evaluation.test},
        },
    )
    _write_directory(out, model.cpu(), manifest)
    return Exported(out, manifest, evaluation, matches)


def _write_directory(out: Path, model: torch.nn.Module, manifest: dict[str, Any]) -> None:
    """Write model.pt and model.json into `out`, each file atomically (see `save_model`): only these two files are
    replaced, whatever else the directory holds (a user's notes, scores of an earlier export) stays."""
    save_model(out, model, manifest)
    with contextlib.suppress(OSError):
        out.chmod(0o777 & ~umask())


def check_export_dir(out: Path) -> None:
    """Refuse an output directory before any work: one that is a file, or holds files but no earlier export (a
    folder of the user's, `.`), or cannot be written."""
    import os

    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / MANIFEST_FILE).is_file())):
        raise UserError(f"{out} exists and is not an exported model directory; choose another --out")
    existing = next(p for p in (out, *out.parents) if p.exists() or p == p.parent)
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write the model to {out}: {existing} is not a writable directory")
    for name in (MANIFEST_FILE, WEIGHTS_FILE):
        target = out / name
        if target.exists() and not target.is_file():
            raise UserError(f"cannot write the model to {out}: {target} is not a regular file")


# --- predict --------------------------------------------------------------------------------------------------


@dataclass
class Cutouts:
    samples: np.ndarray  # (N, 64, 64, 4) float32, planes last, as stored
    labels: np.ndarray | None  # (N,) 1 = real, 0 = bogus; None when the file has no labels


def load_cutouts(path: Path) -> Cutouts:
    """An ExRomana file (labelled) or a plain list of ExRomana records (unlabelled), read without running code."""
    raw = exromana.read_raw(path)
    if isinstance(raw, list | tuple):
        return Cutouts(exromana.validate_records(raw, source=str(path)), None)
    data = exromana.validate(raw, source=str(path))
    return Cutouts(data.samples, data.labels)


def load_exported(directory: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"model directory not found: {directory}")
    missing = [name for name in (MANIFEST_FILE, WEIGHTS_FILE) if not (directory / name).is_file()]
    if missing:
        raise UserError(f"{directory} is not an exported model: {', '.join(missing)} missing (see `hpo-astro export`)")
    try:
        return load_model(directory)
    except UserError as exc:  # the manifest or the weights file refused before use: name the model directory
        raise UserError(f"model {directory}: {exc}") from None
    except (json.JSONDecodeError, KeyError, ValueError, TypeError) as exc:
        raise UserError(f"{directory}/{MANIFEST_FILE} is not a valid model manifest: {exc}") from None
    except (RuntimeError, OSError, EOFError, pickle.UnpicklingError) as exc:  # wrong shapes, corrupt or unsafe file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot load the weights in {directory}/{WEIGHTS_FILE}: {reason}") from None


@dataclass
class Prediction:
    indices: np.ndarray  # positions of the scored records in the file
    labels: np.ndarray | None
    scores: np.ndarray  # sigmoid of the logit: the probability of "real"
    predictions: np.ndarray  # 1 = real, 0 = bogus, at the manifest's threshold
    threshold: float
    channels: tuple[str, ...]
    metrics: Metrics | None  # when labels are known

    def csv_text(self) -> str:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        header = (
            ["index", "label", "score", "prediction"] if self.labels is not None else ["index", "score", "prediction"]
        )
        writer.writerow(header)
        for k, (i, score, pred) in enumerate(zip(self.indices, self.scores, self.predictions, strict=True)):
            label = [int(self.labels[k])] if self.labels is not None else []
            writer.writerow([int(i), *label, f"{score:.6f}", int(pred)])
        return buffer.getvalue()


def predict(model_dir: Path, data_path: Path, split: str = "all") -> Prediction:
    """Score the cutouts of `data_path` (or one split of it, as training split it) with an exported model."""
    from hpo_astro.core.train import metrics_from_logits, predict_logits
    from hpo_astro.data.prepare import preprocess, stratified_split

    if split not in SPLIT_NAMES:
        raise UserError(f"unknown split {split!r}; known: {', '.join(SPLIT_NAMES)}")
    model, manifest = load_exported(model_dir)
    prep_info = manifest.get("preprocessing") or {}
    where = f"{model_dir}/{MANIFEST_FILE}"
    if not isinstance(prep_info, dict):
        raise UserError(f"{where}: preprocessing must be an object, got {type(prep_info).__name__}")
    try:
        prep = PrepConfig.from_manifest(prep_info)  # the recorded settings, contrast included; defaults when absent
    except UserError as exc:
        raise UserError(f"{where}: {exc}") from None
    threshold = _manifest_number(prep_info.get("threshold", 0.5), "preprocessing.threshold", where, 0.0, 1.0)
    pos_weight = _manifest_number(manifest.get("pos_weight", 1.0), "pos_weight", where, 1e-6, 1e6)
    cutouts = load_cutouts(data_path)
    indices = np.arange(len(cutouts.samples))
    if split != "all":
        if cutouts.labels is None:
            raise UserError(f"--split {split} needs a labelled ExRomana file; {data_path} has no labels")
        indices = stratified_split(cutouts.labels, prep.split_seed, prep.fractions)[
            ("train", "val", "test").index(split)
        ]
    x = torch.from_numpy(np.ascontiguousarray(preprocess(cutouts.samples[indices], prep)[0]))
    if x.shape[1] != int(manifest["in_channels"]):
        raise UserError(
            f"{model_dir}/{MANIFEST_FILE}: in_channels {manifest['in_channels']} disagrees with its "
            f"{x.shape[1]} channel(s) {','.join(prep.channels)}"
        )
    logits = predict_logits(model, x)
    scores = torch.sigmoid(logits).numpy()
    labels = None if cutouts.labels is None else cutouts.labels[indices]
    metrics = None
    if labels is not None:
        y = torch.from_numpy(labels.astype(np.float32))
        metrics = metrics_from_logits(logits, y, pos_weight, threshold=threshold)
    return Prediction(
        indices, labels, scores, (scores >= threshold).astype(np.int64), threshold, prep.channels, metrics
    )


def _manifest_number(value: object, name: str, where: str, low: float, high: float) -> float:
    """A number the manifest records (threshold, pos_weight), checked: finite and within [low, high]."""
    import math

    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise UserError(f"{where}: {name} must be a finite number, got {value!r}")
    if not low <= value <= high:
        raise UserError(f"{where}: {name} = {value} is out of range [{low:g}, {high:g}]")
    return float(value)


def write_scores(prediction: Prediction, out: Path) -> Path:
    return write_output(out, prediction.csv_text())
