"""Tabulating: building a table by training every configuration of a finite space once (or with S seeds: a study
with `eval_seeds = S`, each run a row), as a grid study named `table/<NAME>` (`hpo-astro tabulate`), each run's
best weights then evaluated once on the test split."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from hpo_astro.core.metrics import Metrics
from hpo_astro.core.space import SearchSpace
from hpo_astro.core.train import TrainFn, TrainResult
from hpo_astro.core.train import train as train_configuration
from hpo_astro.data.prepare import DataSplits
from hpo_astro.errors import UserError, one_line
from hpo_astro.store.record import REPLAYED, TABULATED, TEST_METRICS_ATTR, StudyRecord
from hpo_astro.study.config import StudyConfig
from hpo_astro.tabular.table import TABLE_PREFIX

DEFAULT_MAX_CONFIGS = 10_000  # tabulate refuses larger spaces unless --max-configs says otherwise
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


def test_metrics(result: TrainResult, data: DataSplits) -> Metrics:
    """The trained model (best weights restored) on the test split."""
    from hpo_astro.core.train import evaluate

    return evaluate(result.model, data.x_test, data.y_test, data.pos_weight)


test_metrics.__test__ = False  # type: ignore[attr-defined]  # not a pytest test, whatever its name


@dataclass(frozen=True)
class TabulateTrain:
    """The trainer of a `tabulate` study: train as `run` does with `trainer` (every keyword the objective passes goes
    through), then evaluate the restored best weights on the test split once with `tester` and record that on the
    trial (`test_metrics`). A picklable object (its functions module-level ones), so worker processes get it."""

    trainer: TrainFn = train_configuration
    tester: Callable[[TrainResult, DataSplits], Metrics] = test_metrics
    trial_kind: ClassVar[str] = TABULATED  # what the study records (`hpo_astro.store.record.TRIAL_KINDS`)

    def __call__(self, params: Mapping[str, Any], data: DataSplits, **options: Any) -> TrainResult:
        return self.finish(self.trainer(params, data, **options), data)

    def finish(self, result: TrainResult, data: DataSplits) -> TrainResult:
        """What this trainer adds to a run `trainer` trained (also to runs the objective trained stacked)."""
        if result.stop_reason != "pruned":  # a pruned trial is not a row; nothing to test
            result.extra_attrs[TEST_METRICS_ATTR] = self.tester(result, data).as_dict()
        return result


tabulate_train = TabulateTrain()  # with the real trainer and the real test evaluation


def tabulating(trainer: TrainFn | None) -> TabulateTrain:
    """The trainer of a table study given the caller's `trainer`: itself when it is a `TabulateTrain` already (e.g.
    one with a stand-in tester), wrapped by one when it is a plain trainer, the real one when None."""
    if isinstance(trainer, TabulateTrain):
        return trainer
    return TabulateTrain(trainer) if trainer is not None else tabulate_train


def train_for_kind(trial_kind: str, study_name: str, trainer: TrainFn | None = None) -> TrainFn | None:
    """The trainer a worker joining the study `study_name`, whose trials are of `trial_kind`, must use: `trainer`
    (None: the real one), wrapped by `TabulateTrain` for a table study. A replay study is refused: its trials are
    answered from a table by the `benchmark` that made it, which no worker can join."""
    if trial_kind == TABULATED:
        return tabulating(trainer)
    if trial_kind == REPLAYED:
        raise UserError(
            f"study {study_name!r} replays a table (made by `hpo-astro benchmark`): a worker cannot join it; re-run "
            "the benchmark command to resume it"
        )
    return trainer


def check_name(name: str) -> str:
    """A table name: letters, digits, '.', '_', '-' (it names a study and a file)."""
    if not NAME_PATTERN.fullmatch(name):
        raise UserError(
            f"invalid table name {name!r}: use up to 100 letters, digits, '.', '_' or '-', starting with a letter or "
            "digit"
        )
    return name


def check_size(space: SearchSpace, limit: int = DEFAULT_MAX_CONFIGS) -> int:
    size = space.grid_size("a table")  # a range must list its values
    if size > limit:
        raise UserError(
            f"the space has {size:,} configurations, more than the table limit of {limit:,}; narrow [space] in the "
            "study file (or raise --max-configs)"
        )
    return size


def tabulate_config(
    space_file: Path | None,
    name: str,
    storage: str,
    max_configs: int = DEFAULT_MAX_CONFIGS,
    **overrides: Any,
) -> StudyConfig:
    """The study that tabulates `name`: the grid over the `[space]` of `space_file`, named `table/<name>`, with
    the file's other settings and `overrides` (None: not given). Without a file, the stored study's own
    configuration (to resume it). Checked here, before any store is written: the size limit, no pruner (a table
    needs whole curves), and a resumed table's seed and epoch cap (rows trained otherwise would mix in)."""
    from hpo_astro.store.storage import store_file
    from hpo_astro.study.config import load_config, read_study_file

    study_name = TABLE_PREFIX + check_name(name)
    file = store_file(storage)
    stored = None
    if file is None or (file.is_file() and file.stat().st_size > 0):  # a new or empty store holds no study
        stored = _stored_config(storage, study_name)
    if space_file is None:
        if stored is None:
            raise UserError(f"no table study {study_name!r} in {storage} to resume; pass --space FILE to start it")
        cfg = stored.merged(**overrides)
    else:
        base = load_config(space_file)
        if "space" not in read_study_file(space_file):
            raise UserError(
                f"{space_file} has no [space]: a table enumerates a finite space, listed as name = [values] under "
                "[space] in the study file"
            )
        if base.pruner not in (None, "none"):
            raise UserError(
                f"{space_file} sets pruner = {base.pruner!r}: a table needs every configuration's whole curve, "
                "so tabulate never prunes (remove the pruner)"
            )
        cfg = base.merged(**overrides)
    size = check_size(cfg.space, max_configs)
    cfg = dataclasses.replace(cfg, strategy="grid", study=study_name, n_trials=size, pruner="none", storage=storage)
    cfg.validate()
    if stored is not None:
        for what, was, now in (
            ("seed", stored.seed, cfg.seed),
            ("max epochs", stored.max_epochs, cfg.max_epochs),
            ("seeds", stored.eval_seeds, cfg.eval_seeds),
        ):
            if was != now:
                raise UserError(
                    f"table study {study_name!r} in {storage} was started with {what} {was}, not {now}: its rows "
                    "must all train alike; resume it with the same settings, or use another --out NAME"
                )
    return cfg


def _stored_config(storage: str, study_name: str) -> StudyConfig | None:
    """The configuration a stored table study recorded (read-only, the store closed again); None if there is none."""
    import optuna

    from hpo_astro.store.storage import read_store

    with read_store(storage) as backend:
        try:
            study = optuna.load_study(study_name=study_name, storage=backend)
        except KeyError:
            return None
        record = StudyRecord.from_attrs(study.user_attrs)
    if record is None:
        raise UserError(f"study {study_name!r} in {storage} is not a table made by `hpo-astro tabulate`")
    try:
        return StudyConfig.from_record(record, storage, study_name)
    except (TypeError, ValueError, AttributeError, OverflowError) as exc:  # attributes another program wrote
        reason = one_line(str(exc))
        raise UserError(f"table study {study_name!r} in {storage} has an unreadable record ({reason})") from None
