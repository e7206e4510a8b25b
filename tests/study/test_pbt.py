"""Population-based training (`--strategy pbt`): known answers on the toy problem of tests/pbt_toy.py (exploiting a
better member's checkpoint helps, the recorded schedule retrains the member), a population killed with SIGKILL and
resumed to the same lineage, two workers with the exact budget and the same lineage, a trial waiting past the
dead-trial limit, settings recorded before the first trial, a failing and a diverging member, a slot trained twice,
a tampered store, and bad settings refused before anything is written."""

from __future__ import annotations

import datetime
import functools
import json
import math
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
import types
from pathlib import Path
from typing import Any

import optuna
import pytest
from helpers import assert_refused, invoke, journal_url, load_study, noise_splits
from optuna.trial import FrozenTrial, TrialState
from pbt_toy import TOY_SPACE, toy_train

from hpo_astro.core.space import SearchSpace
from hpo_astro.errors import UserError
from hpo_astro.samplers.pbt import PbtSampler
from hpo_astro.store import recovery
from hpo_astro.store.record import WORKER_ATTR, internal_attr
from hpo_astro.store.recovery import fail_dead_trials
from hpo_astro.store.storage import open_storage
from hpo_astro.study.config import StudyConfig
from hpo_astro.study.objective import _SurplusTrial
from hpo_astro.study.pbt import PbtObjective, record_settings
from hpo_astro.study.pbt_lineage import lineage, lineage_figure
from hpo_astro.study.pbt_plan import continue_with, pbt_sampler, retrain, schedule_of
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


def _run(url: str, train_fn: Any = toy_train, **overrides: Any) -> optuna.Study:
    if url.startswith("journal:"):
        Path(url.removeprefix("journal:")).parent.mkdir(exist_ok=True)
    return run_study(_config(url, **overrides), train=train_fn, data=noise_splits()).study


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
    # Every trial completed a slot or found nothing to do (surplus); none failed otherwise, none trained a slot twice
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert [t.number for t in failed if not t.user_attrs.get("surplus")] == []
    assert {t.state for t in study.trials} <= {TrialState.COMPLETE, TrialState.FAIL}
    assert len(study.trials) == len(complete) + len(failed)
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


# --- waiting, settings, failures, divergence, duplicates ------------------------------------------------------------


class _Later(datetime.datetime):
    """The clock of `hpo_astro.store.recovery` five minutes ahead: every running trial is past the dead-trial limit."""

    @classmethod
    def now(cls, tz: datetime.tzinfo | None = None) -> datetime.datetime:  # type: ignore[override]
        return datetime.datetime.now(tz) + datetime.timedelta(seconds=300)


