"""Population-based training (`--strategy pbt`): known answers on the toy problem of tests/pbt_toy.py (exploiting a
better member's checkpoint helps, the recorded schedule retrains the member), a population killed with SIGKILL and
resumed to the same lineage, two workers with the exact budget and the same lineage, and bad settings refused."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import optuna
import pytest
from helpers import assert_refused, invoke, journal_url, load_study, noise_splits
from optuna.trial import TrialState
from pbt_toy import TOY_SPACE, toy_train

from hpo_astro.core.space import SearchSpace
from hpo_astro.errors import UserError
from hpo_astro.store.record import WORKER_ATTR, internal_attr
from hpo_astro.study.config import StudyConfig
from hpo_astro.study.pbt_plan import lineage, lineage_figure, retrain, schedule_of
from hpo_astro.study.run import run_study

TESTS = Path(__file__).resolve().parents[1]


def _config(url: str, **overrides: Any) -> StudyConfig:
    base: dict[str, Any] = {
        "strategy": "pbt",
        "study": "pbt",
        "storage": url,
        "n_trials": 12,
        "population_size": 4,
        "ready": 1,
        "pbt_quantile": 0.25,
        "space": SearchSpace.from_dict(TOY_SPACE),
        "checkpoint_interval": 0,
    }
    return StudyConfig(**{**base, **overrides})


def _run(url: str, **overrides: Any) -> optuna.Study:
    Path(url.removeprefix("journal:")).parent.mkdir(exist_ok=True)
    return run_study(_config(url, **overrides), train=toy_train, data=noise_splits()).study


def _finals(study: optuna.Study, generation: int) -> list[float]:
    return [r["value"] for r in lineage(study) if r["generation"] == generation]


def _lineage_by_slot(study: optuna.Study) -> list[tuple]:
    """The lineage with trial numbers replaced by (generation, member): a retried trial has another number."""
    rows = lineage(study)
    place = {r["trial"]: (r["generation"], r["member"]) for r in rows}
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    return [
        (
            r["generation"],
            r["member"],
            place.get(r["parent"]),
            place.get(r["exploited_from"]),
            r["founder"],
            round(r["value"], 6),
            [(s["epochs"], s["params"]["lr"]) for s in schedule_of(trials[r["trial"]])],
        )
        for r in rows
    ]


def test_exploiting_a_better_member_helps_known_answer(tmp_path: Path) -> None:
    """Seed 0 draws the learning rates 0.2, 0.3, 0.3, 0.2 (w grows by lr per epoch). Generation 1: member 3 (last of
    the tie at 0.2) exploits member 1 (first of the tie at 0.3): w = 0.3, lr 0.3 -> 0.4, so 0.7. Generation 2:
    member 0 (0.4) exploits member 3 (0.7): lr 0.4 -> 0.3, so 1.0; member 3 goes on with 0.4: 1.1. Without exploit
    (quantile 0) every member keeps its own: 3 x lr."""
    with_exploit = _run(journal_url(tmp_path), study="q25")
    alone = _run(journal_url(tmp_path), study="q0", pbt_quantile=0.0)
    assert _finals(with_exploit, 0) == pytest.approx([0.2, 0.3, 0.3, 0.2])
    assert _finals(with_exploit, 1) == pytest.approx([0.4, 0.6, 0.6, 0.7])
    assert _finals(with_exploit, 2) == pytest.approx([1.0, 0.9, 0.9, 1.1])
    assert _finals(alone, 2) == pytest.approx([0.6, 0.9, 0.9, 0.6])
    rows = {(r["generation"], r["member"]): r for r in lineage(with_exploit)}
    assert rows[1, 3]["exploited_from"] == rows[0, 1]["trial"] == rows[1, 3]["parent"]
    assert rows[2, 0]["exploited_from"] == rows[1, 3]["trial"]
    assert rows[2, 3]["parent"] == rows[1, 3]["trial"] and rows[2, 3]["exploited_from"] is None
    assert not [r for r in lineage(alone) if r["exploited_from"] is not None]
    # every bottom member ends strictly better than alone, no member worse
    for a, b in zip(_finals(with_exploit, 2), _finals(alone, 2), strict=True):
        assert a >= b - 1e-6
    assert min(_finals(with_exploit, 2)) > max(_finals(alone, 2)) - 1e-6
    trial = with_exploit.trials[rows[2, 0]["trial"]]
    assert trial.user_attrs["pbt_schedule"] == [
        {"epochs": [0, 1], "lr": 0.3, "weight_decay": 0.0, "dropout_rate": 0.0},
        {"epochs": [1, 2], "lr": 0.4, "weight_decay": 0.0, "dropout_rate": 0.0},
        {"epochs": [2, 3], "lr": 0.3, "weight_decay": 0.0, "dropout_rate": 0.0},
    ]
    fig = lineage_figure(with_exploit)
    assert [t.name for t in fig.data] == ["member 0", "member 1", "member 2", "member 3", "exploit"]


def test_the_recorded_schedule_retrains_the_member(tmp_path: Path) -> None:
    study = _run(journal_url(tmp_path), ready=2, n_trials=8)
    for row in lineage(study):
        trial = study.trials[row["trial"]]
        again = retrain(schedule_of(trial), noise_splits(), seed=trial.user_attrs["train_seed"], train=toy_train)
        assert again.val_metrics.accuracy == trial.value
        assert len(again.history) == (row["generation"] + 1) * 2


_SCRIPT = """
import sys
sys.path.insert(0, {tests!r})
import optuna
optuna.logging.set_verbosity(optuna.logging.WARNING)
from helpers import noise_splits
from pbt_toy import TOY_SPACE, toy_train
from hpo_astro.core.space import SearchSpace
from hpo_astro.study.config import StudyConfig
from hpo_astro.study.run import run_study
cfg = StudyConfig(strategy="pbt", study="pbt", storage={url!r}, n_trials=12, population_size=4, ready=2,
                  space=SearchSpace.from_dict(TOY_SPACE), checkpoint_interval=0, grace_period=2, heartbeat_interval=1)
