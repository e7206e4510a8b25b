"""compare, report and dashboard: the final table's numbers, its cache, the HTML report's figures and
self-containment, and clear refusals (empty store, unknown study, only pruned/failed trials, bad options)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import optuna
import pytest
from helpers import GOOD_STUDIES, assert_refused, invoke, patience

from hpo_astro.core.train import evaluate, train
from hpo_astro.data.prepare import PrepConfig, load_splits
from hpo_astro.report import compare, figures
from hpo_astro.results import evaluate as report_eval
from hpo_astro.store.record import PARAMS_FULL_ATTR, SYSTEM_PREFIX, params_full


def _json(store: str, *extra: object) -> dict:
    result = invoke("compare", "--storage", store, "--study", "random", "--study", "tpe", "--format", "json", *extra)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


# --- compare --------------------------------------------------------------------------------------------------


def test_compare_evaluates_the_best_trial_on_every_split(store: str, small_file: Path) -> None:
    """The table's numbers equal an independent retraining of the best trial, evaluated here."""
    table = _json(store)
    assert [row["study"] for row in table["studies"]] == list(GOOD_STUDIES)
    data = load_splits(small_file, PrepConfig())
    for row in table["studies"]:
        study = optuna.load_study(study_name=row["study"], storage=store)
        best = study.best_trial
        assert row["best_trial"] == best.number and row["best_value"] == best.value
        assert row["params"] == params_full(best)
        model = train(params_full(best), data, max_epochs=1, seed=best.user_attrs["train_seed"]).model
        for split in ("train", "val", "test"):
            expected = evaluate(model.cpu(), *data.split(split), data.pos_weight)
            assert row[f"{split}_loss"] == pytest.approx(expected.loss, rel=1e-6)
            assert row[f"{split}_accuracy"] == pytest.approx(expected.accuracy)
            assert row[f"{split}_roc_auc"] == pytest.approx(expected.roc_auc)
            assert row[f"{split}_fpr_at_5fnr"] == pytest.approx(expected.fpr_at_5fnr)
        # the saved best weights reproduce what the trial recorded during the search
        assert row["reproduced"] is True and row["model_source"] == "weights"
        assert row["val_accuracy"] == pytest.approx(best.user_attrs["val_metrics"]["accuracy"])
        assert row["trials_finished"] == 3 and row["trials_failed"] == 0
        durations = sum(t.duration.total_seconds() for t in study.trials)
        assert row["wall_time_sum_s"] == pytest.approx(durations)
        assert 1 <= row["trials_to_within_1pct"] <= 3


