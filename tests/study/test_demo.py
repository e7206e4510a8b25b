"""The quick demo demonstrates tuning: TPE proposes trials from the results of a few random start-up trials (with
Optuna's default of 10 start-up trials, all six demo trials were random), and `n_startup_trials` is a study setting
that workers joining the study rebuild."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import optuna
import pytest
from helpers import assert_refused, fake_train, invoke

from hpo_astro.store.record import StudyRecord
from hpo_astro.study.config import StudyConfig, load_config
from hpo_astro.study.run import run_study
from hpo_astro.study.strategies import make_sampler

DEMO = Path(__file__).resolve().parents[2] / "studies" / "quick-demo.toml"


def test_the_demo_lets_tpe_choose() -> None:
    cfg = load_config(DEMO).validate()
    assert cfg.strategy == "tpe" and cfg.n_startup_trials is not None
    assert 2 <= cfg.n_startup_trials <= cfg.n_trials - 3  # at least three trials proposed by TPE
    inner = make_sampler(cfg).inner
    assert isinstance(inner, optuna.samplers.TPESampler) and inner._n_startup_trials == cfg.n_startup_trials
    assert cfg.space.n_combinations() > 10_000  # room to choose: a repeat of a configuration is unlikely


def test_tpe_proposes_the_demos_trials_after_its_start_up(
    tmp_path: Path, small_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = dataclasses.replace(load_config(DEMO), storage=f"sqlite:///{tmp_path / 'optuna.db'}", data=small_file)
    proposed: list[bool] = []
    original = optuna.samplers.TPESampler.sample_relative

    def spy(self: optuna.samplers.TPESampler, study: optuna.Study, trial: object, space: dict) -> dict:
        params = original(self, study, trial, space)
        proposed.append(bool(params))  # empty while TPE is still in its random start-up
        return params

    monkeypatch.setattr(optuna.samplers.TPESampler, "sample_relative", spy)
    study = run_study(cfg, train=fake_train).study
    assert len(study.trials) == cfg.n_trials
    assert proposed == [False] * cfg.n_startup_trials + [True] * (cfg.n_trials - cfg.n_startup_trials)


def test_n_startup_trials_is_recorded_for_joining_workers(tmp_path: Path) -> None:
    cfg = StudyConfig(strategy="bayesian", n_trials=5, n_startup_trials=2)
    record = StudyRecord.from_run(cfg, "f" * 16, cfg.channels, "", tmp_path)
    rebuilt = StudyConfig.from_record(StudyRecord.from_attrs(record.to_attrs()), "sqlite:///x.db", "b")  # type: ignore[union-attr]
    assert rebuilt.n_startup_trials == 2
    assert make_sampler(rebuilt.validate()).inner._n_startup_trials == 2


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ('strategy = "random"\nn_startup_trials = 3', "applies to the tpe, bohb, bayesian, cmaes strategies"),
        ('strategy = "tpe"\nn_startup_trials = -1', "n_startup_trials must be >= 0"),
        ('strategy = "tpe"\nn_startup_trials = "3"', "n_startup_trials must be a int"),
    ],
)
def test_bad_n_startup_trials_is_one_line(setting: str, message: str, tmp_path: Path, small_file: Path) -> None:
    study_file = tmp_path / "s.toml"
    study_file.write_text(f"{setting}\nn_trials = 2\n")
    result = invoke("run", "--config", study_file, "--data", small_file, "--storage", f"sqlite:///{tmp_path / 'x.db'}")
    assert_refused(result, message)
    assert not (tmp_path / "x.db").exists()
