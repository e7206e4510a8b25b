"""Property tests of what the commands read besides data files (#17): random and mutated model manifests, and
random and mutated study attributes (the record another program may have written). Whatever they hold: the model
loads and scores (never larger than MAX_PARAMETERS), or a one-line UserError is raised; never another exception.
Derandomized and without an example database, as tests/data/test_exromana_fuzz.py; HPO_ASTRO_FUZZ_EXAMPLES=N
explores."""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hpo_astro.core.hyperparameters import DEFAULT_PARAMS
from hpo_astro.core.model import MAX_PARAMETERS, build_model, model_manifest, save_model
from hpo_astro.data import exromana, simulate
from hpo_astro.data.prepare import load_splits
from hpo_astro.errors import UserError
from hpo_astro.results.export import load_exported, predict
from hpo_astro.store.record import StudyRecord
from hpo_astro.study.config import StudyConfig

EXPLORE = os.environ.get("HPO_ASTRO_FUZZ_EXAMPLES")
FUZZ = settings(
    max_examples=int(EXPLORE) if EXPLORE else 60,
    deadline=None,
    derandomize=not EXPLORE,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
PARAMS = {**DEFAULT_PARAMS, "conv_layers": 1, "fc_layers": 2, "fc_width": 8}

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=8,
)
bounded = st.sampled_from([0, 1, 4, 5, 7, 12, 40, 64, 8192, 10**7, 1e999, -1, 0.5, "1", "None", "BatchNorm", None])


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("fuzz-model")
    data = exromana.save(simulate.simulate_records(n=24, seed=2), root / "d.npy")
    with pytest.MonkeyPatch.context() as patch:  # module-scoped: its own cache, as conftest's session fixtures do
        patch.setenv("HPO_ASTRO_CACHE", str(root / "cache"))
        splits = load_splits(data)
    from hpo_astro.data.prepare import PrepConfig

    manifest = model_manifest(PARAMS, splits, PrepConfig())
    save_model(root / "model", build_model(PARAMS, splits.in_channels), manifest)
    return root / "model", data


def _mutate(value: dict[str, Any], path: list[str], new: object) -> dict[str, Any]:
    out = copy.deepcopy(value)
    target = out
    for key in path[:-1]:
        target = target.setdefault(key, {}) if isinstance(target.get(key), dict) else target
    if new is _DELETE:
        target.pop(path[-1], None)
    else:
        target[path[-1]] = new
    return out


_DELETE = object()
MANIFEST_FIELDS = [
    ["params"], ["in_channels"], ["pos_weight"], ["preprocessing"], ["preprocessing", "threshold"],
    ["preprocessing", "channels"], ["preprocessing", "zscale_contrast"], ["weights_sha256"],
    *[["params", name] for name in DEFAULT_PARAMS],
]  # fmt: skip


@FUZZ
@given(
    mutations=st.lists(
        st.tuples(st.sampled_from(MANIFEST_FIELDS), st.one_of(json_values, bounded, st.just(_DELETE))),
        min_size=1,
        max_size=3,
    )
)
def test_a_mutated_manifest_loads_and_scores_or_is_refused_in_one_line(
    mutations: list[tuple[list[str], object]], model_dir: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    directory, data = model_dir
    manifest = json.loads((directory / "model.json").read_text())
    for path, new in mutations:
        manifest = _mutate(manifest, path, new)
    case = tmp_path_factory.mktemp("case")
    (case / "model.pt").write_bytes((directory / "model.pt").read_bytes())
    try:
        text = json.dumps(manifest)
    except ValueError:
        return
    (case / "model.json").write_text(text)
    try:
        model, _ = load_exported(case)
        assert sum(p.numel() for p in model.parameters()) <= MAX_PARAMETERS
        prediction = predict(case, data)
    except UserError as exc:
        assert "\n" not in str(exc).strip()
        return
    assert all(0.0 <= s <= 1.0 for s in prediction.scores)
    assert 0.0 <= prediction.threshold <= 1.0 and not math.isnan(prediction.threshold)


RECORD = StudyRecord(
    strategy="random",
    space={"lr": [0.1, 0.01], "fc_width": [32]},
    objective="accuracy",
    data_fingerprint="abc",
    n_trials=5,
).to_attrs()


@FUZZ
@given(
    changes=st.dictionaries(
        st.sampled_from([*RECORD, "unknown"]), st.one_of(json_values, bounded, st.just(_DELETE)), max_size=4
    )
)
def test_mutated_study_attributes_give_a_record_none_or_one_line(changes: dict[str, object]) -> None:
    attrs = dict(RECORD)
    for key, value in changes.items():
        if value is _DELETE:
            attrs.pop(key, None)
        else:
            attrs[key] = value
    try:
        record = StudyRecord.from_attrs(attrs)
        if record is not None:
            StudyConfig.from_record(record, "sqlite:///x.db", "s").validate()
    except UserError as exc:
        assert "\n" not in str(exc).strip()


def test_the_unmutated_cases_pass(model_dir: tuple[Path, Path]) -> None:
    """The fuzzed starting points are valid: a refusal above comes from a mutation, not from a broken start."""
    directory, data = model_dir
    assert len(predict(directory, data).scores) == 24
    record = StudyRecord.from_attrs(RECORD)
    assert record is not None and StudyConfig.from_record(record, "sqlite:///x.db", "s").validate().n_trials == 5
    torch.manual_seed(0)