def test_a_second_compare_is_cached_and_identical(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    first = invoke("compare", "--storage", store, "--study", "random", "--study", "tpe", "--format", "csv")
    assert first.exit_code == 0
    entry = optuna.load_study(study_name="random", storage=store).user_attrs[report_eval.CACHE_ATTR]
    assert len(entry) == 1

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cached compare must not retrain")

    monkeypatch.setattr(report_eval, "retrain_trial", no_training)
    monkeypatch.setattr(report_eval, "study_data", no_training)  # not even the data is read
    second = invoke("compare", "--storage", store, "--study", "random", "--study", "tpe", "--format", "csv")
    assert second.exit_code == 0, second.output
    assert second.stdout == first.stdout and "retraining" not in second.stderr


def test_compare_retrains_when_the_saved_weights_are_gone(store: str, tmp_path: Path) -> None:
    study = optuna.load_study(study_name="random", storage=store)
    assert report_eval.load_trial_model(study, study.best_trial) is not None  # saved by the search
    study.set_user_attr("artifacts", str(tmp_path / "moved-away"))  # this copy of the store only
    assert report_eval.load_trial_model(study, study.best_trial) is None
    result = invoke("compare", "--storage", store, "--study", "random", "--format", "json")
    assert result.exit_code == 0 and "retraining best trial" in result.stderr
    import json

    row = json.loads(result.stdout)["studies"][0]
    assert row["model_source"] == "retrained" and row["reproduced"] is True


def test_a_store_copied_with_its_artifacts_folder_still_finds_the_weights(
    store: str, tmp_path: Path, result_template: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store copied from a cluster to a laptop together with `<file>.artifacts/`: the path the study recorded
    is gone, the weights beside the store are used (no retraining), and nothing is created at the old path."""
    import shutil

    shutil.copytree(result_template.with_name(result_template.name + ".artifacts"), tmp_path / "optuna.db.artifacts")
    study = optuna.load_study(study_name="tpe", storage=store)
    gone = tmp_path / "cluster" / "scratch" / "optuna.db.artifacts"
    study.set_user_attr("artifacts", str(gone))
    assert report_eval.load_trial_model(study, study.best_trial) is None  # without the store's location
    assert report_eval.load_trial_model(study, study.best_trial, store) is not None

    def no_training(*args: object, **kwargs: object) -> None:
        raise AssertionError("the saved weights must be found")

    monkeypatch.setattr(report_eval, "retrain_trial", no_training)
    for command in (["compare", "--format", "json"], ["export", "--out", tmp_path / "model"]):
        result = invoke(*command, "--storage", store, "--study", "tpe")
        assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "model" / "model.json").read_text())["study"]["trial"] == study.best_trial.number
    assert not gone.exists() and not (tmp_path / "cluster").exists()


def test_the_cache_is_keyed_by_trial_and_data_fingerprint(store: str) -> None:
    _json(store)
    study = optuna.load_study(study_name="random", storage=store)
    key = f"{study.best_trial.number}:{study.user_attrs['data_fingerprint']}"
    assert set(study.user_attrs[report_eval.CACHE_ATTR]) == {key}
    cache = study.user_attrs[report_eval.CACHE_ATTR]
    cache[key]["test"]["accuracy"] = 0.123  # what the table shows comes from the cache
    study.set_user_attr(report_eval.CACHE_ATTR, cache)
    assert _json(store)["studies"][0]["test_accuracy"] == 0.123


def test_the_cache_keeps_only_the_current_best_trials_entry(store: str) -> None:
    """A new best trial replaces the previous best's entry: the cache does not grow with every best there was."""
    _json(store)
    study = optuna.load_study(study_name="random", storage=store)
    old, fingerprint = study.best_trial, study.user_attrs["data_fingerprint"]
    assert set(study.user_attrs[report_eval.CACHE_ATTR]) == {f"{old.number}:{fingerprint}"}
    maximize = study.direction == optuna.study.StudyDirection.MAXIMIZE
    study.add_trial(  # a better trial with the same configuration (retrained: the saved weights are the old best's)
        optuna.trial.create_trial(
            params=old.params,
            distributions=old.distributions,
            value=old.value + (1.0 if maximize else -1.0),
            user_attrs={key: old.user_attrs[key] for key in ("train_seed", "val_metrics")},
            system_attrs={SYSTEM_PREFIX + PARAMS_FULL_ATTR: params_full(old)},
        )
    )
    new = study.best_trial
    assert new.number != old.number
    assert _json(store)["studies"][0]["best_trial"] == new.number
    assert set(study.user_attrs[report_eval.CACHE_ATTR]) == {f"{new.number}:{fingerprint}"}


def test_markdown_table_is_shaped_like_the_papers(store: str, tmp_path: Path) -> None:
    out = tmp_path / "table.md"
    result = invoke(
        "compare", "--storage", store, "--study", "random", "--study", "tpe", "--format", "markdown", "--out", out
    )
    assert result.exit_code == 0, result.output
    text = out.read_text()
    lines = text.splitlines()
    assert lines[0] == "| | random | tpe |"
    rows = {line.split("|")[1].strip(): line for line in lines if line.startswith("| ")}
    for label in (
        "Final train loss",
        "Final val loss",
        "Final test loss",
        "Final train accuracy",
        "Final val accuracy",
        "Final test accuracy",
        "Test ROC AUC",
        "Test precision",
        "Test recall",
        "Test F1",
        "Test FPR at 5% FNR",
        "Total wall time",
        "Trials used",
        "Trials to within 1% of best",
    ):
        assert label in rows, label
    test_acc = _json(store)["studies"][0]["test_accuracy"]
    assert f"| {test_acc:.4f} |" in rows["Final test accuracy"]
    assert "within 1% (relative)" in text


def test_rich_table_is_the_default(store: str) -> None:
    result = invoke("compare", "--storage", store, "--study", "tpe")
    assert result.exit_code == 0, result.output
    assert "Final test accuracy" in result.stdout and "tpe" in result.stdout


def test_trials_to_within_one_percent() -> None:
    assert compare.trials_to_within([0.5, 0.9, 0.995, 1.0], maximize=True) == 3  # 0.995 >= 0.99
    assert compare.trials_to_within([0.5, None, 0.98, 1.0], maximize=True) == 4  # pruned trials count
    assert compare.trials_to_within([2.0, 1.01, 1.0], maximize=False) == 2  # 1.01 <= 1.01
    assert compare.trials_to_within([-2.0, -1.0], maximize=True) == 2  # relative to |best|
    assert compare.trials_to_within([None, None], maximize=True) is None


def test_search_stats_count_failed_and_pruned_apart(store: str) -> None:
    stats = compare.search_stats(optuna.load_study(study_name="pruned-only", storage=store))
    assert (stats.n_finished, stats.n_complete, stats.n_pruned, stats.n_failed) == (2, 0, 2, 1)
    assert stats.trials_to_within is None and stats.wall_time_sum_s > 0


# --- refusals -------------------------------------------------------------------------------------------------


def test_study_with_only_pruned_or_failed_trials(store: str, tmp_path: Path) -> None:
    named = invoke("compare", "--storage", store, "--study", "pruned-only")
    assert_refused(named, "study 'pruned-only' has no completed trial (2 pruned, 1 fail)")
    everything = invoke("compare", "--storage", store, "--format", "csv")
    assert everything.exit_code == 0, everything.output
    assert "skipped: study 'pruned-only' has no completed trial" in everything.stderr
    assert everything.stdout.count("\n") == 3  # header + the two good studies
    report = invoke("report", "--storage", store, "--study", "pruned-only", "--out", tmp_path / "r")
    assert report.exit_code == 0, report.output
    page = (tmp_path / "r" / "study-pruned-only.html").read_text()
    assert "has no completed trial" in page and "(a) Improvement time series" in page


def test_empty_store_and_missing_store(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    for command in (
        ["compare"],
        ["report", "--out", tmp_path / "r"],
        ["export", "--study", "x", "--out", tmp_path / "m"],
    ):
        assert_refused(invoke(*command, "--storage", f"sqlite:///{missing}"), "no study store at")
        assert_refused(invoke(*command, "--storage", f"journal:{tmp_path / 'missing.log'}"), "no study store at")
    assert not missing.exists() and not (tmp_path / "missing.log").exists()  # reading never creates a store
    empty = tmp_path / "empty.db"
    optuna.storages.RDBStorage(f"sqlite:///{empty}")
    assert_refused(invoke("compare", "--storage", f"sqlite:///{empty}"), "no studies in")
    assert_refused(invoke("report", "--storage", f"sqlite:///{empty}", "--out", tmp_path / "r"), "no studies in")
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["compare", "--study", "nope"], "no study named 'nope'"),
        (["compare", "--format", "xml"], "'xml' is not one of 'table', 'markdown', 'csv', 'json'"),
        (["report", "--study", "nope", "--out", "r"], "no study named 'nope'"),
        (["compare", "--storage", "not a url"], "malformed storage URL"),
    ],
)
def test_bad_input(args: list[str], message: str, store: str) -> None:
    storage = [] if "--storage" in args else ["--storage", store]
    assert_refused(invoke(*args, *storage), message)