run_study(cfg, train=toy_train, data=noise_splits())
"""


def _script(tmp_path: Path, url: str) -> list[str]:
    path = tmp_path / "run_pbt.py"
    path.write_text(textwrap.dedent(_SCRIPT.format(tests=str(TESTS), url=url)))
    return [sys.executable, str(path)]


def _env(tmp_path: Path, kills: str = "", sleep: float = 0.0) -> dict[str, str]:
    marks = tmp_path / "marks"
    marks.mkdir(exist_ok=True)
    return {
        **os.environ,
        "HPO_ASTRO_CACHE": str(tmp_path / "cache"),
        "PBT_TOY_KILL": kills,
        "PBT_TOY_MARKS": str(marks),
        "PBT_TOY_SLEEP": str(sleep),
        "OMP_NUM_THREADS": "1",
    }


def test_a_killed_population_resumes_to_the_same_lineage(tmp_path: Path) -> None:
    """SIGKILL inside a segment (epoch 3: generation 1, after its checkpoint) and at a segment's end (epoch 4: after
    the segment's checkpoint was uploaded, before the trial completed); the same command again each time. The
    population ends with the lineage, schedules and values of an uninterrupted run."""
    reference = _lineage_by_slot(_run(journal_url(tmp_path / "ref"), ready=2))
    url = journal_url(tmp_path)
    kills = 0
    for _ in range(4):
        proc = subprocess.run(_script(tmp_path, url), env=_env(tmp_path, "3,4"), capture_output=True, text=True)
        if proc.returncode == 0:
            break
        assert proc.returncode == -9, proc.stderr[-2000:]
        kills += 1
    assert kills == 2 and proc.returncode == 0, proc.stderr[-2000:]
    study = load_study(url, "pbt")
    states = [t.state for t in study.trials]
    assert states.count(TrialState.COMPLETE) == 12
    assert TrialState.RUNNING not in states and TrialState.WAITING not in states
    retries = [t for t in study.trials if t.state == TrialState.COMPLETE and t.system_attrs.get("retry_history")]
    # the retry of the first kill resumed from epoch 3 and was killed at 4; its retry resumed from epoch 4
    assert [len(t.system_attrs["retry_history"]) for t in retries] == [2]
    assert retries[0].user_attrs["resumed_from_epoch"] == 4
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert sorted(t.user_attrs.get("resumed_from_epoch", 0) for t in failed) == [0, 3]
    assert _lineage_by_slot(study) == reference


def test_two_workers_run_the_exact_budget_and_the_same_lineage(tmp_path: Path) -> None:
    reference = _lineage_by_slot(_run(journal_url(tmp_path / "ref"), ready=2))
    url = journal_url(tmp_path)
    procs = [
        subprocess.Popen(_script(tmp_path, url), env=_env(tmp_path, sleep=0.3), stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err[-2000:]
    study = load_study(url, "pbt")
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 12
    assert sorted(t.system_attrs["pbt:slot"] for t in complete) == list(range(12))
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert all(t.user_attrs.get("surplus") for t in failed)  # a worker that found nothing to do, never a duplicate
    assert len({internal_attr(t, WORKER_ATTR) for t in complete}) == 2  # both workers trained members
    assert _lineage_by_slot(study) == reference


def test_resuming_with_other_pbt_settings_is_refused(tmp_path: Path) -> None:
    url = journal_url(tmp_path)
    _run(url, n_trials=4)
    with pytest.raises(UserError, match="pbt ready 1, this run gives 2"):
        _run(url, n_trials=8, ready=2)
    study = _run(url, n_trials=8, ready=None, pbt_quantile=None)  # a joining worker: the stored settings
    assert len(lineage(study)) == 8


def _toml(path: Path, **values: object) -> Path:
    lines = [f"{k} = {v!r}".replace("'", '"') for k, v in values.items()]
    lines.append("[space]")
    lines += [f"{k} = {v!r}" for k, v in TOY_SPACE.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"ready": 0}, "ready (epochs per PBT segment) must be at least 1, got 0"),
        ({"pbt_quantile": 0.7}, "pbt_quantile must be between 0 and 0.5, got 0.7"),
        ({"folds": 2}, "eval_seeds and folds must be 1"),
        ({"eval_seeds": 3}, "eval_seeds and folds must be 1"),
        ({"n_trials": 10}, "must be a multiple of population_size"),
        ({"ready": 60}, "t_max can be 100"),
        ({"pruner": "median"}, "--pruner must be none"),
        ({"strategy": "random", "ready": 2}, "ready applies to the pbt strategy"),
    ],
)
def test_bad_pbt_settings_are_one_line(tmp_path: Path, values: dict[str, object], message: str) -> None:
    settings = {"strategy": "pbt", "n_trials": 8, "population_size": 4, **values}
    config = _toml(tmp_path / "pbt.toml", storage=journal_url(tmp_path), **settings)
    assert_refused(invoke("run", "--config", config), message)
