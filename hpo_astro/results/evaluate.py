"""A study's best model, rebuilt and evaluated on train, val and test: what `compare`, `report` and `export` share.

The studies are read from the store through a read-only handle (`load_studies`). The best (complete) trial's model
is rebuilt from the trial's saved best weights when it has them (`load_trial_model`), else by retraining its full
configuration (a PBT trial: its schedule) with the trial's stored seed and the study's epoch cap (`retrain_trial`),
which reproduces the trial exactly because training is deterministic for a seed. Evaluated on CPU on the splits
of the data the study was run on (`study_data`, refused unless its fingerprint is the study's); test read only here.

The evaluation cache: each evaluation is kept in the study store itself (study user attribute `compare_cache`, keyed
by trial number and data fingerprint, with the digest of the model's weights), so a second `compare`, `report` or
`export` is instant with the same numbers, also on a machine the store is copied to; changed weights are evaluated
anew. Only the current best trial's entries are kept (an entry holds one test score per cutout). It is written
through a separate short-lived writable handle, and not at all when the store or its file system is read-only.
"""

from __future__ import annotations

import math
import pickle
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from hpo_astro.errors import UserError
from hpo_astro.store.record import (
    BEST_WEIGHTS_ATTR,
    CACHE_ATTR,
    PARAMS_FULL_ATTR,
    TRAIN_SEED_ATTR,
    WEIGHTS_ATTR,
    StudyRecord,
    eval_runs,
    kept_model_val_metrics,
    params_full,
)
from hpo_astro.store.storage import close_store, writable_store

if TYPE_CHECKING:
    from torch import nn

    from hpo_astro.data.prepare import DataSplits, PrepConfig

CACHE_VERSION = 1  # bump when the evaluation changes, so stale cached numbers are recomputed
SPLITS = ("train", "val", "test")
Events = Callable[[str], None]  # where progress and warnings go (the CLI prints them on stderr)

optuna.logging.set_verbosity(optuna.logging.WARNING)


class NoCompletedTrial(UserError):
    """The study has no complete trial, so it has no best configuration to evaluate."""


# --- the store and its studies ----------------------------------------------------------------------------------


def load_studies(storage: optuna.storages.BaseStorage, url: str, names: Sequence[str] | None) -> list[optuna.Study]:
    """The named studies (all of them when `names` is empty), in the order given; unknown names are errors."""
    existing = [s.study_name for s in optuna.get_all_study_summaries(storage, include_best_trial=False)]
    if not existing:
        raise UserError(f"no studies in {url}: run `hpo-astro run` first")
    wanted = list(dict.fromkeys(names)) if names else existing
    for name in wanted:
        if name not in existing:
            raise UserError(f"no study named {name!r} in {url}; studies: {', '.join(existing)}")
    return [optuna.load_study(study_name=name, storage=storage) for name in wanted]


def study_record(study: optuna.Study) -> StudyRecord | None:
    """The study's recorded configuration; None for a study another program made (callers show "?" then)."""
    return StudyRecord.from_attrs(study.user_attrs)


def state_counts(study: optuna.Study) -> dict[str, int]:
    """How many trials the study holds in each state, by lower-case state name (states without trials left out)."""
    trials = study.get_trials(deepcopy=False)
    return {state.name.lower(): n for state in TrialState if (n := sum(t.state == state for t in trials))}


def trial_seed(study: optuna.Study, trial: FrozenTrial) -> int:
    """The seed the trial trained with (the study's seed for a trial that did not record its own)."""
    record = study_record(study)
    return int(trial.user_attrs.get(TRAIN_SEED_ATTR, record.seed if record is not None else 0))


# --- the data a study was run on ------------------------------------------------------------------------------


def study_prep(study: optuna.Study) -> PrepConfig:
    """How the study's data was prepared: its recorded channels and split; a run sets nothing else, so the rest is
    default."""
    from hpo_astro.data.prepare import PrepConfig

    record = study_record(study)
    if record is None:
        return PrepConfig()
    return PrepConfig(channels=tuple(record.channels), fractions=tuple(record.split))  # type: ignore[arg-type]