def test_moved_data_file_is_refused_or_given(store: str, tmp_path: Path, small_file: Path) -> None:
    study = optuna.load_study(study_name="tpe", storage=store)
    study.set_user_attr("data_source", str(tmp_path / "gone.npy"))
    assert_refused(invoke("compare", "--storage", store, "--study", "tpe"), "pass --data PATH")
    other = tmp_path / "other.npy"
    from hpo_astro.data import exromana, simulate

    exromana.save(simulate.simulate_records(n=60, seed=1), other)
    assert_refused(invoke("compare", "--storage", store, "--study", "tpe", "--data", other), "fingerprint")
    ok = invoke("compare", "--storage", store, "--study", "tpe", "--data", small_file)
    assert ok.exit_code == 0, ok.output
    assert_refused(invoke("report", "--storage", store, "--study", "tpe", "--out", tmp_path / "r"), "--data PATH")
    report = invoke("report", "--storage", store, "--study", "tpe", "--out", tmp_path / "r", "--data", small_file)
    assert report.exit_code == 0 and "Misclassified test cutouts" in (tmp_path / "r" / "study-tpe.html").read_text()


# --- report ---------------------------------------------------------------------------------------------------


def test_report_html_has_every_figure_and_no_external_url(store: str, tmp_path: Path) -> None:
    from plotly.offline import get_plotlyjs

    out = tmp_path / "report"
    result = invoke("report", "--storage", store, "--out", out)
    assert result.exit_code == 0, result.output
    pages = {p.name: p.read_text() for p in out.glob("*.html")}
    assert set(pages) == {"index.html", "study-random.html", "study-tpe.html", "study-pruned-only.html"}
    plotlyjs = get_plotlyjs()
    for name, text in pages.items():
        assert text.count(plotlyjs[:300]) == 1 and plotlyjs in text, f"{name}: plotly.js must be inline, once"
        assert not re.search(r"<script[^>]*\bsrc\s*=", text), name  # every script is inline
        # Outside plotly.js itself (whose map-tile URLs serve only map traces), no URL at all: nothing is fetched.
        ours = text.replace(plotlyjs, "")
        assert not re.search(r"https?://|(src|href)\s*=\s*[\"']?//", ours, re.I), name
    index = pages["index.html"]
    for name in ("random", "tpe", "pruned-only"):
        assert f'href="study-{name}.html"' in index
    assert index.count('class="plotly-graph-div"') == 2  # running best vs trial number, vs trial time
    assert "Final test accuracy" in index
    for name in GOOD_STUDIES:
        page = pages[f"study-{name}.html"]
        for heading in (
            "(a) Improvement time series",
            "(b) Distributions over trials",
            "(c) Per-epoch curves of all trials",
            "Optimisation history",
            "Parameter importances",
            "Parallel coordinates",
            "Intermediate values",
            "Best model on the test split",
            "Misclassified test cutouts",
        ):
            assert heading in page, (name, heading)
        drawn = page.count('class="plotly-graph-div"')
        notes = page.count('<p class="note">not drawn:')
        assert drawn + notes == 3 + 4 + 1 and drawn >= 6  # paper figures + Optuna's + confusion matrix
        wrong = re.search(r"(\d+) of (\d+) test cutouts misclassified", page)
        assert wrong and page.count('<img src="data:image/png;base64,') == min(int(wrong[1]), 40)
    assert "misclassified" not in pages["study-pruned-only.html"]


