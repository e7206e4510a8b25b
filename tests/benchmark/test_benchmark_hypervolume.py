"""A multi-objective benchmark (`--objective accuracy,params`): each study scored by the hypervolume of its Pareto front
in one normalised box (`hpo_astro.benchmark.hypervolume`), through the same statistics as a single objective. The
hypervolume on cases with a hand-computed answer; a small benchmark on the shipped table whose every number is
recomputed here from the studies and the recorded box, independently of Optuna's implementation; the refusals."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
from helpers import assert_refused, invoke

from hpo_astro.benchmark.hypervolume import (
    LABEL,
    REFERENCE,
    Bound,
    Box,
    box_of,
    compute_hypervolume,
    running_hypervolume,
)
from hpo_astro.study.objectives import parse_objectives

UNIT = Box((Bound("a", "minimize", 0.0, 1.0), Bound("b", "minimize", 0.0, 1.0)))  # normalising changes nothing


# --- the hypervolume, known answers --------------------------------------------------------------------------------


def test_two_points_cover_the_union_of_their_boxes_up_to_the_reference() -> None:
    # [0.2, 1.1] x [0.6, 1.1] and [0.5, 1.1] x [0.3, 1.1]: 0.9*0.5 + 0.6*0.8 - 0.6*0.5 (their overlap) = 0.63
    assert UNIT.hypervolume([(0.2, 0.6), (0.5, 0.3)]) == pytest.approx(0.63)
    assert compute_hypervolume(np.array([[0.2, 0.6], [0.5, 0.3]]), np.array([1.1, 1.1])) == pytest.approx(0.63)
    assert UNIT.hypervolume([(0.2, 0.6)]) == pytest.approx(0.9 * 0.5)
    assert UNIT.hypervolume([]) == 0.0
    assert UNIT.hypervolume([(0.0, 0.0)]) == pytest.approx(REFERENCE**2)  # the ideal point: the largest there is


def test_a_dominated_point_adds_nothing() -> None:
    front = [(0.2, 0.6), (0.5, 0.3)]
    assert UNIT.hypervolume([*front, (0.6, 0.7)]) == pytest.approx(0.63)
    assert UNIT.hypervolume([*front, (0.5, 0.3)]) == pytest.approx(0.63)  # a repeat of a front point: nothing


def test_a_maximised_objective_is_flipped_and_each_objective_normalised_by_the_benchmarks_range() -> None:
    objectives = parse_objectives("accuracy,params")
    box = box_of([(0.9, 300_000), (0.5, 100_000), (0.7, 200_000)], objectives)
    assert box.bounds == (
        Bound("accuracy", "maximize", 0.9, 0.5),  # best normalises to 0, worst to 1
        Bound("params", "minimize", 100_000, 300_000),
    )
    assert box.normalise((0.9, 300_000)) == pytest.approx([0.0, 1.0])
    assert box.normalise((0.7, 200_000)) == pytest.approx([0.5, 0.5])
    # (0, 1) and (1, 0) normalised: two 1.1 x 0.1 strips overlapping in 0.1 x 0.1
    assert box.hypervolume([(0.9, 300_000), (0.5, 100_000)]) == pytest.approx(0.21)
    # with (0.5, 0.5) too: + the 0.5 x 0.5 square it alone dominates
    assert box.hypervolume([(0.9, 300_000), (0.5, 100_000), (0.7, 200_000)]) == pytest.approx(0.46)
    # higher accuracy is better: 0.9 at the same size covers more than 0.5
    assert box.hypervolume([(0.9, 200_000)]) > box.hypervolume([(0.5, 200_000)])
    # an objective every trial shares normalises to 0 (nothing to trade): the volume is the other one's times 1.1
    flat = box_of([(0.9, 5.0), (0.5, 5.0)], objectives)
    assert flat.hypervolume([(0.7, 5.0)]) == pytest.approx(0.6 * 1.1)


def test_the_running_hypervolume_grows_with_the_front_and_skips_trials_without_values() -> None:
    points = [(0.2, 0.6), None, (0.6, 0.7), (0.5, 0.3), (0.1, 0.1)]
    assert running_hypervolume(points, UNIT) == pytest.approx([0.45, None, 0.45, 0.63, 1.0])


# --- a small benchmark on the shipped table, recomputed from its studies -----------------------------------------

N_TRIALS = 8


def hypervolume_2d(losses: list[tuple[float, float]], reference: float) -> float:
    """The 2-D hypervolume by a sweep, written here so that the check does not reuse Optuna's code."""
    total, best_second = 0.0, reference
    for first, second in sorted(losses):
        if second < best_second:
            total += (reference - first) * (best_second - second)
            best_second = second
    return total


@pytest.fixture(scope="module")
def benchmark(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Any]]:
    folder = tmp_path_factory.mktemp("mo")
    config = folder / "short.toml"
    config.write_text("n_startup_trials = 3\n")  # tpe models after 3 trials: it differs from random within 8
    out = folder / "bench"
    args = ["-s", "random,tpe", "-r", 2, "-n", N_TRIALS, "--table", "astro-small", "--config", config]
    result = invoke("benchmark", *args, "--objective", "accuracy,params", "--out", out)
    assert result.exit_code == 0, result.output
    return out, json.loads((out / "benchmark.json").read_text())