def study_data(study: optuna.Study, data: Path | None = None, memo: dict | None = None) -> DataSplits:
    """The splits the study was run on (its `data_source` and channels, or `data` when the file moved),
    refused unless their fingerprint is the study's."""
    from hpo_astro.data.prepare import load_splits

    record = study_record(study)
    prep = study_prep(study)
    channels = prep.channels
    source = record.data_source if record is not None else None
    if data is not None:
        path: Path | None = Path(data)
    elif source and Path(source).is_file():
        path = Path(source)
    elif source and record is not None and record.data is not None:  # recorded as None: the default simulated set
        raise UserError(
            f"data file {source} of study {study.study_name!r} not found; pass --data PATH to the file it was run on"
        )
    else:
        path = None  # the default simulated set, regenerated identically when not cached
    key = (str(path), channels)
    memo = {} if memo is None else memo
    if key not in memo:
        memo[key] = load_splits(path, prep)
    splits = memo[key]
    expected = record.data_fingerprint if record is not None else None
    if expected and splits.fingerprint != expected:
        raise UserError(
            f"study {study.study_name!r} was run on data with fingerprint {expected}, but {splits.source} "
            f"(channels {','.join(channels)}) gives {splits.fingerprint}; pass --data PATH to the file it was run on"
        )
    return splits


# --- the best trial's model -----------------------------------------------------------------------------------


def load_trial_model(study: optuna.Study, trial: FrozenTrial, url: str | None = None) -> nn.Module | None:
    """The trial's saved best-epoch weights (the study keeps those of its best trial), or None when this trial has
    none or the file is gone; weights load with `weights_only=True`. The weights are looked for where the study
    recorded its artifacts, then beside the store at `url` (a store copied elsewhere)."""
    import torch

    from hpo_astro.core.model import architecture, build_model, check_weights_file, parameter_count
    from hpo_astro.data.prepare import DEFAULT_CHANNELS
    from hpo_astro.store.storage import find_artifact_dir

    record = study_record(study)
    saved = study.user_attrs.get(BEST_WEIGHTS_ATTR)
    params = params_full(trial)
    directory = find_artifact_dir(record.artifacts if record is not None else None, url)
    own = isinstance(saved, dict) and saved.get("trial") == trial.number  # else a multi-objective trial's own
    artifact_id = saved.get("artifact_id") if own else trial.user_attrs.get(WEIGHTS_ATTR)  # type: ignore[union-attr]
    if artifact_id is None or not params or directory is None:
        return None  # a pointer another program wrote as a string or a list is no pointer: retrain
    channels = record.channels if record is not None else DEFAULT_CHANNELS
    checked = architecture(params, len(channels))  # a configuration that cannot be built: one line, before any read
    if not isinstance(artifact_id, str) or not artifact_id or "/" in artifact_id or artifact_id.startswith("."):
        return None  # no file name inside the folder (a path elsewhere is not followed)
    try:
        check_weights_file(directory / artifact_id, parameter_count(checked, len(channels)), None)
    except UserError:
        return None  # missing, not a regular file, or unpacking to more than the model: retrain instead
    try:
        with optuna.artifacts.FileSystemArtifactStore(str(directory)).open_reader(artifact_id) as fh:
            state = torch.load(fh, map_location="cpu", weights_only=True)
        model = build_model(params, in_channels=len(channels))
        model.load_state_dict(state)
    except (
        optuna.artifacts.exceptions.ArtifactNotFound,  # the file is gone
        OSError,  # unreadable
        EOFError,  # truncated
        pickle.UnpicklingError,  # not a plain state dict (weights_only refuses it)
        RuntimeError,  # a damaged archive, or weights of another shape
        KeyError,  # a pointer or configuration without a field it needs
        ValueError,  # a configuration build_model does not know
    ):  # all of these: fall back to retraining
        return None
    return model.eval()


def retrain_trial(study: optuna.Study, trial: FrozenTrial, data: DataSplits) -> nn.Module:
    """Retrain the trial's full configuration (a PBT trial: its member's schedule, `pbt_plan.retrain`) with its seed
    and the study's epoch cap: the same model, because training is deterministic for a seed."""
    from hpo_astro.core.train import train
    from hpo_astro.study.pbt_plan import retrain, schedule_of

    if schedule := schedule_of(trial):
        return retrain(schedule, data, seed=trial_seed(study, trial)).model
    params = params_full(trial)
    if not params:
        raise UserError(
            f"trial {trial.number} of study {study.study_name!r} has no stored configuration ({PARAMS_FULL_ATTR}): "
            "it was run by an older hpo-astro and cannot be reproduced"
        )
    record = study_record(study)
    if record is not None and record.folds > 1:  # a cross-validated trial keeps its first run's model: fold 0's
        from hpo_astro.study.evaluation import fold_data

        data = fold_data(data, 0, record.folds, record.seed)
    return train(params, data, max_epochs=record.max_epochs if record else None, seed=trial_seed(study, trial)).model