def test_report_figures_hold_the_trials(store: str) -> None:
    study = optuna.load_study(study_name="random", storage=store)
    trials = figures.finished_trials(study)
    curves = figures.curves_figure(study)
    assert len(curves.data) == 4 * len(trials) + 1  # 4 panels per trial + the trial-order colour bar
    improvement = figures.improvement_figure(study)
    best = next(t for t in improvement.data if t.name == "running best val accuracy")
    accuracies = [t.user_attrs["val_metrics"]["accuracy"] for t in trials]
    assert list(best.y) == [max(accuracies[: i + 1]) for i in range(len(accuracies))]
    dist = figures.distributions_figure(study)
    assert sorted(dist.data[1].x) == sorted(accuracies)
    progress = figures.search_progress(study)
    assert progress.best[-1] == study.best_value and progress.minutes == sorted(progress.minutes)
    counts = figures.confusion_counts([1, 1, 0, 0, 1], [0.9, 0.2, 0.7, 0.1, 0.5], 0.5)
    assert counts.tolist() == [[1, 1], [1, 2]]


def test_optuna_plot_that_cannot_be_drawn_becomes_a_note() -> None:
    study = optuna.create_study()
    plots = {p.key: p for p in figures.optuna_plots(study)}  # no trials at all
    assert set(plots) == {"history", "importances", "parallel", "intermediate"}
    assert all(p.figure is None and p.note for p in plots.values() if p.key != "history")


