"""`export --pick RULE`: one point of a study's Pareto front chosen by a rule (`best:NAME`, bounds with units), and
the export saying which trial it took and why; each rule tested on both sides of its threshold."""

from __future__ import annotations

import json
from pathlib import Path

import optuna
import pytest
from helpers import assert_refused, invoke, journal_url, load_study, study_config

from hpo_astro.core.model import parameter_count
from hpo_astro.core.space import SearchSpace
from hpo_astro.errors import UserError
from hpo_astro.results.pick import parse_pick, pick_trial
from hpo_astro.store.record import WEIGHTS_ATTR, params_full
from hpo_astro.study.run import run_study

NAMES = ["accuracy", "latency"]
# (accuracy, latency in µs): A, B, C on the front; D is dominated by B (less accurate and slower)
POINTS = {"A": (0.90, 120.0), "B": (0.85, 60.0), "C": (0.80, 40.0), "D": (0.80, 70.0)}


@pytest.fixture
def front() -> optuna.Study:
    study = optuna.create_study(directions=["maximize", "minimize"])
    for values in POINTS.values():
        study.add_trial(optuna.trial.create_trial(values=list(values)))
    return study


def _picked(study: optuna.Study, rule: str) -> str:
    trial, _ = pick_trial(study, parse_pick(rule, NAMES), NAMES)
    return list(POINTS)[trial.number]


@pytest.mark.parametrize(
    ("rule", "expected"),
    [
        ("best:accuracy", "A"),
        ("best:latency", "C"),
        ("latency<60us", "C"),  # just below B's latency: B is out
        ("latency<=60us", "B"),  # B's latency itself: B is in, and more accurate than C
        ("latency<0.061ms", "B"),
        ("latency<0.059ms", "C"),
        ("latency<1ms", "A"),
        ("accuracy>=0.85,best:latency", "B"),
        ("accuracy>0.85, best:latency", "A"),
        ("accuracy>=80%,latency>=65", "A"),  # D (0.80, 70 µs) is a candidate but A dominates it
        ("latency>65,best:latency", "D"),  # among A and D, D is not dominated by A and is faster
    ],
)
def test_a_rule_picks_the_known_point_on_each_side_of_its_threshold(
    front: optuna.Study, rule: str, expected: str
) -> None:
    assert _picked(front, rule) == expected


def test_a_rule_no_trial_meets_says_what_the_study_holds(front: optuna.Study) -> None:
    with pytest.raises(
        UserError, match=r"no complete trial .* meets --pick 'latency<30us' \(latency ranges from 40 to 120\)"
    ):
        _picked(front, "latency<30us")


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("", "clauses joined by commas"),
        ("latency<50us,", "clauses joined by commas"),
        ("latency<50kg", "unit 'kg' does not fit latency (units: us, µs, ms, s)"),
        ("accuracy>90us", "unit 'us' does not fit accuracy (units: %)"),
        ("params<1M", "'params' is not an objective of this study; the study's objectives: accuracy, latency"),
        ("f1>0.5", "'f1' is an unknown objective"),
        ("best:accuracy,best:latency", "two best: clauses"),
        ("latency=50", "cannot read 'latency=50'"),
        ("latency<1e999", "finite number"),
    ],
)
def test_a_bad_rule_is_one_line(rule: str, message: str) -> None:
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_pick(rule, NAMES)


def test_export_picks_by_rule_and_says_which_trial_it_took(tmp_path: Path, small_file: Path) -> None:
    """A trained two-objective study (accuracy, params) of two architectures: a bound on params between the two
    models' sizes exports the small one on one side and the large one on the other; the command names the trial and
    the rule, and the manifest records them."""
    space = SearchSpace.from_dict({"conv_layers": [1, 2], "fc_layers": [1], "lr": [1e-2]})
    cfg = study_config(tmp_path, small_file, strategy="grid", objective="accuracy,params", space=space, n_trials=2)
    cfg.max_epochs = 1
    study = run_study(cfg, train=None).study
    sizes = {t.number: parameter_count(params_full(t), 1) for t in study.get_trials()}
    small, large = sorted(sizes, key=sizes.get)
    store = journal_url(tmp_path)
    for rule, expected in [
        (f"params<={sizes[small]}", small),
        (f"params>{sizes[small]}", large),
        (f"params<{sizes[large] / 1000:.6f}k", small),
        ("best:params", small),
    ]:
        out = tmp_path / f"export-{rule.replace('<', 'lt').replace('>', 'gt').replace(':', '-')}"
        result = invoke("export", "--study", "grid", "--storage", store, "--out", out, "--pick", rule)
        assert result.exit_code == 0, result.output
        assert f"exported trial #{expected} of study 'grid'" in result.output
        assert f"chosen by the pick rule '{rule}'" in result.output
        manifest = json.loads((out / "model.json").read_text())["study"]
        assert manifest["trial"] == expected and manifest["values"][1] == sizes[expected]
        assert manifest["model_source"] == (
            "weights" if WEIGHTS_ATTR in study.trials[expected].user_attrs else "retrained"
        )
    refused = invoke("export", "--study", "grid", "--storage", store, "--out", tmp_path / "x", "--pick", "params<10")
    assert_refused(refused, "no complete trial of study 'grid' meets --pick 'params<10'")
    assert not (tmp_path / "x").exists()
    assert load_study(store, "grid").directions[1] == optuna.study.StudyDirection.MINIMIZE


def test_a_rule_names_an_operating_point_with_or_without_its_stated_rate() -> None:
    study = optuna.create_study(directions=["minimize", "minimize"])
    for values in ([0.30, 80.0], [0.20, 120.0]):
        study.add_trial(optuna.trial.create_trial(values=values))
    names = ["fpr_at_fnr@2%", "latency"]
    for rule in ("fpr_at_fnr@2%<0.25", "fpr_at_fnr<25%", "best:fpr_at_fnr"):
        trial, how = pick_trial(study, parse_pick(rule, names), names)
        assert trial.number == 1 and "fpr_at_fnr@2%" in how, rule
    trial, _ = pick_trial(study, parse_pick("fpr_at_fnr@2%>0.25", names), names)
    assert trial.number == 0
    with pytest.raises(UserError, match="'fpr_at_fnr@1%' is not an objective of this study"):
        parse_pick("fpr_at_fnr@1%<0.2", names)
