"""The report's figures read right: integer epoch and trial axes, the colour scale described as it is drawn, legends
where trials' lines overlap, gallery captions that tell the truth from the prediction."""

from __future__ import annotations

import re
from pathlib import Path

import optuna
import pytest
from helpers import invoke
from plotly.colors import sample_colorscale

from hpo_astro.report import figures
from hpo_astro.store.record import HISTORY_SYSTEM_ATTR


def _study(n_trials: int, epochs: int) -> optuna.Study:
    """An in-memory study whose trials have `epochs` epochs of curves each, reported as intermediate values."""
    study = optuna.create_study(direction="maximize")
    for number in range(n_trials):
        history = [
            {
                "epoch": e,
                "train_loss": 1 / (e + number),
                "train_accuracy": 0.5 + 0.01 * e,
                "val_loss": 1 / (e + number),
                "val_accuracy": 0.5 + 0.01 * e,
                "val_roc_auc": 0.6,
                "lr": 1e-3,
                "seconds": 1.0,
            }
            for e in range(1, epochs + 1)
        ]
        study.add_trial(
            optuna.trial.create_trial(
                value=history[-1]["val_accuracy"],
                params={"lr": 1e-3},
                distributions={"lr": optuna.distributions.CategoricalDistribution([1e-3, 1e-2])},
                intermediate_values={h["epoch"]: h["val_accuracy"] for h in history},
                user_attrs={"val_metrics": {"accuracy": history[-1]["val_accuracy"], "loss": 0.3}},
                system_attrs={HISTORY_SYSTEM_ATTR: history},
            )
        )
    return study


def _x_axes(fig: object) -> list:
    return [axis for name, axis in fig.layout.to_plotly_json().items() if name.startswith("xaxis")]  # type: ignore[attr-defined]


@pytest.mark.parametrize(("epochs", "step"), [(3, 1), (12, 2), (30, 5), (100, 10)])
def test_epoch_and_trial_axes_have_integer_ticks(epochs: int, step: int) -> None:
    """Plotly's automatic ticks put 0.5, 1.5, 2.5 on a three-epoch axis."""
    study = _study(3, epochs)
    curves = figures.curves_figure(study)
    axes = _x_axes(curves)
    assert len(axes) == 4 and all(a["dtick"] == step and a["tickformat"] == "d" for a in axes)
    intermediate = next(p.figure for p in figures.optuna_plots(study) if p.key == "intermediate")
    assert intermediate is not None
    (axis,) = _x_axes(intermediate)
    assert axis["dtick"] == step and axis["title"]["text"] == "epoch"
    for fig in (figures.improvement_figure(study), figures.overlay_figure([figures.search_progress(study)], "trial")):
        assert all(a["dtick"] == 1 and a["tickformat"] == "d" for a in _x_axes(fig))
    counts = figures.distributions_figure(study).layout  # trials per bin: 0.2 of a trial is no tick
    assert counts.yaxis.dtick == counts.yaxis2.dtick == 1 and counts.yaxis.tickformat == "d"


@pytest.mark.filterwarnings("ignore::optuna.exceptions.ExperimentalWarning")
def test_optunas_plots_name_the_objective() -> None:
    study = _study(3, 3)
    study.set_metric_names(["val_accuracy"])  # as `run` sets it
    plots = {p.key: p.figure for p in figures.optuna_plots(study)}
    assert plots["history"].layout.yaxis.title.text == "val_accuracy"  # not "Objective Value"
    assert plots["intermediate"].layout.yaxis.title.text == "val_accuracy per epoch"


def test_the_colour_scale_is_described_as_drawn() -> None:
    """The title said "blue early, yellow late"; Viridis starts dark purple."""
    (first, last) = [
        tuple(int(c) for c in re.findall(r"\d+", colour)) for colour in sample_colorscale(figures.ORDER_SCALE, [0, 1])
    ]
    assert first[2] > first[1] and first[0] > first[1]  # purple: red and blue over green
    assert last[0] > 200 and last[1] > 200 and last[2] < 100  # yellow
    title = figures.curves_figure(_study(3, 3)).layout.title.text
    assert "dark purple early, yellow late" in title and "blue early" not in title


@pytest.mark.parametrize("n_trials", [3, figures.LEGEND_LIMIT + 5])
def test_legends_name_the_trials_whose_lines_overlap(n_trials: int) -> None:
    study = _study(n_trials, 3)
    curves = figures.curves_figure(study)
    named = [t.name for t in curves.data if t.showlegend]
    intermediate = next(p.figure for p in figures.optuna_plots(study) if p.key == "intermediate")
    if n_trials <= figures.LEGEND_LIMIT:  # one entry per trial (its four panels share it), and in Optuna's plot
        assert named == [f"trial {i}" for i in range(n_trials)]
        assert intermediate.layout.showlegend and intermediate.data[0].name == "trial 0"
    else:  # too many to list: the colour bar says the order
        assert named == [] and not intermediate.layout.showlegend


def test_gallery_captions_say_which_label_is_the_truth_and_which_the_prediction(store: str, tmp_path: Path) -> None:
    result = invoke("report", "--storage", store, "--study", "random", "--out", tmp_path / "r")
    assert result.exit_code == 0, result.output
    page = (tmp_path / "r" / "study-random.html").read_text()
    captions = re.findall(r"<figcaption>(.*?)</figcaption>", page)
    assert captions
    for caption in captions:
        found = re.fullmatch(r"test #\d+: truth (real|bogus), predicted (real|bogus) \(score [01]\.\d{3}\)", caption)
        assert found and found[1] != found[2], caption  # misclassified: they differ