# --- its evaluation -------------------------------------------------------------------------------------------


@dataclass
class Evaluation:
    """A best model's metrics on the three splits (Metrics.as_dict) and its test scores (sigmoid, test order)."""

    train: dict[str, float]
    val: dict[str, float]
    test: dict[str, float]
    test_scores: list[float]
    source: str  # "weights" (the trial's saved weights) or "retrained"
    reproduced: bool | None  # the validation metrics equal those the trial recorded (None: nothing recorded)
    seconds: float  # time taken to rebuild and evaluate the model
    model_sha256: str | None = None  # `model_digest` of the model evaluated (None: cached by an earlier version)


def model_digest(model: nn.Module) -> str:
    """SHA-256 of a model's weights (each tensor's name, type, shape and bytes, in name order): which model an
    evaluation is of, whether its weights were loaded or retrained."""
    import hashlib

    import torch

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        flat = tensor.detach().cpu().contiguous().reshape(-1)
        digest.update(f"{name}:{flat.dtype}:{tuple(tensor.shape)};".encode())
        digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def evaluate_model(model: nn.Module, data: DataSplits, trial: FrozenTrial, source: str, seconds: float) -> Evaluation:
    """Metrics on train, val and test, on CPU, as `hpo_astro.core.train.evaluate` computes them during training."""
    import torch

    from hpo_astro.core.train import metrics_from_logits, predict_logits

    model = model.cpu().eval()
    data = data.to("cpu")
    metrics, scores = {}, []
    for split in SPLITS:
        x, y = data.split(split)
        logits = predict_logits(model, x)
        metrics[split] = metrics_from_logits(logits, y, data.pos_weight).as_dict()
        if split == "test":
            scores = torch.sigmoid(logits).tolist()
    stored = kept_model_val_metrics(trial)
    runs = eval_runs(trial)
    cross_validated = bool(runs) and runs[0].get("fold") is not None  # its model was scored on its fold, not on val
    reproduced = None
    if stored and not cross_validated:
        # tolerance for evaluating on CPU what the trial evaluated on its device; a different model is far off
        reproduced = all(_close(metrics["val"][k], stored.get(k), 1e-4) for k in ("loss", "accuracy", "roc_auc"))
    digest = model_digest(model)
    return Evaluation(metrics["train"], metrics["val"], metrics["test"], scores, source, reproduced, seconds, digest)


def rebuild_model(
    study: optuna.Study, trial: FrozenTrial, data: DataSplits, events: Events | None = None, url: str | None = None
) -> tuple[nn.Module, str]:
    """The trial's model and where it came from: its saved weights ("weights"), else retrained ("retrained")."""
    from hpo_astro.core.model import architecture
    from hpo_astro.data.prepare import DEFAULT_CHANNELS

    record = study_record(study)
    if params := params_full(trial):  # a configuration that cannot be built: one line before any note, read or retrain
        architecture(params, len(record.channels if record is not None else DEFAULT_CHANNELS))
    model, source = load_trial_model(study, trial, url), "weights"
    if model is None:
        if events:
            seed = trial_seed(study, trial)
            events(f"study {study.study_name!r}: retraining best trial #{trial.number} with its seed {seed}")
        model, source = retrain_trial(study, trial, data), "retrained"
    return model, source


def _close(a: float, b: Any, tol: float = 1e-6) -> bool:
    if not isinstance(b, int | float):
        return False
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


def same_metrics(a: Evaluation, b: Evaluation) -> bool:
    """Equal train/val/test metrics (to rounding; NaN equals NaN)."""
    return all(
        _close(value, getattr(b, split).get(name)) for split in SPLITS for name, value in getattr(a, split).items()
    )


# --- the evaluation cache -------------------------------------------------------------------------------------


def cache_key(trial: FrozenTrial, fingerprint: str) -> str:
    """The trial number, then the data fingerprint: `store_evaluation` finds a trial's entries by the prefix."""
    return f"{trial.number}:{fingerprint}"


def _cache_fingerprint(study: optuna.Study) -> str:
    """The data half of the cache key: the study's recorded data fingerprint ("" when it recorded none)."""
    record = study_record(study)
    return record.data_fingerprint if record is not None else ""


