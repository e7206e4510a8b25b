"""Preprocessing: ZScale with non-finite pixels, stratified deterministic splits, fingerprint, cache."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import write_npy_object

from hpo_astro.data import exromana
from hpo_astro.data.prepare import (
    PrepConfig,
    fingerprint,
    load_splits,
    parse_channels,
    preprocess,
    stratified_split,
    zscale,
)
from hpo_astro.errors import UserError


def test_split_sizes_match_the_paper() -> None:
    labels = np.r_[np.ones(3117, dtype=int), np.zeros(1559, dtype=int)]  # 4,676 records, about 2:1
    train, val, test = stratified_split(labels, seed=0)
    assert len(train) == 3273  # the paper's training set size
    assert len(train) + len(val) + len(test) == 4676
    assert len(np.intersect1d(train, val)) == len(np.intersect1d(train, test)) == len(np.intersect1d(val, test)) == 0
    for part in (train, val, test):  # stratified: each part keeps the 2:1 ratio
        assert labels[part].mean() == pytest.approx(3117 / 4676, abs=0.01)


def test_split_is_deterministic_and_seeded() -> None:
    labels = np.random.default_rng(0).integers(0, 2, 500)
    a = stratified_split(labels, seed=5)
    b = stratified_split(labels, seed=5)
    c = stratified_split(labels, seed=6)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[0], c[0])


def test_zscale_handles_non_finite_pixels() -> None:
    rng = np.random.default_rng(0)
    img = rng.normal(100, 5, (1, 1, 64, 64))
    img[0, 0, :, :8] = np.nan  # an off-chip edge
    img[0, 0, 10, 10] = np.inf
    out, n_bad = zscale(img)
    assert n_bad == 64 * 8 + 1
    assert np.isfinite(out).all() and out.min() >= 0 and out.max() <= 1
    assert (out[0, 0, :, :8] == 0).all() and out[0, 0, 10, 10] == 0
    assert 0.2 < np.median(out[0, 0, :, 8:]) < 0.8  # sky sits mid-scale under ZScale


def test_zscale_flat_and_all_nan_cutouts() -> None:
    out, _ = zscale(np.full((1, 1, 64, 64), 7.0))
    assert (out == 0).all()
    bad = np.zeros((3, 2, 64, 64))
    bad[2, 1] = np.nan
    with pytest.raises(UserError, match=r"record 2 \(channel 1\) has no finite pixel"):
        zscale(bad)


def test_channels_and_config_validation() -> None:
    assert parse_channels("sci, diff") == ("sci", "diff")
    assert parse_channels(None) == ("scorr",)
    assert PrepConfig(channels=("sci", "scorr")).plane_indices == [0, 3]
    with pytest.raises(UserError, match="unknown channel 'foo'"):
        PrepConfig(channels=("foo",))
    with pytest.raises(UserError, match="listed twice"):
        PrepConfig(channels=("sci", "sci"))
    with pytest.raises(UserError, match="at least one"):
        parse_channels(" , ")
    renamed = PrepConfig(channels=("s",), plane_names=("a", "b", "c", "s"))
    assert renamed.plane_indices == [3]


def test_fingerprint_depends_on_file_and_settings() -> None:
    base = fingerprint("abc", PrepConfig())
    assert base == fingerprint("abc", PrepConfig())
    assert base != fingerprint("abd", PrepConfig())
    assert base != fingerprint("abc", PrepConfig(channels=("sci", "scorr")))
    assert base != fingerprint("abc", PrepConfig(split_seed=1))


def test_the_default_zscale_contrast_leaves_fingerprints_as_they_were() -> None:
    """Studies and cached tensors recorded before the contrast was a setting keep their fingerprints: this is the
    fingerprint the settings hashed to then (channels scorr, planes sci/ref/diff/scorr, seed 0, 70/15/15)."""
    import hashlib
    import json

    before = {
        "channels": ["scorr"],
        "plane_names": ["sci", "ref", "diff", "scorr"],
        "split_seed": 0,
        "fractions": [0.7, 0.15, 0.15],
    }
    payload = json.dumps({"file": "abc", "prep": before, "version": 1}, sort_keys=True)
    assert fingerprint("abc", PrepConfig()) == hashlib.sha256(payload.encode()).hexdigest()[:16]
    assert fingerprint("abc", PrepConfig(zscale_contrast=0.1)) != fingerprint("abc", PrepConfig())
    with pytest.raises(UserError, match="ZScale contrast"):
        PrepConfig(zscale_contrast=0.0)


def test_preprocess_selects_the_planes_and_zscales_them_with_the_contrast() -> None:
    samples = np.random.default_rng(0).normal(100, 5, (3, 64, 64, 4))
    yy, xx = np.mgrid[:64, :64]
    samples += 500 * np.exp(-((yy - 32) ** 2 + (xx - 32) ** 2) / 8)[..., None]  # a source: the limits are not clipped
    samples = samples.astype(np.float32)
    samples[0, :, :4, 1] = np.nan
    config = PrepConfig(channels=("ref", "scorr"))
    x, n_bad = preprocess(samples, config)
    expected, expected_bad = zscale(np.moveaxis(samples[..., [1, 3]], -1, 1))
    assert x.shape == (3, 2, 64, 64) and np.array_equal(x, expected) and n_bad == expected_bad == 64 * 4
    other, _ = preprocess(samples, PrepConfig(channels=("ref", "scorr"), zscale_contrast=0.05))
    assert not np.array_equal(other, x)


def test_manifest_round_trip_and_older_manifests() -> None:
    config = PrepConfig(channels=("diff", "sci"), split_seed=3, fractions=(0.6, 0.2, 0.2), zscale_contrast=0.1)
    manifest = config.to_manifest()
    assert manifest["scaling"] == "zscale" and manifest["zscale_contrast"] == 0.1
    assert PrepConfig.from_manifest(manifest) == config
    # a manifest written before the contrast was recorded (as `train` wrote them) was scaled with 0.25
    old = {"channels": ["scorr"], "scaling": "zscale", "threshold": 0.5, "split_seed": 0}
    assert PrepConfig.from_manifest(old) == PrepConfig() and PrepConfig.from_manifest(old).zscale_contrast == 0.25
    with pytest.raises(UserError, match="invalid preprocessing settings"):
        PrepConfig.from_manifest({"split_seed": "zero"})


def test_load_splits_is_deterministic_and_cached(small_file: Path, isolated_cache: Path) -> None:
    a = load_splits(small_file)
    cached = list((isolated_cache / "prepared").glob("*.npz"))
    assert [p.stem for p in cached] == [a.fingerprint]
    b = load_splits(small_file)  # served from the cache
    assert a.fingerprint == b.fingerprint
    for name in ("train", "val", "test"):
        assert torch.equal(a.split(name)[0], b.split(name)[0]) and torch.equal(a.split(name)[1], b.split(name)[1])
    assert a.x_train.shape[1:] == (1, 64, 64) and a.x_train.dtype == torch.float32
    assert len(a.y_train) + len(a.y_val) + len(a.y_test) == 240
    assert 0.4 < a.pos_weight < 0.6  # about one FP per two TP
    four = load_splits(small_file, PrepConfig(channels=("sci", "ref", "diff", "scorr")))
    assert four.in_channels == 4 and four.fingerprint != a.fingerprint
    # the scorr plane is the same whichever other planes come along
    assert torch.equal(four.x_train[:, 3], a.x_train[:, 0])


def test_all_nan_cutout_is_refused_and_nothing_is_cached(tmp_path: Path, isolated_cache: Path) -> None:
    good = {"sample": np.random.default_rng(0).normal(size=(64, 64, 4))}
    bad = {"sample": np.full((64, 64, 4), np.nan)}
    records = {"TP": [good, copy.deepcopy(good)], "FP": [copy.deepcopy(good), bad]}  # a file may not reuse a cutout
    path = write_npy_object(tmp_path / "x.npy", records)
    with pytest.raises(UserError, match="no finite pixel"):
        load_splits(path)
    assert not any(p.is_file() for p in isolated_cache.rglob("*"))


def test_default_data_is_simulated_once(isolated_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from hpo_astro.data import prepare, simulate

    calls = []
    real = simulate.simulate_records

    def counting(n: int, seed: int) -> dict:
        calls.append((n, seed))
        return real(n=60, seed=seed)  # small stand-in keeps the test fast

    monkeypatch.setattr(simulate, "simulate_records", counting)
    first = prepare.default_data_path()
    second = prepare.default_data_path()
    assert first == second and first.is_file() and calls == [(prepare.DEFAULT_SIM_N, prepare.DEFAULT_SIM_SEED)]
    assert first.parent == isolated_cache
    assert exromana.load(first).samples.shape[0] == 60