def test_png_without_a_browser_is_one_clear_line(store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import plotly.io as pio

    def no_chrome(*args: object, **kwargs: object) -> bytes:
        raise RuntimeError("\n\nKaleido requires Google Chrome to be installed.\n\nEither download ...")

    monkeypatch.setattr(pio, "to_image", no_chrome)
    result = invoke("report", "--storage", store, "--out", tmp_path / "r", "--png")
    assert_refused(result, "--png cannot write images: Kaleido requires Google Chrome to be installed.")
    assert not (tmp_path / "r").exists()  # refused before any work


def test_png_writes_images_when_kaleido_can(store: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import plotly.io as pio

    monkeypatch.setattr(pio, "to_image", lambda fig, **kw: b"\x89PNG fake " + kw["format"].encode())
    result = invoke("report", "--storage", store, "--study", "tpe", "--out", tmp_path / "r", "--png")
    assert result.exit_code == 0, result.output
    images = sorted(p.name for p in (tmp_path / "r" / "png").iterdir())
    assert "tpe-improvement.png" in images and "index-overlay-time.png" in images and "tpe-confusion.png" in images
    assert 'href="png/tpe-curves.png"' in (tmp_path / "r" / "index.html").read_text()


# --- dashboard ------------------------------------------------------------------------------------------------


def test_dashboard_binds_to_localhost_and_prints_the_url(store: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from hpo_astro.results import dashboard as dashboard_module

    calls: list[tuple] = []
    monkeypatch.setattr(
        dashboard_module, "run_server", lambda storage, host, port, **_: calls.append((storage, host, port))
    )
    result = invoke("dashboard", "--storage", store, "--port", 8099)
    assert result.exit_code == 0, result.output
    assert "http://127.0.0.1:8099/" in result.stdout and "warning" not in result.stderr
    ((storage, host, port),) = calls
    assert (host, port) == ("127.0.0.1", 8099) and isinstance(storage, optuna.storages.BaseStorage)
    exposed = invoke("dashboard", "--storage", store, "--host", "0.0.0.0")
    assert exposed.exit_code == 0 and "http://0.0.0.0:8080/" in exposed.stdout and "no authentication" in exposed.stderr


def test_dashboard_bad_input(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, store: str) -> None:
    from hpo_astro.results import dashboard as dashboard_module

    monkeypatch.setattr(dashboard_module, "run_server", lambda *a, **k: pytest.fail("must not start"))
    assert_refused(invoke("dashboard", "--storage", f"sqlite:///{tmp_path / 'none.db'}"), "no study store at")
    bad_port = invoke("dashboard", "--storage", store, "--port", 0)
    assert_refused(bad_port, "--port")


# --- scripts/reproduce_paper.sh ------------------------------------------------------------------------------


def test_reproduce_paper_script_arguments() -> None:
    script = Path(__file__).resolve().parents[2] / "scripts" / "reproduce_paper.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    usage = subprocess.run(["bash", str(script), "--help"], capture_output=True, text=True, timeout=patience(30))
    assert usage.returncode == 0 and "--quick" in usage.stdout and "set -euo" not in usage.stdout
    bad = subprocess.run(["bash", str(script), "--fast"], capture_output=True, text=True, timeout=patience(30))
    assert bad.returncode == 2 and bad.stderr.startswith("error: unknown argument '--fast'")


def test_compare_checks_its_format_when_called_from_python() -> None:
    from hpo_astro.errors import UserError
    from hpo_astro.report.compare import check_format

    assert check_format("csv") == "csv"
    with pytest.raises(UserError, match="unknown format 'xml'; known: table, markdown, csv, json"):
        check_format("xml")
