"""Refusing mismatched studies and bad input with the store untouched: another study of the same name, a foreign
study, bad study files and options; `status` of an empty store; the paper's study files."""

from __future__ import annotations

import gc
import hashlib
import re
from pathlib import Path
from typing import Any

import optuna
import pytest
from helpers import assert_refused, invoke, load_study, store_url

from hpo_astro.core.space import SearchSpace
from hpo_astro.study.config import StudyConfig, load_config


def _digest(path: Path) -> str:
    """The store file's bytes, once every connection an in-process run left open is closed: the last close of a
    SQLite store in WAL mode checkpoints the WAL into the file, which changes its bytes but not its content."""
    gc.collect()
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.exists() else "absent"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (["--objective", "loss"], "different objective"),
        (["--strategy", "tpe", "--study", "random"], "different strategy"),
        (["--channels", "diff,scorr"], "different data fingerprint"),
    ],
)
def test_a_mismatched_study_is_refused(
    change: list[str], message: str, tmp_path: Path, small_file: Path, fake_training: None
) -> None:
    store = store_url(tmp_path)
    base = ["run", "--n-trials", 1, "--data", small_file, "--max-epochs", 1, "--storage", store]
    assert invoke(*base, "--strategy", "random").exit_code == 0
    before = _digest(tmp_path / "optuna.db")
    args = list(change) if "--strategy" in change else ["--strategy", "random", *change]
    result = invoke(*base, *args)
    assert_refused(result, message)
    assert _digest(tmp_path / "optuna.db") == before


def test_a_foreign_study_with_trials_is_not_adopted(tmp_path: Path, small_file: Path) -> None:
    store = store_url(tmp_path)
    foreign = optuna.create_study(study_name="random", storage=store, direction="maximize")
    foreign.set_user_attr("owner", "someone else")
    foreign.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    result = invoke("run", "--n-trials", 3, "--data", small_file, "--max-epochs", 1, "--storage", store)
    assert_refused(result, "no hpo-astro configuration")
    after = optuna.load_study(study_name="random", storage=store)
    assert after.user_attrs == {"owner": "someone else"} and len(after.trials) == 2


BAD_CONFIGS = {
    "unknown key": ('strategy = "random"\nn_trails = 3\n', "unknown key(s) n_trails"),
    "unknown hyperparameter": ("[space]\ndepth = [1, 2]\n", "unknown hyperparameter 'depth'"),
    "empty values": ("[space]\nlr = []\n", "empty list of values"),
    "bad value": ('[space]\nactivation = ["swish"]\n', "unknown value 'swish'"),
    "bad toml": ("strategy = \n", "invalid TOML"),
    "bad type": ('n_trials = "ten"\n', "n_trials must be a int"),
    "bad baseline": ('strategy = "ablation"\n[baseline]\nlr = 0.5\n', "lr=0.5 is outside the search space"),
    "negative lr": ("[space]\nlr = [-1.0]\n", "lr = -1.0 is out of range"),
    "zero batch": ("[space]\nbatch_size = [0, 64]\n", "batch_size = 0 is out of range"),
    "dropout above 1": ("[space]\ndropout_rate = [1.5]\n", "dropout_rate = 1.5 is out of range"),
    "too many conv layers": ("[space]\nconv_layers = [9]\n", "conv_layers = 9 is out of range"),
    "fractional batch": ("[space]\nbatch_size = [16.5]\n", "must be a whole number"),
    "nan lr": ("[space]\nlr = [nan]\n", "not a finite number"),
    "negative seed": ("seed = -1\n", "seed must be between 0 and 4294967295"),
    "huge seed": ("seed = 1099511627776\n", "seed must be between 0 and 4294967295"),
    # the command line's choices are checked by the parser; a study file's by the configuration
    "unknown pruner": ('pruner = "early"\n', "unknown pruner 'early'; known: none, median, hyperband"),
    "unknown objective": ('objective = "f1"\n', "unknown objective 'f1'; known: accuracy, loss, roc_auc"),
}


