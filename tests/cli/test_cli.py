"""The command line end to end: data synth/info/download, train, and every kind of bad input."""

from __future__ import annotations

import copy
import json
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import assert_refused, invoke, patience, write_npy_object

from hpo_astro.data import exromana


def test_data_synth_is_deterministic(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.npy", tmp_path / "b.npy", tmp_path / "c.npy"
    for path, seed in ((a, 1), (b, 1), (c, 2)):
        result = invoke("data", "synth", "--out", path, "--n", 90, "--seed", seed)
        assert result.exit_code == 0, result.output
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()
    data = exromana.load(a)
    assert data.counts == {"TP": 60, "FP": 30}
    assert "60 TP + 30 FP" in result.stdout


def test_data_info_prints_statistics_and_writes_a_gallery(small_file: Path, tmp_path: Path) -> None:
    gallery = tmp_path / "g.png"
    result = invoke("data", "info", small_file, "--gallery", gallery, "--per-class", 3)
    assert result.exit_code == 0, result.output
    counts = exromana.load(small_file).counts
    assert f"TP {counts['TP']}" in result.stdout and f"FP {counts['FP']}" in result.stdout
    for plane in ("sci", "ref", "diff", "scorr"):
        assert plane in result.stdout
    from PIL import Image

    with Image.open(gallery) as img:
        assert img.format == "PNG"
        assert img.height > 6 * 64 * 2 and img.width > 4 * 64 * 2  # 6 rows x 4 planes, 2x scale


def test_train_saves_weights_and_configuration(small_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    result = invoke(
        "train",
        "--data",
        small_file,
        "--max-epochs",
        2,
        "--seed",
        1,
        "--out",
        out,
        "--threads",
        1,
        "-p",
        "conv_layers=1",
        "--param",
        "normalization=batchnorm",
        "--channels",
        "diff,scorr",
    )
    assert result.exit_code == 0, result.output
    assert "epoch   1/2" in result.stdout and "epoch   2/2" in result.stdout
    assert "validation: loss" in result.stdout and "FPR@5%FNR" in result.stdout
    manifest = json.loads((out / "model.json").read_text())
    assert manifest["params"]["conv_layers"] == 1 and manifest["params"]["normalization"] == "BatchNorm"
    assert manifest["params"]["lr"] == 1e-3  # a documented default
    assert manifest["in_channels"] == 2 and manifest["preprocessing"]["channels"] == ["diff", "scorr"]
    assert manifest["seed"] == 1 and len(manifest["history"]) == 2
    from hpo_astro.core.model import load_model

    model, _ = load_model(out)
    assert model[0].in_channels == 2


def _bad_files(tmp: Path, small_file: Path) -> dict[str, Path]:
    good = {"sample": np.random.default_rng(0).normal(size=(64, 64, 4))}
    truncated = tmp / "truncated.npy"
    truncated.write_bytes(small_file.read_bytes()[:100_000])
    numeric = tmp / "numeric.npy"
    np.save(numeric, np.zeros((4, 64, 64, 4)))
    evil = tmp / "evil.npy"
    evil.write_bytes(pickle.dumps({"TP": [{"sample": _Evil(tmp / "pwned")}], "FP": []}))
    return {
        "missing": tmp / "missing.npy",
        "truncated": truncated,
        "not exromana": numeric,
        "wrong shape": write_npy_object(tmp / "shape.npy", {"TP": [{"sample": np.zeros((32, 32, 4))}], "FP": [good]}),
        "no sample": write_npy_object(tmp / "nosample.npy", {"TP": [good], "FP": [{"cutout": 1}]}),
        "all nan": write_npy_object(  # each record its own cutout: a file may not reuse one
            tmp / "nan.npy",
            {"TP": [good, copy.deepcopy(good)], "FP": [copy.deepcopy(good), {"sample": np.full((64, 64, 4), np.nan)}]},
        ),
        "malicious": evil,
    }


class _Evil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


BAD_FILE_MESSAGES = {
    "missing": "not found",
    "truncated": "truncated or corrupt",
    "not exromana": "not an ExRomana file",
    "wrong shape": "has shape (32, 32, 4)",
    "no sample": "FP[0] has no 'sample'",
    "all nan": "no finite pixel",
    "malicious": "refusing to load",
}


@pytest.mark.parametrize("kind", list(BAD_FILE_MESSAGES))
@pytest.mark.parametrize("command", ["train", "info"])
def test_bad_data_files(kind: str, command: str, tmp_path: Path, small_file: Path, isolated_cache: Path) -> None:
    path = _bad_files(tmp_path, small_file)[kind]
    if command == "train":
        result = invoke("train", "--data", path, "--max-epochs", 1, "--out", tmp_path / "run")
        assert not (tmp_path / "run").exists()
    else:
        result = invoke("data", "info", path, "--gallery", tmp_path / "g.png")
        assert not (tmp_path / "g.png").exists()
    assert_refused(result, BAD_FILE_MESSAGES[kind])
    assert not (tmp_path / "pwned").exists()
    assert not [p for p in isolated_cache.rglob("*") if p.is_file()]  # nothing half-written to the cache


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--channels", "sci,foo"], "unknown channel 'foo'"),
        (["--param", "dropout=0.1"], "unknown hyperparameter 'dropout'"),
        (["--param", "lr=0.5"], "lr=0.5 is outside the search space"),
        (["--param", "activation=swish"], "activation=swish is outside the search space"),
        (["--param", "lr"], "--param expects NAME=VALUE"),
        (["--max-epochs", "0"], "--max-epochs"),
        (["--device", "tpu"], "unknown device 'tpu'"),
        (["--device", "meta"], "unsupported device 'meta'"),
        (["--device", "cuda:0"], "CUDA is not available"),
        (["--seed", "-1"], "--seed"),
        (["--seed", str(2**40)], "--seed"),
    ],
)
def test_bad_train_options(args: list[str], message: str, small_file: Path, tmp_path: Path) -> None:
    if "cuda" in args[-1]:
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has CUDA")
    result = invoke("train", "--data", small_file, "--out", tmp_path / "run", *args)
    assert_refused(result, message)
    assert not (tmp_path / "run").exists()


def test_download_without_network_is_one_line(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = invoke("data", "download", "--url", f"http://127.0.0.1:{port}/x.npy", "--out", tmp_path / "x.npy")
    assert_refused(result, "cannot download")
    assert list(tmp_path.iterdir()) == []


def test_download_from_a_local_file(tmp_path: Path, small_file: Path) -> None:
    result = invoke("data", "download", "--url", small_file.resolve().as_uri(), "--out", tmp_path / "x.npy")
    assert result.exit_code == 0, result.output
    assert f"sha256 {exromana.sha256_file(small_file)}" in result.stdout


def test_console_script_reports_bad_input_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "hpo_astro.cli", "train", "--param", "conv_layers=9"],
        capture_output=True,
        text=True,
        env={**os.environ, "HPO_ASTRO_CACHE": str(tmp_path)},
        timeout=patience(120),
    )
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: conv_layers=9 is outside the search space; allowed: 1, 2, 3, 4"]
    assert list(tmp_path.iterdir()) == []  # failed before generating the default data
