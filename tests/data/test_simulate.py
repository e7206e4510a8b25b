"""Tests of the cutout simulator: format, determinism, kinds, and the physics each plane must show."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest

from hpo_astro.data.simulate import (
    FP_KINDS,
    PLANES,
    SIZE,
    TP_KINDS,
    SimConfig,
    simulate_records,
)

N = 240  # enough for every kind (the apportioning guarantees one of each) and still fast
C = SIZE // 2  # the candidate's pixel


@pytest.fixture(scope="module")
def records() -> dict[str, list[dict]]:
    return simulate_records(n=N, seed=0)


def _all(records: dict[str, list[dict]]) -> list[dict]:
    return records["TP"] + records["FP"]


def _of_kind(records: dict[str, list[dict]], kind: str) -> list[dict]:
    return [r for r in _all(records) if r["kind"] == kind]


def _central_max(plane: np.ndarray, half: int = 2) -> float:
    return float(np.nanmax(plane[C - half : C + half + 1, C - half : C + half + 1]))


def test_public_constants() -> None:
    assert PLANES == ("sci", "ref", "diff", "scorr")
    assert len(set(TP_KINDS)) == len(TP_KINDS) and len(set(FP_KINDS)) == len(FP_KINDS)
    assert not set(TP_KINDS) & set(FP_KINDS)
    for kind in ("dipole", "cosmic_ray", "hot_pixel", "bad_column", "trail", "ghost", "edge", "noise_peak"):
        assert kind in FP_KINDS


def test_class_counts_and_ratio(records: dict[str, list[dict]]) -> None:
    assert set(records) == {"TP", "FP"}
    assert len(records["TP"]) == round(N * 2 / 3) == 160
    assert len(records["FP"]) == N - 160
    small = simulate_records(n=10, seed=1, tp_fraction=0.3)
    assert (len(small["TP"]), len(small["FP"])) == (3, 7)
    assert simulate_records(n=0) == {"TP": [], "FP": []}
    only_fp = simulate_records(n=5, seed=2, tp_fraction=0.0)
    assert len(only_fp["TP"]) == 0 and len(only_fp["FP"]) == 5


def test_bad_arguments() -> None:
    with pytest.raises(ValueError):
        simulate_records(n=-1)
    with pytest.raises(ValueError):
        simulate_records(n=10, tp_fraction=1.5)
    with pytest.raises(ValueError):
        SimConfig(tp_kind_weights=(1.0, 1.0))
    with pytest.raises(ValueError):
        SimConfig(fwhm_sci=(3.0, 2.0))


def test_sample_shape_and_dtype(records: dict[str, list[dict]]) -> None:
    for rec in _all(records):
        sample = rec["sample"]
        assert isinstance(sample, np.ndarray)
        assert sample.shape == (SIZE, SIZE, len(PLANES)) == (64, 64, 4)
        assert sample.dtype == np.float32
        # The candidate is on the chip, within the centring jitter of the middle pixel.
        assert np.isfinite(sample[C - 2 : C + 3, C - 2 : C + 3]).all(axis=-1).any()


def test_labels_match_kinds(records: dict[str, list[dict]]) -> None:
    assert {r["kind"] for r in records["TP"]} == set(TP_KINDS)
    assert {r["kind"] for r in records["FP"]} == set(FP_KINDS)


def test_kinds_are_shuffled(records: dict[str, list[dict]]) -> None:
    kinds = [r["kind"] for r in records["FP"]]
    assert kinds != sorted(kinds, key=FP_KINDS.index)  # not grouped by kind: contiguous splits stay mixed


def test_extra_keys_are_plain_python(records: dict[str, list[dict]]) -> None:
    for rec in _all(records):
        assert {"sample", "kind", "snr"} <= set(rec)
        for key, value in rec.items():
            if key != "sample":
                assert type(value) in (str, float, int), (key, type(value))
        assert np.isfinite(rec["snr"])

    # The extras must pickle without any global (an allow-list unpickler admits none for them).
    class NoGlobals(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> object:
            raise AssertionError(f"extra keys need a global: {module}.{name}")

    extras = [{k: v for k, v in rec.items() if k != "sample"} for rec in _all(records)]
    assert NoGlobals(io.BytesIO(pickle.dumps(extras))).load() == extras


def test_deterministic_by_seed(records: dict[str, list[dict]]) -> None:
    again = simulate_records(n=N, seed=0)
    for a, b in zip(_all(records), _all(again), strict=True):
        assert a["sample"].tobytes() == b["sample"].tobytes()  # bit-identical, NaNs included
        assert {k: v for k, v in a.items() if k != "sample"} == {k: v for k, v in b.items() if k != "sample"}
    other = simulate_records(n=N, seed=1)
    pairs = zip(_all(records), _all(other), strict=True)
    assert any(a["sample"].tobytes() != b["sample"].tobytes() for a, b in pairs)


def test_config_changes_output() -> None:
    base = simulate_records(n=20, seed=3)
    noisier = simulate_records(n=20, seed=3, config=SimConfig(sky=(2000.0, 3000.0)))
    assert base["TP"][0]["sample"].tobytes() != noisier["TP"][0]["sample"].tobytes()


def test_bright_transients_peak_in_scorr_at_the_centre(records: dict[str, list[dict]]) -> None:
    bright = [r for r in records["TP"] if r["snr"] > 15]
    assert len(bright) >= 20
    peaks = np.array([_central_max(r["sample"][..., 3]) for r in bright])
    snrs = np.array([r["snr"] for r in bright])
    # The injected significance is what scorr shows at the candidate, up to noise and sampling.
    assert 0.7 < np.median(peaks / snrs) < 1.3
    assert np.mean(peaks > 8) > 0.9
    # The peak is the centre of the cutout (recentred), within the configured jitter.
    for r in bright[:20]:
        scorr = r["sample"][..., 3]
        y, x = np.unravel_index(np.nanargmax(np.where(np.isfinite(scorr), scorr, -np.inf)), scorr.shape)
        assert abs(y - C) <= 3 and abs(x - C) <= 3


def test_noise_peaks_are_faint_and_scorr_is_normalised(records: dict[str, list[dict]]) -> None:
    noise = _of_kind(records, "noise_peak")
    assert noise
    cfg = SimConfig()
    for r in noise:
        peak = _central_max(r["sample"][..., 3])
        assert cfg.noise_peak_snr_min - 1.0 < peak < 15.0  # conditioned on a modest fluctuation
    # Far from the candidate, scorr is a unit-variance significance image.
    plain = [r["sample"][..., 3] for r in records["TP"] if r["kind"] == "transient"]
    corners = np.concatenate([p[:16, :16].ravel() for p in plain] + [p[-16:, -16:].ravel() for p in plain])
    corners = corners[np.isfinite(corners)]
    mad_sigma = 1.4826 * np.median(np.abs(corners - np.median(corners)))
    assert 0.75 < mad_sigma < 1.3
    assert abs(np.median(corners)) < 0.3


def test_reference_lacks_the_transient(records: dict[str, list[dict]]) -> None:
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    ring = np.hypot(yy - C, xx - C)
    aperture = ring <= 6
    checked = 0
    sci_excess, ref_excess, ratios = [], [], []
    for r in _of_kind(records, "transient"):
        if r["snr"] < 20:
            continue
        sci, ref, diff = (r["sample"][..., i].astype(float) for i in range(3))
        sci_bg, ref_bg = np.nanmedian(sci), np.nanmedian(ref)
        sci_sum = np.nansum((sci - sci_bg)[aperture])
        ref_sum = np.nansum((ref - ref_bg)[aperture])
        diff_sum = np.nansum(diff[aperture])
        sci_excess.append(sci_sum / r["flux"])
        ref_excess.append(ref_sum / r["flux"])
        # sci - ref is the difference image up to PSF matching, which conserves flux.
        ratios.append(diff_sum / (sci_sum - ref_sum))
        checked += 1
    assert checked >= 5
    assert 0.8 < np.median(sci_excess) < 1.2  # the transient's flux is in the science image
    assert abs(np.median(ref_excess)) < 0.15  # and not in the reference
    assert 0.85 < np.median(ratios) < 1.15


def test_dipoles_have_a_negative_lobe(records: dict[str, list[dict]]) -> None:
    dipoles = [r for r in _of_kind(records, "dipole") if r["snr"] > 6]
    assert dipoles
    lows = [float(np.nanmin(r["sample"][C - 6 : C + 7, C - 6 : C + 7, 3])) for r in dipoles]
    assert np.mean(np.array(lows) < -3.0) > 0.8
    transients = [r for r in _of_kind(records, "transient") if r["snr"] > 6]
    t_lows = [float(np.nanmin(r["sample"][C - 6 : C + 7, C - 6 : C + 7, 3])) for r in transients]
    assert np.median(lows) < np.median(t_lows) - 2.0


def test_sci_only_artefacts_are_absent_from_the_reference() -> None:
    # An empty field (no stars, no galaxies) so that only the artefact can stand out.
    weights = (0.0, 1.0, 1.0) + (0.0,) * 6  # cosmic rays and hot pixels
    empty = {"field_star_density": 0.0, "random_host_fraction": 0.0, "offchip_fraction": 0.0}
    cfg = SimConfig(fp_kind_weights=weights, **empty)
    recs = simulate_records(n=16, seed=5, tp_fraction=0.0, config=cfg)["FP"]
    assert {r["kind"] for r in recs} == {"cosmic_ray", "hot_pixel"}
    box = np.s_[C - 4 : C + 5, C - 4 : C + 5]
    checked = 0
    for r in recs:
        sci, ref = r["sample"][..., 0].astype(float), r["sample"][..., 1].astype(float)
        sci_sigma = 1.4826 * np.median(np.abs(sci - np.median(sci)))
        ref_sigma = 1.4826 * np.median(np.abs(ref - np.median(ref)))
        assert ref[box].max() - np.median(ref) < 5 * ref_sigma
        if r["snr"] > 10:
            assert sci[box].max() - np.median(sci) > 4 * sci_sigma
            checked += 1
    assert checked >= 3


def test_reference_is_deeper_than_science(records: dict[str, list[dict]]) -> None:
    ratios = []
    for r in records["TP"][:60]:
        sci, ref = r["sample"][:16, :16, 0], r["sample"][:16, :16, 1]
        if not (np.isfinite(sci).all() and np.isfinite(ref).all()):
            continue
        mad = [1.4826 * np.median(np.abs(p - np.median(p))) for p in (sci, ref)]
        ratios.append(mad[1] / mad[0])
    assert np.median(ratios) < 0.7


def test_nan_pixels_when_forced_and_never_when_disabled() -> None:
    weights = (0.0,) * 7 + (1.0, 0.0)  # only edge artefacts
    forced = simulate_records(n=12, seed=4, tp_fraction=0.0, config=SimConfig(fp_kind_weights=weights))
    assert all(r["kind"] == "edge" for r in forced["FP"])
    nan_cfg = SimConfig(fp_kind_weights=weights, offchip_nan_prob=1.0)
    with_nan = simulate_records(n=12, seed=4, tp_fraction=0.0, config=nan_cfg)
    for r in with_nan["FP"]:
        bad = ~np.isfinite(r["sample"])
        assert bad.any() and r["offchip"] == 1
        assert (bad == bad[..., :1]).all()  # off the chip in every plane alike
        assert np.isfinite(r["sample"][C - 2 : C + 3, C - 2 : C + 3]).all(axis=-1).any()
    zero_cfg = SimConfig(fp_kind_weights=weights, offchip_nan_prob=0.0)
    for r in simulate_records(n=12, seed=4, tp_fraction=0.0, config=zero_cfg)["FP"]:
        assert np.isfinite(r["sample"]).all()
        assert (r["sample"] == 0).all(axis=-1).any()  # the off-chip region is exactly 0 instead


def test_default_mix_contains_some_nan_records() -> None:
    recs = simulate_records(n=600, seed=0)
    flagged = [r for r in _all(recs) if not np.isfinite(r["sample"]).all()]
    assert 0 < len(flagged) < 0.05 * 600