@pytest.mark.parametrize("kind", list(BAD_CONFIGS))
def test_bad_study_files(kind: str, tmp_path: Path, small_file: Path) -> None:
    text, message = BAD_CONFIGS[kind]
    path = tmp_path / "bad.toml"
    path.write_text(text)
    result = invoke("run", "--config", path, "--n-trials", 2, "--data", small_file, "--storage", store_url(tmp_path))
    assert_refused(result, message)
    assert not (tmp_path / "optuna.db").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--strategy", "annealing"], "unknown strategy 'annealing'"),
        (["--pruner", "early"], "Invalid value for '--pruner': Value error, 'early' is not one of 'none', 'median', "),
        (["--objective", "f1"], "unknown objective 'f1'; known: accuracy, loss, roc_auc, fpr_at_fnr, mdr_at_fpr"),
        (["--n-trials", "0"], "--n-trials must be positive"),
        (["--n-trials", "-3"], "--n-trials must be positive"),
        (["--config", "missing.toml"], "study file not found"),
        (["--seed", "-1"], "seed must be between 0 and"),
        (["--seed", str(2**40)], "seed must be between 0 and"),
        (["--channels", ""], "--channels needs at least one name"),
        (["--storage", "not a url"], "malformed storage URL"),
        (["--storage", "sqlite:///{tmp}/no/such/dir/x.db"], "storage directory does not exist"),
        (["--storage", "sqlite:///{tmp}/file.txt/x.db"], "storage directory does not exist"),
        (["--storage", "postgresql://user@127.0.0.1:1/db"], "cannot open storage|needs a database driver"),
        (["--storage", "sqlite:////proc/optuna.db"], "cannot open storage|not writable"),
    ],
)
def test_bad_run_options(args: list[str], message: str, tmp_path: Path, small_file: Path) -> None:
    (tmp_path / "file.txt").write_text("x")
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    if "--n-trials" not in args:
        args += ["--n-trials", "2"]
    if "--strategy" not in args:
        args += ["--strategy", "random"]
    result = invoke(
        "run",
        *args,
        "--data",
        small_file,
        "--max-epochs",
        1,
        *([] if "--storage" in args else ["--storage", store_url(tmp_path)]),
    )
    assert_refused(result, re.compile(message))
    assert not (tmp_path / "optuna.db").exists()


def test_status_of_an_empty_or_missing_study(tmp_path: Path) -> None:
    store = store_url(tmp_path)
    empty = invoke("status", "--storage", store)
    assert empty.exit_code == 0 and "no studies" in empty.stdout
    missing = invoke("status", "--storage", store, "--study", "nope")
    assert_refused(missing, "no study named 'nope'")
    assert not (tmp_path / "optuna.db").exists()  # a status query never creates the store


def test_paper_study_files_load() -> None:
    root = Path(__file__).resolve().parents[2] / "studies"
    expected = {
        "paper-random": ("random", 100),
        "paper-ablation": ("ablation", 47),
        "paper-genetic": ("genetic", 100),
        "paper-bayesian": ("bayesian", 100),
    }
    for name, (strategy, n) in expected.items():
        cfg = load_config(root / f"{name}.toml").validate()
        assert (cfg.strategy, cfg.n_trials, cfg.study_name) == (strategy, n, name)
        assert cfg.space == SearchSpace.paper()
    assert load_config(root / "paper-genetic.toml").population_size == 10