def test_the_json_holds_hypervolumes_the_box_and_the_paired_statistics(benchmark: tuple[Path, dict[str, Any]]) -> None:
    out, payload = benchmark
    facts = payload["benchmark"]
    assert facts["objective"] == "accuracy,params" and facts["directions"] == ["maximize", "minimize"]
    assert facts["score"] == LABEL == "hypervolume (normalised, reference 1.1)" and facts["direction"] == "maximize"
    assert facts["hypervolume"]["reference"] == 1.1
    assert set(facts["hypervolume"]["bounds"]) == {"accuracy", "params"}
    assert len(payload["studies"]) == 4
    for row in payload["studies"]:
        assert 0 < row["best_value"] <= 1.1**2
        assert row["best_test"] is None and row["best_true"] is None and row["optimism"] is None
        assert row["best_trial"] is None and row["trials"] == N_TRIALS
    for s in payload["strategies"]:
        e = s["best_validation"]  # the final hypervolume: mean and bootstrap CI over the repeats
        assert e["n"] == 2 and e["ci_low"] <= e["mean"] <= e["ci_high"]
        assert s["best_test"]["n"] == 0 and s["best_test"]["mean"] is None
    (pair,) = payload["pairwise"]  # one family: the test-metric families do not apply to a front
    assert pair["family"] == "validation" and {pair["a"], pair["b"]} == {"random", "tpe"} and pair["n"] == 2
    assert {"p_value", "p_holm", "rank_biserial", "median_difference", "significant"} <= set(pair)
    for axis in ("trials", "seconds"):
        for curve in payload["anytime"][axis]["strategies"].values():
            median = [v for v in curve["median"] if v is not None]
            assert median == sorted(median) and all(0 <= v <= 1.21 for v in median)  # a hypervolume only grows
    assert any("do not apply to a front" in note for note in payload["notes"])
    html = (out / "index.html").read_text()
    assert "hypervolume (normalised, reference 1.1)" in html and "<h2>Hypervolume</h2>" in html
    assert "Selection bias" not in html and "Final quality" not in html


def test_every_final_hypervolume_is_recomputed_from_the_studies_with_the_recorded_box(
    benchmark: tuple[Path, dict[str, Any]],
) -> None:
    out, payload = benchmark
    bounds = payload["benchmark"]["hypervolume"]["bounds"]
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "studies.journal")))
    every: list[list[float]] = []
    for row in payload["studies"]:
        study = optuna.load_study(study_name=row["study"], storage=storage)
        assert study.directions == [optuna.study.StudyDirection.MAXIMIZE, optuna.study.StudyDirection.MINIMIZE]
        trials = sorted(study.get_trials(states=[optuna.trial.TrialState.COMPLETE]), key=lambda t: t.number)
        values = [t.values for t in trials[:N_TRIALS]]
        every += values
        losses = []
        for accuracy, params in values:
            acc, par = bounds["accuracy"], bounds["params"]
            losses.append(
                (
                    (acc["best"] - accuracy) / (acc["best"] - acc["worst"]),
                    (params - par["best"]) / (par["worst"] - par["best"]),
                )
            )
        assert row["best_value"] == pytest.approx(hypervolume_2d(losses, 1.1), rel=1e-12)
    # the box is that of every trial of the benchmark
    assert bounds["accuracy"]["best"] == max(v[0] for v in every)
    assert bounds["accuracy"]["worst"] == min(v[0] for v in every)
    assert bounds["params"]["best"] == min(v[1] for v in every)
    assert bounds["params"]["worst"] == max(v[1] for v in every)
    assert not math.isclose(bounds["params"]["best"], bounds["params"]["worst"])


# --- refusals --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--objective", "accuracy,latency"], "objective 'latency' and --table exclude each other"),
        (["--objective", "accuracy,params", "-s", "cmaes"], "strategy 'cmaes' cannot run a multi-objective study"),
        (["--objective", "accuracy,params", "-s", "random,bohb"], "strategy 'bohb' cannot run a multi-objective"),
        (["--objective", "accuracy,speed"], "unknown objective 'speed'"),
    ],
)
def test_what_cannot_run_several_objectives_is_refused_in_one_line(
    tmp_path: Path, extra: list[str], message: str
) -> None:
    out = tmp_path / "out"
    result = invoke("benchmark", "-s", "random,tpe", "-r", 2, "-n", 4, "--table", "astro-small", *extra, "--out", out)
    assert_refused(result, message)
    assert not out.exists()


def test_training_mode_scores_by_hypervolume_and_neither_evaluates_nor_retrains(
    tmp_path: Path, small_file: Path
) -> None:
    from hpo_astro.results.evaluate import CACHE_ATTR

    config = tmp_path / "space.toml"  # the smallest models: the test is about the benchmark, not about training
    config.write_text("[space]\nconv_layers = [1, 2]\nfc_width = [32, 64]\nlr = [1e-3, 1e-2]\nbatch_size = [256]\n")
    out = tmp_path / "train"
    args = ["benchmark", "-s", "random,tpe", "-r", 2, "-n", 2, "--max-epochs", 1, "--top-k", 1, "--config", config]
    result = invoke(*args, "--objective", "accuracy,params", "--data", small_file, "--out", out)
    assert result.exit_code == 0, result.output
    assert "8 trials run now" in result.stdout.replace("\n", " ") and "re-trainings" not in result.stdout
    payload = json.loads((out / "benchmark.json").read_text())
    assert payload["benchmark"]["mode"] == "training" and payload["benchmark"]["fresh_seeds"] == []
    assert payload["top_configurations"] == [] and not (out / "retrained.json").exists()
    assert all(0 <= r["best_value"] <= 1.21 and r["best_test"] is None for r in payload["studies"])
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(out / "studies.journal")))
    study = optuna.load_study(study_name="bench/train/random/seed-0", storage=storage)
    assert CACHE_ATTR not in study.user_attrs  # a front has no one best model to evaluate on test
