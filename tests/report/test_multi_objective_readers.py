"""`status`, `compare` and `report` on a multi-objective study: its Pareto front in place of one best trial (exactly
the non-dominated trials, named by objective), one comparison row per front trial with the cache kept for all of
them, the report's Pareto-front plot and table; and the MDR at 1% FPR column, "-" where an old cache has none."""

from __future__ import annotations

import csv
import io
import json
import math
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import optuna
import pytest
from helpers import RESULT_SPACE, invoke, load_study, store_url
from optuna.distributions import CategoricalDistribution

from hpo_astro.cli import output
from hpo_astro.core.space import SearchSpace
from hpo_astro.report import compare, figures, pareto
from hpo_astro.results import evaluate as report_eval
from hpo_astro.results import front as front_module
from hpo_astro.store.record import CACHE_ATTR, HISTORY_SYSTEM_ATTR, StudyRecord
from hpo_astro.study.config import StudyConfig
from hpo_astro.study.run import run_study

pytestmark = pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")  # set_metric_names

SPACE = {"conv_layers": [1, 2], "fc_width": [32, 64]}
# (accuracy: maximised, latency in µs: minimised). #1 is dominated by #0 (worse in both), #3 by #2: the front is
# exactly #0 and #2, #0 first in accuracy.
MO_TRIALS = [((0.90, 50.0), (2, 64)), ((0.80, 60.0), (2, 32)), ((0.70, 10.0), (1, 32)), ((0.60, 20.0), (1, 64))]
FRONT = [0, 2]
SINGLE_VALUES = [0.75, 0.85, 0.80]  # the single-objective study's best: #1


def _history(accuracy: float) -> list[dict[str, float]]:
    return [
        {
            "epoch": e,
            "train_loss": 1 - accuracy * e / 2,
            "train_accuracy": accuracy * e / 2,
            "val_loss": 1 - accuracy * e / 2,
            "val_accuracy": accuracy * e / 2,
            "val_roc_auc": 0.9,
            "lr": 1e-3,
            "seconds": 1.0,
        }
        for e in (1, 2)
    ]


def _evaluation(test_accuracy: float, mdr: float | None) -> report_eval.Evaluation:
    """A cached evaluation: `mdr` None is one cached by a version that did not measure MDR at 1% FPR."""
    split = {"loss": 0.3, "accuracy": test_accuracy, "roc_auc": 0.9, "precision": 0.8, "recall": 0.7, "f1": 0.75}
    split |= {"fpr_at_5fnr": 0.25, "threshold": 0.5} | ({} if mdr is None else {"mdr_at_1fpr": mdr})
    return report_eval.Evaluation(split, split, split, [0.1, 0.9], "weights", True, 0.5)


def _study(url: str, name: str, objective: str, directions: list[str], metric_names: list[str]) -> optuna.Study:
    study = optuna.create_study(study_name=name, storage=url, directions=directions)
    study.set_metric_names(metric_names)
    record = StudyRecord(strategy="random", space=SPACE, objective=objective, data_fingerprint=f"fp-{name}", n_trials=4)
    for key, value in record.to_attrs().items():
        study.set_user_attr(key, value)
    return study


def _add(study: optuna.Study, values: list[float], conv_layers: int, fc_width: int) -> None:
    distributions = {name: CategoricalDistribution(choices) for name, choices in SPACE.items()}
    study.add_trial(
        optuna.trial.create_trial(
            values=values,
            params={"conv_layers": conv_layers, "fc_width": fc_width},
            distributions=distributions,  # type: ignore[arg-type]
            user_attrs={"val_metrics": {"accuracy": values[0], "loss": 1 - values[0]}},
            system_attrs={HISTORY_SYSTEM_ATTR: _history(values[0])},
        )
    )


def _cache(study: optuna.Study, entries: dict[int, report_eval.Evaluation]) -> None:
    fingerprint = StudyRecord.from_attrs(study.user_attrs).data_fingerprint  # type: ignore[union-attr]
    cache = {f"{n}:{fingerprint}": {"version": report_eval.CACHE_VERSION, **asdict(e)} for n, e in entries.items()}
    study.set_user_attr(CACHE_ATTR, cache)