def test_a_trial_waiting_past_the_dead_trial_limit_is_alive_and_one_failed_meanwhile_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Trials 2 and 3 (generation 1) wait for trial 1 (generation 0, running) while every trial is older than the
    limit after which `fail_dead_trials` fails a running trial without a worker: none is failed (they record their
    worker when they claim a slot). Trial 3, then failed by another process, writes nothing more and raises nothing;
    trial 2 gets its member once trial 1 completes."""
    monkeypatch.setattr(recovery, "datetime", types.SimpleNamespace(datetime=_Later, timedelta=datetime.timedelta))
    url = journal_url(tmp_path)
    cfg = _config(url, n_trials=4, population_size=2, grace_period=2)
    study = optuna.create_study(storage=open_storage(url, None, 2), sampler=pbt_sampler(cfg), direction="maximize")
    first, second = study.ask(), study.ask()  # generation 0, whose objectives never ran: no worker from them
    first.report(0.5, 1)
    study.tell(first, 0.5)
    outcome: dict[int, Any] = {}

    def ask(key: int) -> None:
        try:
            outcome[key] = study.ask()
        except Exception as exc:  # the failure this test looks for
            outcome[key] = exc

    waiting = [threading.Thread(target=ask, args=(k,)) for k in (2, 3)]
    for thread in waiting:
        thread.start()
        time.sleep(0.5)  # trial 2 is created before trial 3
    time.sleep(1.0)  # both wait, calling fail_dead_trials themselves
    assert fail_dead_trials(study, 2) == []  # another worker's look: none is dead
    storage = study._storage
    third = storage.get_trial(storage.get_trial_id_from_study_id_trial_number(study._study_id, 3))
    assert internal_attr(third, WORKER_ATTR) is not None and third.state == TrialState.RUNNING
    storage.set_trial_state_values(third._trial_id, TrialState.FAIL)  # presumed dead by another process
    second.report(0.7, 1)
    study.tell(second, 0.7)
    for thread in waiting:
        thread.join(timeout=30)
    assert isinstance(outcome[2], optuna.Trial) and isinstance(outcome[3], optuna.Trial), outcome
    states = {t.number: t.state for t in study.get_trials()}
    assert states == {0: TrialState.COMPLETE, 1: TrialState.COMPLETE, 2: TrialState.RUNNING, 3: TrialState.FAIL}
    assert study.trials[2].system_attrs["pbt:member"]["generation"] == 1
    assert "pbt:config" not in study.trials[3].system_attrs and "pbt:member" not in study.trials[3].system_attrs


def test_the_settings_are_recorded_with_the_study_before_its_first_trial(tmp_path: Path) -> None:
    """A worker that joins before the creator's first trial takes the creator's settings, not the defaults."""
    url = journal_url(tmp_path)

    class Stop(Exception):
        pass

    def stop(_: optuna.Study) -> None:
        raise Stop

    with pytest.raises(Stop):  # the creator stops once the study is created, before its first trial
        run_study(_config(url, n_trials=8, pbt_quantile=0.5), train=toy_train, data=noise_splits(), before=stop)
    created = load_study(url, "pbt")
    assert created.user_attrs["pbt"] == {"population": 4, "ready": 1, "quantile": 0.5} and not created.trials
    study = _run(url, n_trials=8, ready=None, pbt_quantile=None)  # a joining worker gives none
    assert study.user_attrs["pbt"] == {"population": 4, "ready": 1, "quantile": 0.5}
    plans = {json.dumps(t.system_attrs["pbt:plan"]) for t in study.trials}
    assert len(plans) == 1 and json.loads(plans.pop())[:5] == [4, 0.5, ["lr"], 0, 1]
    assert all(s["epochs"][1] - s["epochs"][0] == 1 for t in study.trials for s in t.user_attrs["pbt_schedule"])
    assert len([r for r in lineage(study) if r["exploited_from"] is not None]) == 2  # quantile 0.5: 2 of 4


def test_a_worker_whose_settings_differ_from_the_recorded_ones_is_refused_and_overwrites_nothing(
    tmp_path: Path,
) -> None:
    url = journal_url(tmp_path)
    study = _run(url, n_trials=4)
    cfg = _config(url, n_trials=4)
    study.set_user_attr("pbt", {"population": 4, "ready": 3, "quantile": 0.25})  # as if another worker wrote it
    with pytest.raises(UserError, match="records pbt settings"):
        record_settings(study, cfg)
    assert study.user_attrs["pbt"]["ready"] == 3


def _failing(params: dict[str, Any], data: object, **kwargs: Any) -> Any:
    if float(params["lr"]) == pytest.approx(0.4):
        raise RuntimeError("out of memory (a stand-in) for this configuration")
    return toy_train(params, data, **kwargs)


def test_a_member_whose_training_fails_is_decided_again_and_the_study_ends(tmp_path: Path) -> None:
    """Generation 1's member 3 exploits member 1 with lr 0.4, which always fails: its slot is decided again with the
    attempt in the seed (a perturbed exploit, then the top member's configuration unperturbed), so the study ends
    with its budget instead of failing the same decision three times."""
    study = _run(journal_url(tmp_path), train_fn=_failing)
    complete = [t for t in study.trials if t.state == TrialState.COMPLETE]
    failed = [t for t in study.trials if t.state == TrialState.FAIL]
    assert len(complete) == 12 and failed
    assert all("pbt:failed" in t.system_attrs for t in failed)
    assert all(t.params["lr"] != pytest.approx(0.4) for t in complete)
    for t in failed:  # its slot was trained by a later trial with another decision
        again = [c for c in complete if c.system_attrs["pbt:slot"] == t.system_attrs["pbt:slot"]]
        assert len(again) == 1 and again[0].system_attrs["pbt:config"] != t.system_attrs["pbt:config"]


def test_a_diverged_member_ranks_worst_exploits_and_is_never_copied(tmp_path: Path) -> None:
    """Members 1 and 2 (lr 0.3) diverge at epoch 2, in generation 1; with quantile 0.25 only one of them is in the
    bottom quantile, yet both exploit in generation 2, and nobody copies a diverged checkpoint."""
    train = functools.partial(toy_train, diverge=(0.3, 2))
    study = _run(journal_url(tmp_path), n_trials=16, objective="accuracy", train_fn=train)
    rows = {(r["generation"], r["member"]): r for r in lineage(study)}
    diverged = {r["trial"] for r in rows.values() if math.isnan(r["score"])}
    assert {(rows[k]["generation"], rows[k]["member"]) for k in rows if rows[k]["trial"] in diverged} == {
        (1, 1),
        (1, 2),
    }
    assert all("pbt:invalid" in study.trials[n].system_attrs for n in diverged)
    assert rows[2, 1]["exploited_from"] is not None and rows[2, 2]["exploited_from"] is not None
    assert not {r["parent"] for r in rows.values()} & diverged  # nobody continues a diverged checkpoint
    for r in rows.values():  # every other segment trained to its end
        trial = study.trials[r["trial"]]
        if r["trial"] not in diverged:
            assert max(trial.intermediate_values) == r["generation"] + 1 and math.isfinite(r["score"])


def test_a_slot_trained_twice_counts_once(tmp_path: Path) -> None:
    """A failed trial frees its slot, and may be re-queued later: the slot's later trial ends as surplus, and a slot
    with two complete trials is ranked (and listed) by its earliest."""
    study = _run(journal_url(tmp_path), n_trials=8)
    original = next(t for t in study.trials if t.system_attrs["pbt:slot"] == 1)
    storage = study._storage

    def copy(state: TrialState, value: float | None) -> FrozenTrial:
        template = optuna.trial.create_trial(
            state=state, value=value, params=original.params, distributions=original.distributions,
            system_attrs=original.system_attrs, intermediate_values={1: 99.0} if value else {},
        )  # fmt: skip
        return storage.get_trial(storage.create_new_trial(study._study_id, template_trial=template))

    copy(TrialState.COMPLETE, 99.0)
    assert [r["trial"] for r in lineage(study) if (r["generation"], r["member"]) == (0, 1)] == [original.number]
    sampler = study.sampler
    assert isinstance(sampler, PbtSampler)
    previous, missing = sampler._generation(study.get_trials(deepcopy=False), 0)
    assert previous[1].number == original.number and missing == []
    running = copy(TrialState.RUNNING, None)
    with pytest.raises(_SurplusTrial, match=f"slot 1 is already trained by trial {original.number}"):
        PbtObjective._check_not_duplicate(study, running)


def test_continuing_a_checkpoint_with_another_architecture_is_refused() -> None:
    checkpoint = {"params": {"lr": 0.1, "conv_layers": 1, "weight_decay": 0.0, "dropout_rate": 0.0}}
    with pytest.raises(ValueError, match=r"these differ: \['conv_layers'\]"):
        continue_with(checkpoint, {**checkpoint["params"], "lr": 0.2, "conv_layers": 2})


# --- a tampered store, refusals --------------------------------------------------------------------------------------


def _sqlite_study(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path}/store.db"
    _run(url, n_trials=4)  # generation 0 complete
    return url


def _set_json(url: str, sql: str, value: object, *args: object) -> None:
    con = sqlite3.connect(url.removeprefix("sqlite:///"))
    con.execute(sql, (json.dumps(value), *args))
    con.commit()
    con.close()


_STUDY_ATTR = "UPDATE study_user_attributes SET value_json=? WHERE key=?"
_TRIAL_ATTR = (
    "UPDATE trial_system_attributes SET value_json=? WHERE key=? AND trial_id=(SELECT trial_id FROM trials WHERE "
    "number=?)"
)


@pytest.mark.parametrize(
    ("sql", "value", "args", "message"),
    [
        (_STUDY_ATTR, {"population": 4}, ("pbt",), "broken 'pbt' attribute"),
        (_STUDY_ATTR, {"population": 4, "ready": "1", "quantile": 0.25}, ("pbt",), "broken 'pbt' attribute"),
        (_STUDY_ATTR, [4, 1, 0.25], ("pbt",), "broken 'pbt' attribute"),
        (_TRIAL_ATTR, [1, 2], ("pbt:config", 1), "trial 1's attribute pbt:config is not an object"),
        (_TRIAL_ATTR, {"lr": 7.0}, ("pbt:config", 1), r"trial 1's attribute pbt:config: lr=7.0 is outside"),
        (_TRIAL_ATTR, {"generation": 0, "member": 1}, ("pbt:member", 1), "trial 1's attribute pbt:member is not"),
        (_TRIAL_ATTR, "x", ("pbt:member", 0), "trial 0's attribute pbt:member is not a member record"),
    ],
)
def test_a_tampered_store_is_one_line(
    tmp_path: Path, sql: str, value: object, args: tuple[object, ...], message: str
) -> None:
    url = _sqlite_study(tmp_path)
    _set_json(url, sql, value, *args)
    with pytest.raises(UserError, match=message):
        _run(url, n_trials=8, ready=None, pbt_quantile=None)


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ("x", "is not a list of segments"),
        ([{"epochs": [0, 1]}], "segment 0 is not"),
        ([{"epochs": [1, 2], "params": {"lr": 0.1}}], "segment 0 is not"),
        ([{"epochs": [0, 1], "params": {"lr": "fast"}}], "segment 0: value 'fast' of 'lr' is not a number"),
        ([{"epochs": [0, 1], "params": {"gamma": 1}}], r"unknown hyperparameters \['gamma'\]"),
        (
            [{"epochs": [0, 1], "params": {"conv_layers": 1}}, {"epochs": [1, 2], "params": {"conv_layers": 2}}],
            r"segment 1 changes \['conv_layers'\]",
        ),
    ],
)
def test_a_tampered_schedule_is_one_line(schedule: object, message: str) -> None:
    trial = optuna.trial.create_trial(state=TrialState.COMPLETE, value=1.0, system_attrs={
        "hpo_astro:pbt_schedule": schedule,
    })  # fmt: skip
    with pytest.raises(UserError, match=message):
        schedule_of(trial)
    if isinstance(schedule, list):
        with pytest.raises(UserError, match=message):
            retrain(schedule, noise_splits(), seed=0, train=toy_train)


class _Replay:
    """A table's replay, as far as `run_study` asks: its trials are no training."""

    trial_kind = "replayed"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("never called")


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"train_fn": _Replay()}, "strategy pbt needs training"),
        ({"max_epochs": 2}, "a member trains 3 epochs"),
        ({"objective": "accuracy,loss"}, "give a single --objective"),
        ({"seed": 2**32 - 2}, "seed \\+ population_size - 1 must be at most"),
    ],
)
def test_refused_before_anything_is_written(tmp_path: Path, overrides: dict[str, Any], message: str) -> None:
    url = journal_url(tmp_path)
    with pytest.raises(UserError, match=message):
        _run(url, **overrides)
    assert list(tmp_path.iterdir()) == []