def test_every_config_field_can_be_set_in_a_study_file(tmp_path: Path) -> None:
    path = tmp_path / "all.toml"
    path.write_text(
        'strategy = "ablation"\nn_trials = 5\nstudy = "s"\nstorage = "sqlite:///x.db"\ngreedy = true\n'
        'population_size = 4\npruner = "median"\nobjective = "loss"\nseed = 3\ndata = "d.npy"\n'
        'channels = ["sci", "scorr"]\nmax_epochs = 2\nheartbeat_interval = 2\ngrace_period = 7\n'
        "checkpoint_interval = 4\neval_seeds = 3\nfolds = 4\nsplit = [0.5, 0.25, 0.25]\n"
        'devices = ["cpu"]\ncapture = false\nstack_runs = "on"\n'
        'artifacts = "arts"\nworkers = 3\nlatency_batch = 32\n[baseline]\nlr = 1e-2\n[space]\nlr = [1e-2, 1e-3]\n'
    )
    cfg = load_config(path).validate()
    import dataclasses

    assert {f.name for f in dataclasses.fields(StudyConfig)} == {
        "strategy",
        "n_trials",
        "study",
        "storage",
        "greedy",
        "population_size",
        "n_startup_trials",
        "pruner",
        "objective",
        "latency_batch",
        "seed",
        "data",
        "channels",
        "split",
        "max_epochs",
        "eval_seeds",
        "folds",
        "heartbeat_interval",
        "checkpoint_interval",
        "grace_period",
        "artifacts",
        "workers",
        "devices",
        "capture",
        "stack_runs",
        "ready",
        "pbt_quantile",
        "baseline",
        "space",
    }
    assert (cfg.heartbeat_interval, cfg.grace_period, cfg.workers, cfg.artifacts) == (2, 7, 3, Path("arts"))
    assert cfg.latency_batch == 32
    assert cfg.checkpoint_interval == 4 and cfg.devices == ("cpu",) and cfg.capture is False and cfg.stack_runs == "on"
    assert (cfg.eval_seeds, cfg.folds, cfg.split) == (3, 4, (0.5, 0.25, 0.25))
    assert cfg.channels == ("sci", "scorr") and cfg.data == Path("d.npy") and cfg.baseline == {"lr": 1e-2}
    tpe = tmp_path / "tpe.toml"  # n_startup_trials applies to the model-based strategies, not to ablation
    tpe.write_text('strategy = "tpe"\nn_trials = 5\nn_startup_trials = 2\n')
    assert load_config(tpe).validate().n_startup_trials == 2
    pbt = tmp_path / "pbt.toml"  # ready and pbt_quantile apply to pbt only
    pbt.write_text('strategy = "pbt"\nn_trials = 8\npopulation_size = 4\nready = 3\npbt_quantile = 0.5\n')
    assert (load_config(pbt).validate().ready, load_config(pbt).validate().pbt_quantile) == (3, 0.5)


def test_split_sets_the_fractions_the_data_is_split_in_and_readers_rebuild_with_them(
    tmp_path: Path, small_file: Path
) -> None:
    """`--split` (study file `split`): the trials train and validate on splits of those fractions, the study records
    them, and `compare` rebuilds the best model on the same splits (its validation metrics reproduce)."""
    from helpers import fake_train

    sizes: list[tuple[int, int, int]] = []

    def train(params: Any, data: Any, **kw: Any) -> Any:
        sizes.append((len(data.y_train), len(data.y_val), len(data.y_test)))
        return fake_train(params, data, **kw)

    store = f"sqlite:///{tmp_path / 's.db'}"
    args = ["run", "--storage", store, "--data", small_file, "-n", 1, "--max-epochs", 1]
    assert invoke(*args, "--study", "default", train=train).exit_code == 0
    result = invoke(*args, "--study", "wide", "--split", "0.4,0.3,0.3", train=train)
    assert result.exit_code == 0, result.output
    (default, wide) = sizes
    assert sum(default) == sum(wide) == 240
    assert default[1] == 36 and wide[1] == 72  # validation: 15% and 30% of 240, class by class
    wide_study = load_study(store, "wide")
    assert wide_study.user_attrs["split"] == [0.4, 0.3, 0.3] and load_study(store, "default").user_attrs["split"] == [
        0.7,
        0.15,
        0.15,
    ]
    assert wide_study.user_attrs["data_fingerprint"] != load_study(store, "default").user_attrs["data_fingerprint"]
    from hpo_astro.results.evaluate import study_data

    assert len(study_data(wide_study).y_val) == 72  # what compare, report and export rebuild with


@pytest.mark.parametrize("split", ["0.5,0.5", "0.6,0.3,0.2", "0.7,0.3,0", "a,b,c"])
def test_a_bad_split_is_refused_in_one_line(tmp_path: Path, split: str) -> None:
    store = tmp_path / "x.db"
    assert_refused(invoke("run", "--storage", f"sqlite:///{store}", "-n", 1, "--split", split), "split must be")
    assert not store.exists()