@pytest.fixture
def url(tmp_path: Path) -> str:
    """A store with a two-objective study "mo" (front #0, #2) and a single-objective one, "single", each with its
    front's (best trial's) evaluations cached, so compare and report train nothing; the single-objective cache is
    an old one, without MDR at 1% FPR."""
    url = store_url(tmp_path)
    mo = _study(url, "mo", "accuracy,latency", ["maximize", "minimize"], ["val_accuracy", "latency_us"])
    for values, (conv, fc) in MO_TRIALS:
        _add(mo, list(values), conv, fc)
    _cache(mo, {0: _evaluation(0.88, 0.125), 2: _evaluation(0.66, 0.5)})
    single = _study(url, "single", "accuracy", ["maximize"], ["val_accuracy"])
    for number, value in enumerate(SINGLE_VALUES):
        _add(single, [value], 1 + number % 2, 32)
    _cache(single, {1: _evaluation(0.8, None)})
    return url


# --- status ---------------------------------------------------------------------------------------------------


def test_status_shows_the_directions_and_exactly_the_pareto_front(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(output.console, "width", 200)  # the console's width is set once, when it is made
    result = invoke("status", "--storage", url, "--format", "json")
    assert result.exit_code == 0, result.output
    mo, single = json.loads(result.stdout)
    assert mo["objectives"] == ["accuracy", "latency"] and mo["directions"] == ["maximize", "minimize"]
    assert [t["number"] for t in mo["front"]] == FRONT
    assert [t["values"] for t in mo["front"]] == [list(MO_TRIALS[n][0]) for n in FRONT]
    assert mo["front"][0]["params"] == {"conv_layers": 2, "fc_width": 64}
    assert mo["best_trial"] is None and mo["best_value"] is None and mo["top"] == []
    assert mo["counts"]["complete"] == 4
    # a single-objective study's entry is as it was: no front keys, its best trial
    assert not {"objectives", "directions", "front"} & set(single)
    assert single["best_trial"] == 1 and single["best_value"] == 0.85 and single["direction"] == "maximize"

    table = invoke("status", "--storage", url).stdout
    assert "objectives of mo: accuracy maximized, latency minimized" in table
    assert re.search(r"│ mo .*│ front of 2 +│", table) and re.search(r"│ single .*│ 0\.8500 \(#1\) +│", table)
    listed = re.findall(r"│ #(\d+) +│ ([\d.]+) +│ ([\d.]+) +│", table)
    assert listed == [("0", "0.9000", "50"), ("2", "0.7000", "10")]

    (top,) = json.loads(invoke("status", "--storage", url, "--study", "mo", "--top", 1, "--format", "json").stdout)
    assert [t["number"] for t in top["top"]] == [0] and len(top["front"]) == 2
    cut = invoke("status", "--storage", url, "--study", "mo", "--top", 1).stdout
    assert "first 1 of 2 by accuracy" in cut and re.findall(r"│ #(\d+) ", cut) == ["0"]


# --- compare --------------------------------------------------------------------------------------------------


def test_compare_has_one_row_per_front_trial(url: str) -> None:
    result = invoke("compare", "--storage", url, "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["studies"]
    assert [(r["study"], r["best_trial"]) for r in rows] == [("mo", 0), ("mo", 2), ("single", 1)]
    for row, number in zip(rows, FRONT, strict=False):
        accuracy, latency = MO_TRIALS[number][0]
        assert row["objectives"] == ["accuracy", "latency"] and row["values"] == [accuracy, latency]
        assert (row["value_accuracy"], row["value_latency"], row["front_size"]) == (accuracy, latency, 2)
        assert row["direction"] == "maximize,minimize" and row["trials_to_within_1pct"] is None
        assert row["chosen_by"] == "the Pareto front (2 trials)" and row["trials_finished"] == 4
    assert [r["test_accuracy"] for r in rows] == [0.88, 0.66, 0.8]  # each trial's own (cached) evaluation
    assert [r["test_mdr_at_1fpr"] for r in rows] == [0.125, 0.5, None]  # not in the old cache: null
    assert "values" not in rows[2] and "value_accuracy" not in rows[2] and rows[2]["best_value"] == 0.85
    assert any("Pareto front" in note for note in json.loads(result.stdout)["notes"])

    csv_rows = list(csv.DictReader(io.StringIO(invoke("compare", "--storage", url, "--format", "csv").stdout)))
    assert [r["value_latency"] for r in csv_rows] == ["50.0", "10.0", ""]  # a single-objective row: blank
    assert [r["test_mdr_at_1fpr"] for r in csv_rows] == ["0.125", "0.5", "nan"]

    markdown = invoke("compare", "--storage", url, "--format", "markdown").stdout
    lines = markdown.splitlines()
    assert lines[0] == "| | mo #0 | mo #2 | single |"
    cells = {
        line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in lines[2:] if "|" in line
    }
    assert cells["Trial: objective values"] == [
        "#0: accuracy 0.9000, latency 50",
        "#2: accuracy 0.7000, latency 10",
        "#1: accuracy 0.8500",
    ]
    assert cells["Test MDR at 1% FPR"] == ["0.1250", "0.5000", "-"]
    assert cells["Test FPR at 5% FNR"] == ["0.2500"] * 3
    assert cells["Trials to within 1% of best"][:2] == ["n/a", "n/a"]
    table = invoke("compare", "--storage", url, "--study", "mo").stdout
    assert "mo #0" in table and "mo #2" in table and "Test MDR at 1% FPR" in table


def test_a_single_objective_table_has_its_mdr_row_and_no_front_note(url: str) -> None:
    markdown = invoke("compare", "--storage", url, "--study", "single", "--format", "markdown").stdout
    assert markdown.splitlines()[0] == "| | single |"
    assert "| Best trial: val accuracy | #1: 0.8500 |" in markdown and "| Test MDR at 1% FPR | - |" in markdown
    assert "Pareto front" not in markdown and "MDR at 1% FPR: fraction of reals" in markdown


def test_the_cache_keeps_every_front_trials_evaluation(url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Evaluating a trial caches it in place of the entries of trials off the front (trial 3's): the cache holds each
    front trial's, so the next compare evaluates nothing."""
    _cache(optuna.load_study(study_name="mo", storage=url), {0: _evaluation(0.88, 0.125), 3: _evaluation(0.5, 0.9)})
    study = load_study(url, "mo")  # read-only, as compare reads it: the cache is written through another handle
    evaluated: list[int] = []

    def evaluate(study: optuna.Study, trial: optuna.trial.FrozenTrial, *args: object) -> report_eval.Evaluation:
        cached = report_eval.cached_evaluation(study, trial)
        if cached is not None:
            return cached
        evaluated.append(trial.number)
        evaluation = _evaluation(0.66, 0.5)
        report_eval.store_evaluation(study, trial, evaluation, url)  # as `best_evaluation` does
        return evaluation

    monkeypatch.setattr(front_module, "best_evaluation", evaluate)
    first = front_module.front_evaluations(study, url=url)
    assert [t.number for t, _ in first] == FRONT and evaluated == [2]
    assert set(load_study(url, "mo").user_attrs[CACHE_ATTR]) == {"0:fp-mo", "2:fp-mo"}
    again = front_module.front_evaluations(load_study(url, "mo"), url=url)
    assert evaluated == [2] and [e for _, e in again] == [e for _, e in first]


def test_a_study_without_a_complete_trial_has_no_front(tmp_path: Path) -> None:
    url = store_url(tmp_path)
    study = _study(url, "empty", "accuracy,latency", ["maximize", "minimize"], ["val_accuracy", "latency_us"])
    study.tell(study.ask(), state=optuna.trial.TrialState.FAIL)
    with pytest.raises(report_eval.NoCompletedTrial, match="1 fail"):
        compare.compare_front(load_study(url, "empty"))
    (status,) = json.loads(invoke("status", "--storage", url, "--format", "json").stdout)
    assert status["front"] == [] and status["objectives"] == ["accuracy", "latency"]


# --- report ---------------------------------------------------------------------------------------------------


def test_report_shows_the_pareto_front_figure_and_table(url: str, tmp_path: Path) -> None:
    out = tmp_path / "report"
    result = invoke("report", "--storage", url, "--study", "mo", "--out", out)
    assert result.exit_code == 0, result.output
    page = (out / "study-mo.html").read_text()
    assert "Pareto front: 2 trials" in page and "accuracy maximized, latency minimized" in page
    assert "Best configuration" not in page and "Misclassified" not in page
    section = page[page.index("Pareto front: 2 trials") : page.index("(a) Improvement time series")]
    assert section.count('class="plotly-graph-div"') == 1 and "Best Trial" in section  # Optuna's front trace
    rows = re.findall(r"<tr><td>#(\d+)</td><td>([^<]*)</td><td>([^<]*)</td>", section)
    assert rows == [("0", "0.9000", "50"), ("2", "0.7000", "10")]
    assert "test MDR at 1% FPR" in section and "<td>0.1250</td>" in section
    assert "not drawn: a multi-objective study" in page  # intermediate values: none, said so
    index = (out / "index.html").read_text()
    assert "<th>mo #0</th><th>mo #2</th>" in index and "Test MDR at 1% FPR" in index
    assert "Pareto front of 2: #0, #2" in index

    study = load_study(url, "mo")
    plot = pareto.pareto_figure(study)
    assert plot.figure is not None
    best = next(trace for trace in plot.figure.data if "Best Trial" in (trace.hovertemplate or ""))
    points = sorted(zip(best.x, best.y, strict=True))
    assert points == sorted(MO_TRIALS[n][0] for n in FRONT)
    assert plot.figure.layout.xaxis.title.text == "accuracy" and plot.figure.layout.yaxis.title.text == "latency"
    progress = figures.search_progress(study)  # the first objective's running best
    assert progress.best == [0.9, 0.9, 0.9, 0.9] and progress.objective.startswith("accuracy")


def test_a_front_of_four_objectives_is_a_note_not_a_failure(tmp_path: Path) -> None:
    study = optuna.create_study(directions=["maximize", "minimize", "minimize", "minimize"])
    study.optimize(lambda t: [t.suggest_float("x", 0, 1), 1.0, 2.0, 3.0], n_trials=3)
    plot = pareto.pareto_figure(study)
    assert plot.figure is None and "objective" in plot.note
    assert not math.isnan(compare.metric({"mdr_at_1fpr": 0.5}, "mdr_at_1fpr"))
    assert math.isnan(compare.metric({}, "mdr_at_1fpr")) and compare.metric_cell({}, "mdr_at_1fpr") == "-"


# --- a real study ---------------------------------------------------------------------------------------------


def test_a_real_multi_objective_study_end_to_end(tmp_path: Path, small_file: Path) -> None:
    """Trained trials (one epoch): status, compare and report agree with Optuna's front, and each front trial's
    model is its own (its validation metrics reproduce the trial's record)."""
    url = store_url(tmp_path)
    space = SearchSpace.from_dict(RESULT_SPACE)
    cfg = StudyConfig(storage=url, data=small_file, max_epochs=1, n_trials=4, space=space, objective="accuracy,params")
    run_study(cfg)
    study = load_study(url, "random")
    front = sorted(study.best_trials, key=lambda t: (-t.values[0], t.number))
    (status,) = json.loads(invoke("status", "--storage", url, "--format", "json").stdout)
    assert [t["number"] for t in status["front"]] == [t.number for t in front]
    assert status["objectives"] == ["accuracy", "params"]
    result = invoke("compare", "--storage", url, "--format", "json")
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["studies"]
    assert [(r["best_trial"], r["values"]) for r in rows] == [(t.number, t.values) for t in front]
    assert all(r["reproduced"] is True for r in rows)
    assert all(r["val_accuracy"] == pytest.approx(t.values[0]) for r, t in zip(rows, front, strict=True))
    cached = set(load_study(url, "random").user_attrs[CACHE_ATTR])
    assert {key.split(":")[0] for key in cached} == {str(t.number) for t in front}
    report = invoke("report", "--storage", url, "--out", tmp_path / "report")
    assert report.exit_code == 0, report.output
    assert f"Pareto front: {len(front)} trial" in (tmp_path / "report" / "study-random.html").read_text()


def test_the_importances_of_a_maximised_objective_of_a_front_point_the_right_way() -> None:
    """Accuracy (maximised) driven by x, the cost (minimised) by y: the importances name x for the accuracy and y for
    the cost. (Optuna's evaluator, asked for a multi-objective study's objectives, took every one as minimised: it
    named y for the accuracy.)"""
    from hpo_astro.report.figures import optuna_plots

    rng = np.random.default_rng(0)
    study = optuna.create_study(directions=["maximize", "minimize"])
    space = {name: optuna.distributions.FloatDistribution(0, 1) for name in ("x", "y")}
    for _ in range(120):
        x, y = rng.random(), rng.random()
        study.add_trial(optuna.trial.create_trial(params={"x": x, "y": y}, distributions=space, values=[x, y]))
    (plot,) = [p for p in optuna_plots(study) if p.key == "importances"]
    assert plot.figure is not None
    top = {trace.name: max(zip(trace.x, trace.y, strict=True))[1] for trace in plot.figure.data}
    assert list(top.values()) == ["x", "y"], top