def cached_evaluation(study: optuna.Study, trial: FrozenTrial) -> Evaluation | None:
    """The trial's cached evaluation on the study's data, or None when there is none (or one of an older version)."""
    entry = (study.user_attrs.get(CACHE_ATTR) or {}).get(cache_key(trial, _cache_fingerprint(study)))
    if not isinstance(entry, dict) or entry.get("version") != CACHE_VERSION:
        return None
    digest = entry.get("model_sha256")
    try:
        recorded = {f.name: entry[f.name] for f in fields(Evaluation) if f.name != "model_sha256"}
        return Evaluation(**recorded, model_sha256=digest if isinstance(digest, str) else None)
    except (KeyError, TypeError):
        return None


def _weights_changed(study: optuna.Study, trial: FrozenTrial, cached: Evaluation, url: str | None) -> bool:
    """Whether the trial's saved weights are not the model `cached` is of (trusted: no digest, or no weights here)."""
    if cached.model_sha256 is None:
        return False
    model = load_trial_model(study, trial, url)
    return model is not None and model_digest(model) != cached.model_sha256


def store_evaluation(study: optuna.Study, trial: FrozenTrial, evaluation: Evaluation, url: str | None = None) -> bool:
    """Cache the evaluation of the study's best trial in the study's user attributes at `url`, in place of the
    entries of any other trial. The study was loaded through a read-only handle, so this writes through a separate
    short-lived writable one; a read-only store (or file system), or no `url`, is skipped quietly: the cache only
    saves time. Returns whether it was written."""
    import sqlalchemy.exc

    storage = writable_store(url) if url else None
    if storage is None:
        return False
    try:
        study_id = storage.get_study_id_from_name(study.study_name)
        cache = storage.get_study_user_attrs(study_id).get(CACHE_ATTR)  # fresh: others may have added
        cache = cache if isinstance(cache, dict) else {}
        # Only the best trial's entries are kept (a new best replaces the previous one's: the cache does not grow with
        # every best the study had); a multi-objective study keeps those of its whole front.
        kept = {trial.number, *(t.number for t in study.best_trials)} if len(study.directions) > 1 else {trial.number}
        cache = {key: entry for key, entry in cache.items() if key.split(":", 1)[0] in {str(n) for n in kept}}
        cache[cache_key(trial, _cache_fingerprint(study))] = {"version": CACHE_VERSION, **asdict(evaluation)}
        storage.set_study_user_attr(study_id, CACHE_ATTR, cache)
        return True
    except (sqlalchemy.exc.SQLAlchemyError, OSError, KeyError):  # e.g. a file system that refuses the write
        return False
    finally:
        close_store(storage)


def best_evaluation(
    study: optuna.Study,
    trial: FrozenTrial,
    data: Path | None = None,
    events: Events | None = None,
    memo: dict | None = None,
    url: str | None = None,
) -> Evaluation:
    """The trial's evaluation: from the cache when it holds it (no data read, no model retrained; saved weights are
    checked against it), else rebuilt, evaluated and cached."""
    evaluation = cached_evaluation(study, trial)
    if evaluation is not None and not _weights_changed(study, trial, evaluation, url):
        return evaluation
    splits = study_data(study, data, memo)
    start = time.perf_counter()
    model, source = rebuild_model(study, trial, splits, events, url)
    evaluation = evaluate_model(model, splits, trial, source, time.perf_counter() - start)
    store_evaluation(study, trial, evaluation, url)
    if events and evaluation.reproduced is False:
        events(
            f"warning: study {study.study_name!r}: the rebuilt model's validation metrics differ from those "
            f"recorded by trial #{trial.number} (was it trained on another device or torch version?)"
        )
    return evaluation


def export_evaluation(
    study: optuna.Study, trial: FrozenTrial, data: DataSplits, events: Events | None = None, url: str | None = None
) -> tuple[nn.Module, Evaluation, bool | None]:
    """`export`'s model (saved weights, else retrained) and its evaluation: the cached one when it is of this very
    model (same `model_digest`), else evaluated now and cached in its place. The last value: whether the cached
    numbers are this model's (True when reused; None: nothing was cached)."""
    start = time.perf_counter()
    model, source = rebuild_model(study, trial, data, events, url)
    cached = cached_evaluation(study, trial)
    if cached is not None and cached.model_sha256 == model_digest(model):
        return model, replace(cached, source=source), True
    evaluation = evaluate_model(model, data, trial, source, time.perf_counter() - start)
    store_evaluation(study, trial, evaluation, url)
    return model, evaluation, None if cached is None else same_metrics(cached, evaluation)
