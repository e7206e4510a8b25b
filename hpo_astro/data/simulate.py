"""A physically motivated simulator of ZTF-like real/bogus cutouts in the ExRomana format
(`{"TP": [rec, ...], "FP": [rec, ...]}`, each `rec["sample"]` a (64, 64, 4) float array).

Every record is a 64x64 cutout with four planes (sci, ref, diff, scorr), built the way a difference-imaging
pipeline builds them:

1. An astrophysical scene (field stars, an optional host galaxy, the transient or the artefact) is rendered
   in Fourier space, convolved with a Gaussian PSF whose width differs between the science exposure and
   the deeper reference coadd. Detector artefacts (cosmic rays, hot pixels, bad columns, edge glow) and
   sci-only light (satellite trails, ghosts) are added in pixel space.
2. Sky plus source Poisson noise (Gaussian approximation) is drawn; the reference is a coadd, so its noise
   is a fraction of the science noise. The science image saturates.
3. Both images are PSF-matched to a common, slightly broader PSF (with a small, random matching error),
   and diff = sci_matched - ref_matched.
4. scorr is the matched-filter significance of diff: diff convolved with the PSF, divided by the standard
   deviation of that filtered image computed from the sky + source variance maps (like ZOGY's S_corr).
5. The cutout is centred on the scorr peak near the candidate (as alert cutouts are), then shifted by a
   few pixels of jitter; regions beyond a chip edge are exactly 0 or NaN.

The real/bogus ambiguity comes from physics only: faint transients look like noise peaks conditioned on the
same significance, sharp cosmic rays and hot pixels look point-like after the matched filter, small-offset
dipoles have a dominant positive lobe, hosts and seeing vary. All convolutions are FFTs on a padded canvas.
Deterministic by seed: records are generated in fixed-size chunks, each with its own spawned generator.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

PLANES: tuple[str, ...] = ("sci", "ref", "diff", "scorr")
TP_KINDS: tuple[str, ...] = ("transient", "host_transient", "nuclear_transient", "variable_star")
FP_KINDS: tuple[str, ...] = (
    "dipole",
    "cosmic_ray",
    "hot_pixel",
    "bad_column",
    "bright_star_residual",
    "trail",
    "ghost",
    "edge",
    "noise_peak",
)
SIMULATOR_VERSION = 1  # bump whenever the output for a given (n, seed, config) changes

SIZE = 64  # cutout side in pixels
_PAD = 8  # canvas margin: room for the recentring shift, keeps most FFT wrap-around out of the cutout
_CANVAS = SIZE + 2 * _PAD
_CENTRE = _PAD + SIZE // 2  # nominal candidate position on the canvas (pixel 32 of the cutout)
_CHUNK = 256  # records per vectorised batch; fixed so that results do not depend on memory settings
FWHM_PER_SIGMA = 2.0 * np.sqrt(2.0 * np.log(2.0))
_ALIASES = (-1, 0, 1)  # spectral aliases summed when sampling point sources (enough for FWHM >= 1.2 px)


@dataclass(frozen=True)
class SimConfig:
    """Knobs of the simulation. Ranges are (low, high); "log" ranges are drawn log-uniformly.

    Significances ("snr") are targets for the noise-free scorr the signal produces at the candidate.
    The defaults set the difficulty of the scorr-only real/bogus task: on n=4676, seed 0, a one-layer CNN
    reaches about 0.88 test accuracy and a three-layer one about 0.94. What makes it hard: the share of
    point-like bogus (noise_peak, hot_pixel, compact cosmic rays), faint transients (tp_snr, tp_snr_slope,
    tp_faint_*), small-offset dipoles (dipole_offset), seeing spread and centring jitter.
    """

    # Observing conditions.
    fwhm_sci: tuple[float, float] = (1.5, 4.0)  # px, science-image seeing
    fwhm_ref: tuple[float, float] = (1.4, 2.2)  # px, reference coadd: built from good-seeing frames
    sky: tuple[float, float] = (100.0, 1000.0)  # counts/px (log), sets the Poisson noise
    ref_noise_ratio: tuple[float, float] = (0.25, 0.5)  # ref noise / sci noise: the coadd is deeper
    saturation: float = 60000.0  # counts; the science image clips here
    registration_sd: float = 0.04  # px, per-axis astrometric error of every subtraction
    astrometric_sigma: float = 0.05  # px, registration noise the significance allows for (ZOGY S_corr)
    psf_mismatch_sd: float = 0.015  # relative PSF-matching error of every subtraction
    # Static scene (present in sci and ref, cancels in diff up to the errors above).
    field_star_density: float = 4e-4  # stars per px^2 of canvas
    field_star_snr: tuple[float, float] = (5.0, 3000.0)  # (log)
    random_host_fraction: float = 0.15  # records with an unrelated galaxy near the centre
    host_snr: tuple[float, float] = (20.0, 600.0)  # (log) point-source-equivalent SNR of the whole galaxy
    host_scale: tuple[float, float] = (1.2, 6.0)  # px, exponential-disk scale length
    # Real transients.
    tp_kind_weights: tuple[float, ...] = (0.25, 0.2, 0.15, 0.4)  # in TP_KINDS order
    tp_snr: tuple[float, float] = (5.0, 100.0)  # most transients: a power law dN/dS ~ S^-slope in this range
    tp_snr_slope: float = 1.6  # 1 is log-uniform; larger puts more transients near the detection limit
    tp_faint_fraction: float = 0.04  # this share is drawn uniformly in tp_faint_snr instead: the hard ones
    tp_faint_snr: tuple[float, float] = (3.0, 6.0)
    variable_base_snr: tuple[float, float] = (10.0, 400.0)  # (log) quiescent star under a variable
    host_offset: tuple[float, float] = (1.5, 8.0)  # px, host_transient: transient-to-nucleus distance
    # Bogus detections.
    # In FP_KINDS order: dipole, cosmic_ray, hot_pixel, bad_column, bright_star_residual, trail, ghost, edge,
    # noise_peak.
    fp_kind_weights: tuple[float, ...] = (0.42, 0.05, 0.01, 0.06, 0.08, 0.16, 0.08, 0.10, 0.04)
    fp_snr: tuple[float, float] = (4.5, 40.0)  # (log) significance of extended artefacts and dipoles
    sharp_snr: tuple[float, float] = (5.0, 80.0)  # (log) significance of cosmic rays and hot pixels
    noise_peak_snr_min: float = 4.0  # noise peaks are conditioned on scorr = min + Exp(scale)
    noise_peak_snr_scale: float = 0.8
    dipole_offset: tuple[float, float] = (0.2, 1.3)  # px, misregistration of the dipole's star
    dipole_flux_sd: float = 0.03  # relative flux mismatch of the dipole's star (variability, bad zero point)
    dipole_global_fraction: float = 0.5  # share of dipoles from a whole-image misregistration (vs one star)
    cr_psf_like_fraction: float = 0.15  # share of cosmic rays that are compact blobs rather than tracks
    cr_blob_sigma: tuple[float, float] = (0.4, 0.9)  # px
    cr_track_length: tuple[float, float] = (5.0, 16.0)  # px
    bright_peak_ratio: tuple[float, float] = (1.2, 30.0)  # (log) star peak / saturation level
    bright_mismatch: tuple[float, float] = (0.03, 0.12)  # relative PSF mismatch around bright stars
    ghost_radius: tuple[float, float] = (4.0, 12.0)  # px
    edge_distance: tuple[float, float] = (1.0, 5.0)  # px from the candidate to the chip edge
    # Off-chip regions and non-finite pixels.
    offchip_fraction: float = 0.02  # non-edge records that still touch a chip edge (far from the centre)
    offchip_nan_prob: float = 0.4  # off-chip pixels are NaN (else exactly 0) with this probability
    # Cutout placement.
    recentre_radius: int = 3  # px: the cutout is centred on the scorr maximum within this radius
    center_jitter: int = 3  # px: then shifted by up to this many pixels per axis

    def __post_init__(self) -> None:
        if len(self.tp_kind_weights) != len(TP_KINDS):
            raise ValueError(f"tp_kind_weights needs {len(TP_KINDS)} entries (one per TP kind)")
        if len(self.fp_kind_weights) != len(FP_KINDS):
            raise ValueError(f"fp_kind_weights needs {len(FP_KINDS)} entries (one per FP kind)")
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, tuple) and len(value) == 2 and value[0] > value[1]:
                raise ValueError(f"{f.name}: low {value[0]} is above high {value[1]}")
        for name in ("tp_kind_weights", "fp_kind_weights"):
            weights = getattr(self, name)
            if min(weights) < 0 or sum(weights) <= 0:
                raise ValueError(f"{name} must be non-negative with a positive sum")
        reach = self.recentre_radius + self.center_jitter
        if min(self.recentre_radius, self.center_jitter) < 0 or reach > _PAD:
            raise ValueError(f"recentre_radius + center_jitter must be between 0 and {_PAD} px")


# ----------------------------------------------------------------------------------------------------
# Small helpers


def _loguniform(rng: np.random.Generator, lo_hi: tuple[float, float], size: int) -> np.ndarray:
    lo, hi = lo_hi
    return np.exp(rng.uniform(np.log(lo), np.log(hi), size))


def _power_law(rng: np.random.Generator, lo_hi: tuple[float, float], slope: float, size: int) -> np.ndarray:
    """Draws with density ~ x^-slope on [lo, hi] (inverse CDF); slope 1 is log-uniform."""
    if abs(slope - 1.0) < 1e-9:
        return _loguniform(rng, lo_hi, size)
    e = 1.0 - slope
    lo, hi = lo_hi[0] ** e, lo_hi[1] ** e
    return (lo + rng.random(size) * (hi - lo)) ** (1.0 / e)


def _uniform(rng: np.random.Generator, lo_hi: tuple[float, float], size: int) -> np.ndarray:
    return rng.uniform(lo_hi[0], lo_hi[1], size)


def _apportion(n: int, weights: tuple[float, ...]) -> np.ndarray:
    """Integer counts summing to n in proportion to weights (largest remainder), each kind with a positive
    weight getting at least one record when n allows, so that small data sets still show every kind."""
    w = np.asarray(weights, dtype=float)
    w = w / w.sum()
    counts = np.floor(w * n).astype(int)
    order = np.argsort(-(w * n - counts), kind="stable")
    counts[order[: n - counts.sum()]] += 1
    positive = np.flatnonzero(w > 0)
    if n >= len(positive):
        for k in positive:
            if counts[k] == 0:
                counts[k] = 1
                counts[np.argmax(counts)] -= 1
    return counts


def _flux_for_snr(snr: np.ndarray, sigma_psf: np.ndarray, sky: np.ndarray) -> np.ndarray:
    """Flux of a point source with this sky-limited matched-filter SNR: noise-equivalent area is 4 pi s^2."""
    return snr * np.sqrt(sky) * np.sqrt(4.0 * np.pi) * sigma_psf


def _sum_sq(h_hat: np.ndarray) -> np.ndarray:
    """Sum over pixels of h^2 from the rfft2 of h (Parseval), one value per record."""
    n = h_hat.shape[-2]
    power = np.abs(h_hat) ** 2
    weight = np.full(h_hat.shape[-1], 2.0)
    weight[0] = 1.0
    if n % 2 == 0:
        weight[-1] = 1.0  # the Nyquist column has no mirrored partner
    return (power * weight).sum(axis=(-2, -1)) / n**2


class _Batch:
    """State of one chunk of records on the padded canvas, filled in by the per-kind functions."""

    def __init__(self, kinds: np.ndarray, cfg: SimConfig, rng: np.random.Generator) -> None:
        m = len(kinds)
        self.kinds, self.m, self.cfg, self.rng = kinds, m, cfg, rng
        n = _CANVAS
        self.fy = np.fft.fftfreq(n)[:, None]  # cycles per pixel, rfft2 layout
        self.fx = np.fft.rfftfreq(n)[None, :]
        self.f2 = self.fy**2 + self.fx**2
        self.yy, self.xx = np.mgrid[0:n, 0:n].astype(float)
        # Observing conditions of each record.
        self.sig_s = _uniform(rng, cfg.fwhm_sci, m) / FWHM_PER_SIGMA
        self.sig_r = _uniform(rng, cfg.fwhm_ref, m) / FWHM_PER_SIGMA
        self.sky = _loguniform(rng, cfg.sky, m)
        self.sky_r = self.sky * rng.uniform(0.6, 1.6, m)  # the coadd's own background pedestal
        self.ratio = _uniform(rng, cfg.ref_noise_ratio, m)
        self.eps = rng.normal(0.0, cfg.psf_mismatch_sd, m)
        # PSF matching fails worst around bright stars (their wings, the PSF model's weakest part).
        bright = np.flatnonzero(kinds == "bright_star_residual")
        sign = rng.choice([-1.0, 1.0], len(bright))
        self.eps[bright] = sign * _uniform(rng, cfg.bright_mismatch, len(bright))
        self.ref_shift = rng.normal(0.0, cfg.registration_sd, (m, 2))  # (dx, dy) of ref vs sci
        # Image components.
        shape_hat = (m, n, n // 2 + 1)
        self.sci_hat = np.zeros(shape_hat, complex)  # PSF-convolved sky light, science
        self.ref_hat = np.zeros(shape_hat, complex)  # PSF-convolved sky light, reference
        self.sci_light = np.zeros((m, n, n))  # sci-only light that is not a point model (trails, ghosts)
        self.sci_pix = np.zeros((m, n, n))  # detector artefacts, added after the noise
        # Per-record plans.
        self.host = np.zeros(m, bool)
        self.host_xy = np.full((m, 2), float(_CENTRE))
        self.cond_u = np.full(m, np.nan)  # noise peaks: conditioned scorr value at cond_xy
        self.cond_xy = np.full((m, 2), float(_CENTRE))
        self.off_dir = np.full(m, -1)  # off-chip half plane: 0 +x, 1 -x, 2 +y, 3 -y; -1 none
        self.off_dist = np.zeros(m)
        self.bleed_len = np.zeros(m)
        self.bleed_xy = np.zeros((m, 2))
        self.snr = np.full(m, np.nan)
        self.detail = np.full(m, "", dtype=object)  # sub-type, e.g. the cosmic-ray morphology
        self.flux = np.zeros(m)
        self._pipeline_filters()

    # Transfer functions and kernels ---------------------------------------------------------------------
    def gauss_tf(self, sigma: np.ndarray) -> np.ndarray:
        """Fourier transform of unit-flux Gaussians of width sigma (one per record)."""
        return np.exp(-2.0 * np.pi**2 * sigma[:, None, None] ** 2 * self.f2)

    def shift_tf(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Fourier transform of deltas at (x, y): a phase ramp, exact for sub-pixel positions."""
        return np.exp(-2j * np.pi * (self.fx * x[:, None, None] + self.fy * y[:, None, None]))

    def _pipeline_filters(self) -> None:
        """Transfer functions of the subtraction for every record, computed once.

        Both images are convolved to a common Gaussian PSF of width T, slightly broader than the worse
        seeing; the reference is matched to T (1 + eps) instead of T, the PSF-matching error that leaves rings
        around bright stars. The matched filter is P = the common PSF; each image reaches the significance
        through K * P. `sq_*` are the transforms of (K * P)^2, which carry variance maps into the filtered
        image's variance; `sigma_f` is the sky-limited noise of the filtered difference.
        """
        s, r, e = self.sig_s, self.sig_r, self.eps
        t = np.maximum(s, r) * (1.0 + 2.0 * np.abs(e)) + 0.05
        self.k_sci = self.gauss_tf(np.sqrt(np.maximum(t**2 - s**2, 0.0)))
        self.k_ref = self.gauss_tf(np.sqrt(np.maximum((t * (1.0 + e)) ** 2 - r**2, 0.0)))
        self.p = self.gauss_tf(t)
        self.h_sci, self.h_ref = self.k_sci * self.p, self.k_ref * self.p
        shape = (_CANVAS, _CANVAS)
        self.sq_sci = np.fft.rfft2(np.fft.irfft2(self.h_sci, s=shape) ** 2)
        self.sq_ref = np.fft.rfft2(np.fft.irfft2(self.h_ref, s=shape) ** 2)
        self.sigma_f = np.sqrt(self.sky * (_sum_sq(self.h_sci) + self.ratio**2 * _sum_sq(self.h_ref)))

    def value_at(self, spectrum: np.ndarray, at: np.ndarray) -> np.ndarray:
        """irfft2(spectrum) evaluated at one flat pixel index per record, without a full inverse FFT."""
        n = _CANVAS
        py, px = np.divmod(at, n)
        weight = np.full(n // 2 + 1, 2.0)
        weight[0] = weight[-1] = 1.0  # columns without a mirrored partner (n is even)
        row = np.exp(2j * np.pi * self.fy[None, :, 0] * py[:, None])  # (k, n)
        col = weight * np.exp(2j * np.pi * self.fx[0][None, :] * px[:, None])  # (k, n//2+1)
        return np.einsum("kyx,ky,kx->k", spectrum, row, col).real / n**2

    # Rendering ------------------------------------------------------------------------------------------
    def points_hat(self, flux: np.ndarray, x: np.ndarray, y: np.ndarray, sigma: np.ndarray) -> np.ndarray:
        """Gaussian point sources sampled at the pixel centres, given (k, J) arrays of flux and positions.

        The transform of a sampled, undersampled Gaussian is the sum of its aliases; summing them (rather
        than truncating the spectrum at Nyquist) avoids Gibbs ringing around bright stars. Gaussian and
        phase ramp are separable, so all sources of a record are one batched matmul.
        """
        flux, x, y = (np.atleast_2d(a.T).T for a in (flux, x, y))  # (k,) -> (k, 1)
        s2 = -2.0 * np.pi**2 * sigma[:, None, None] ** 2
        fy, fx = self.fy[None, :, :], self.fx[0][None, None, :]
        row = sum(np.exp(s2 * (fy - a) ** 2 - 2j * np.pi * (fy - a) * y[:, None, :]) for a in _ALIASES)
        col = sum(np.exp(s2 * (fx - a) ** 2 - 2j * np.pi * (fx - a) * x[:, :, None]) for a in _ALIASES)
        return np.matmul(flux[:, None, :] * row, col)  # (k, n, J) @ (k, J, n//2+1)

    def pair_hat(
        self, idx: np.ndarray, flux_s: np.ndarray, flux_r: np.ndarray, x: np.ndarray, y: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Spectra (sci, ref) of static point sources; the reference copy carries the registration error."""
        dx, dy = self.ref_shift[idx, 0], self.ref_shift[idx, 1]
        if np.ndim(x) == 2:
            dx, dy = dx[:, None], dy[:, None]
        return (
            self.points_hat(flux_s, x, y, self.sig_s[idx]),
            self.points_hat(flux_r, x + dx, y + dy, self.sig_r[idx]),
        )

    def add_pair(self, idx: np.ndarray, flux: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
        """Add static point sources (same flux in both images) to both images."""
        sci, ref = self.pair_hat(idx, flux, flux, x, y)
        self.sci_hat[idx] += sci
        self.ref_hat[idx] += ref

    def scale_to_snr(
        self,
        idx: np.ndarray,
        target: np.ndarray,
        xy: np.ndarray,
        sci_hat: np.ndarray | None = None,
        ref_hat: np.ndarray | None = None,
        sci_light: np.ndarray | None = None,
        sci_pix: np.ndarray | None = None,
        radius: float = 3.0,
        under: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Amplitude that gives a unit signal the target significance, and the significance it reaches.

        The signal's noise-free filtered difference image is computed as the pipeline does; at its maximum
        within `radius` of xy, the significance of amplitude f is f a / sqrt(s2 + f v + f^2 g), with a the
        unit response, s2 the sky variance, v the signal's own Poisson variance (light only, not detector
        artefacts) and g its astrometric variance. Solving for f is a quadratic. Signals whose astrometric
        term caps the significance below the target (tiny dipoles) are made as bright as that cap allows.
        All unit images are non-negative, so their variance maps are the images themselves. `under` are the
        (sci, ref) spectra of a static source beneath the signal: it adds its Poisson noise to s2.
        """
        shape = (_CANVAS, _CANVAS)
        k = len(idx)
        light = np.zeros((k, _CANVAS, _CANVAS // 2 + 1), complex)
        if sci_hat is not None:
            light += sci_hat
        if sci_light is not None:
            light += np.fft.rfft2(sci_light)
        sci_f = (light + np.fft.rfft2(sci_pix) if sci_pix is not None else light) * self.h_sci[idx]
        ref_f = ref_hat * self.h_ref[idx] if ref_hat is not None else np.zeros_like(sci_f)
        filtered = np.fft.irfft2(sci_f - ref_f, s=shape)
        near = (self.xx - xy[:, 0, None, None]) ** 2 + (self.yy - xy[:, 1, None, None]) ** 2 <= radius**2
        at = np.where(near, filtered, -np.inf).reshape(k, -1).argmax(axis=1)
        a = np.maximum(filtered.reshape(k, -1)[np.arange(k), at], 1e-12)
        g = np.zeros(k)
        for contribution in (sci_f, ref_f):
            for freq in (self.fx, self.fy):
                g += self.value_at(2j * np.pi * freq * contribution, at) ** 2
        g *= self.cfg.astrometric_sigma**2
        var_hat = light * self.sq_sci[idx]
        if ref_hat is not None:
            var_hat += self.ratio[idx, None, None] ** 2 * ref_hat * self.sq_ref[idx]
        v = np.maximum(self.value_at(var_hat, at), 0.0)
        s2 = self.sigma_f[idx] ** 2
        if under is not None:
            ratio2 = self.ratio[idx, None, None] ** 2
            static = under[0] * self.sq_sci[idx] + ratio2 * under[1] * self.sq_ref[idx]
            s2 = s2 + np.maximum(self.value_at(static, at), 0.0)
        quad = np.maximum(a**2 - target**2 * g, 0.05 * a**2)  # > 0: capped where the target is unreachable
        flux = (target**2 * v + np.sqrt(target**4 * v**2 + 4 * quad * target**2 * s2)) / (2 * quad)
        reached = flux * a / np.sqrt(s2 + flux * v + flux**2 * g)
        return flux, reached

    def add_artefact(
        self,
        idx: np.ndarray,
        img: np.ndarray,
        snr_range: tuple[float, float],
        xy: np.ndarray | None = None,
        *,
        light: bool = False,
    ) -> None:
        """Add unit images `img` to the science frame at a log-uniform significance drawn from `snr_range`.

        `light` images are photons (their Poisson noise counts); the others are detector effects on pixel values.
        `xy` is where the significance is measured (default: the nominal centre).
        """
        k = len(idx)
        snr = _loguniform(self.rng, snr_range, k)
        xy = np.full((k, 2), float(_CENTRE)) if xy is None else xy
        if light:
            amp, snr = self.scale_to_snr(idx, snr, xy, sci_light=img)
            self.sci_light[idx] += amp[:, None, None] * img
        else:
            amp, snr = self.scale_to_snr(idx, snr, xy, sci_pix=img)
            self.sci_pix[idx] += amp[:, None, None] * img
        self.snr[idx] = snr

    def jittered_centre(self, k: int, r: float = 0.5) -> np.ndarray:
        """Sub-pixel candidate positions within r px (per axis) of the nominal centre, shape (k, 2)."""
        return _CENTRE + self.rng.uniform(-r, r, (k, 2))


# ----------------------------------------------------------------------------------------------------
# Real transients


def _tp_snr(b: _Batch, k: int) -> np.ndarray:
    """Injected significance: a power law for most transients, uniform near the detection limit for some."""
    cfg = b.cfg
    faint = b.rng.random(k) < cfg.tp_faint_fraction
    bulk = _power_law(b.rng, cfg.tp_snr, cfg.tp_snr_slope, k)
    return np.where(faint, _uniform(b.rng, cfg.tp_faint_snr, k), bulk)


def _tp_point(b: _Batch, idx: np.ndarray, host: str) -> None:
    """A new point source at the centre, in sci only; host: 'none', 'offset' (SN in a galaxy) or 'nuclear'."""
    k, rng, cfg = len(idx), b.rng, b.cfg
    xy = b.jittered_centre(k)
    snr = _tp_snr(b, k)
    unit = b.points_hat(np.ones(k), xy[:, 0], xy[:, 1], b.sig_s[idx])
    flux, snr = b.scale_to_snr(idx, snr, xy, sci_hat=unit)
    b.sci_hat[idx] += flux[:, None, None] * unit
    b.snr[idx], b.flux[idx] = snr, flux
    if host != "none":
        lo_hi = cfg.host_offset if host == "offset" else (0.0, 0.5)
        r, phi = _uniform(rng, lo_hi, k), rng.uniform(0, 2 * np.pi, k)
        b.host[idx] = True
        b.host_xy[idx] = xy + np.stack([r * np.cos(phi), r * np.sin(phi)], axis=1)


def _tp_transient(b: _Batch, idx: np.ndarray) -> None:
    _tp_point(b, idx, "none")


def _tp_host_transient(b: _Batch, idx: np.ndarray) -> None:
    _tp_point(b, idx, "offset")


def _tp_nuclear_transient(b: _Batch, idx: np.ndarray) -> None:
    _tp_point(b, idx, "nuclear")


def _tp_variable_star(b: _Batch, idx: np.ndarray) -> None:
    """A star in both images that brightened: positive PSF in diff on top of the star's own residuals."""
    k, rng, cfg = len(idx), b.rng, b.cfg
    xy = b.jittered_centre(k)
    base = _flux_for_snr(_loguniform(rng, cfg.variable_base_snr, k), b.sig_s[idx], b.sky[idx])
    star = b.pair_hat(idx, base, base, xy[:, 0], xy[:, 1])
    b.sci_hat[idx] += star[0]
    b.ref_hat[idx] += star[1]
    snr = _tp_snr(b, k)
    unit = b.points_hat(np.ones(k), xy[:, 0], xy[:, 1], b.sig_s[idx])
    flux, snr = b.scale_to_snr(idx, snr, xy, sci_hat=unit, under=star)
    b.sci_hat[idx] += flux[:, None, None] * unit
    b.snr[idx], b.flux[idx] = snr, flux


# ----------------------------------------------------------------------------------------------------
# Bogus detections


def _fp_dipole(b: _Batch, idx: np.ndarray) -> None:
    """A star misregistered between sci and ref: a positive and a negative lobe.

    Part of the dipoles come from a whole-image registration error (every star in the cutout shows one),
    the rest from a single star (proper motion, differential chromatic refraction).
    """
    k, rng, cfg = len(idx), b.rng, b.cfg
    xy = b.jittered_centre(k)
    d, phi = _uniform(rng, cfg.dipole_offset, k), rng.uniform(0, 2 * np.pi, k)
    delta = np.stack([d * np.cos(phi), d * np.sin(phi)], axis=1)
    whole = rng.random(k) < cfg.dipole_global_fraction
    b.ref_shift[idx[whole]] += delta[whole]
    ref_xy = xy + b.ref_shift[idx] + np.where(whole[:, None], 0.0, delta)
    ratio = 1.0 + rng.normal(0.0, cfg.dipole_flux_sd, k)
    s_unit = b.points_hat(np.ones(k), xy[:, 0], xy[:, 1], b.sig_s[idx])
    r_unit = b.points_hat(ratio, ref_xy[:, 0], ref_xy[:, 1], b.sig_r[idx])
    snr = _loguniform(rng, cfg.fp_snr, k)
    flux, snr = b.scale_to_snr(idx, snr, xy, sci_hat=s_unit, ref_hat=r_unit, radius=4.0)
    b.sci_hat[idx] += flux[:, None, None] * s_unit
    b.ref_hat[idx] += flux[:, None, None] * r_unit
    b.snr[idx] = snr


_CR_SHAPES = ("pixel", "cluster", "track", "blob")


def _cosmic_ray_shapes(b: _Batch, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Unit-peak cosmic-ray images (sci only, not PSF-convolved): single pixels, small clusters, short
    tracks, and compact blobs close to the PSF width (the hard ones)."""
    rng, cfg = b.rng, b.cfg
    img = np.zeros((k, _CANVAS, _CANVAS))
    kind = rng.choice(4, size=k, p=_cr_mix(cfg.cr_psf_like_fraction))
    xy = b.jittered_centre(k)
    cx, cy = np.rint(xy[:, 0]).astype(int), np.rint(xy[:, 1]).astype(int)
    # 0: single pixel; 1: cluster of a few adjacent pixels.
    for j in np.flatnonzero(kind <= 1):
        img[j, cy[j], cx[j]] = 1.0
        if kind[j] == 1:
            for _ in range(rng.integers(1, 4)):
                oy, ox = rng.integers(-1, 2, 2)
                img[j, cy[j] + oy, cx[j] + ox] = max(img[j, cy[j] + oy, cx[j] + ox], rng.uniform(0.3, 1.0))
    # 2: a short straight track, about a third of a pixel wide.
    sel = np.flatnonzero(kind == 2)
    if len(sel):
        length, ang = rng.uniform(*b.cfg.cr_track_length, len(sel)), rng.uniform(0, np.pi, len(sel))
        dx = b.xx - xy[sel, 0, None, None]
        dy = b.yy - xy[sel, 1, None, None]
        along = dx * np.cos(ang)[:, None, None] + dy * np.sin(ang)[:, None, None]
        across = -dx * np.sin(ang)[:, None, None] + dy * np.cos(ang)[:, None, None]
        half = length[:, None, None] / 2
        taper = np.clip(half + 0.5 - np.abs(along), 0.0, 1.0)
        img[sel] = np.exp(-0.5 * (across / 0.35) ** 2) * taper
    # 3: a compact blob with a width near the PSF core.
    sel = np.flatnonzero(kind == 3)
    if len(sel):
        s = _uniform(rng, cfg.cr_blob_sigma, len(sel))[:, None, None]
        r2 = (b.xx - xy[sel, 0, None, None]) ** 2 + (b.yy - xy[sel, 1, None, None]) ** 2
        img[sel] = np.exp(-0.5 * r2 / s**2)
    return img, kind


def _cr_mix(psf_like: float) -> np.ndarray:
    rest = (1.0 - psf_like) * np.array([0.1, 0.2, 0.7])
    return np.append(rest, psf_like)


def _fp_cosmic_ray(b: _Batch, idx: np.ndarray) -> None:
    k = len(idx)
    img, shape = _cosmic_ray_shapes(b, k)
    b.detail[idx] = np.asarray(_CR_SHAPES)[shape]
    b.add_artefact(idx, img, b.cfg.sharp_snr)


def _fp_hot_pixel(b: _Batch, idx: np.ndarray) -> None:
    """A hot pixel (sometimes a vertical pair) in the science frame; the dithered coadd averages it out."""
    k, rng = len(idx), b.rng
    img = np.zeros((k, _CANVAS, _CANVAS))
    ar = np.arange(k)
    img[ar, _CENTRE, _CENTRE] = 1.0
    pair = rng.random(k) < 0.3
    img[ar[pair], _CENTRE + 1, _CENTRE] = rng.uniform(0.3, 1.0, pair.sum())
    b.add_artefact(idx, img, b.cfg.sharp_snr)


def _fp_bad_column(b: _Batch, idx: np.ndarray) -> None:
    """A column with a charge offset through the candidate, over the whole cutout or from a trap onwards."""
    k, rng = len(idx), b.rng
    col = _CENTRE + rng.integers(-1, 2, k)
    start = np.where(rng.random(k) < 0.5, 0, _CENTRE - rng.integers(0, 4, k))
    up = rng.random(k) < 0.5  # partial columns run up or down from the trap
    rows, start = b.yy[None, :, :], start[:, None, None]
    in_rows = np.where(up[:, None, None], rows >= start, rows <= 2 * _CENTRE - start)
    img = (b.xx[None] == col[:, None, None]) & in_rows
    img = img * rng.uniform(0.8, 1.2, (k, _CANVAS, 1))  # the offset varies a little along the column
    b.add_artefact(idx, img, b.cfg.fp_snr)


def _fp_bright_star(b: _Batch, idx: np.ndarray) -> None:
    """A saturated star: clipped core and bleed trail in sci, imperfect PSF matching in the wings."""
    k, rng, cfg = len(idx), b.rng, b.cfg
    r, phi = rng.uniform(0.0, 2.5, k), rng.uniform(0, 2 * np.pi, k)
    xy = _CENTRE + np.stack([r * np.cos(phi), r * np.sin(phi)], axis=1)
    peak_ratio = _loguniform(rng, cfg.bright_peak_ratio, k)
    flux = peak_ratio * (cfg.saturation - b.sky[idx]) * 2 * np.pi * b.sig_s[idx] ** 2
    b.add_pair(idx, flux, xy[:, 0], xy[:, 1])
    # Charge above full well spills along the column, a few pixels per doubling of the overflow.
    b.bleed_len[idx] = np.minimum(6.0 * np.log2(peak_ratio), 40.0)
    b.bleed_xy[idx] = xy


def _fp_trail(b: _Batch, idx: np.ndarray) -> None:
    """A satellite or aircraft trail crossing the cutout near the candidate, sometimes glinting."""
    k, rng = len(idx), b.rng
    xy = b.jittered_centre(k, 1.5)
    ang = rng.uniform(0, np.pi, k)[:, None, None]
    dx, dy = b.xx - xy[:, 0, None, None], b.yy - xy[:, 1, None, None]
    across = -dx * np.sin(ang) + dy * np.cos(ang)
    along = dx * np.cos(ang) + dy * np.sin(ang)
    s = b.sig_s[idx][:, None, None]
    glint = 1.0 + rng.uniform(0, 0.6, (k, 1, 1)) * np.cos(
        2 * np.pi * along / rng.uniform(4, 20, (k, 1, 1)) + rng.uniform(0, 2 * np.pi, (k, 1, 1))
    )
    img = np.exp(-0.5 * (across / s) ** 2) / (np.sqrt(2 * np.pi) * s) * glint
    b.add_artefact(idx, img, b.cfg.fp_snr, xy, light=True)


def _fp_ghost(b: _Batch, idx: np.ndarray) -> None:
    """An out-of-focus reflection of a bright star: a diffuse donut whose rim passes the candidate."""
    k, rng = len(idx), b.rng
    radius = _uniform(rng, b.cfg.ghost_radius, k)[:, None, None]
    width = rng.uniform(1.2, 3.0, k)[:, None, None]
    fill = rng.uniform(0.0, 0.5, k)[:, None, None]
    phi = rng.uniform(0, 2 * np.pi, k)
    cx = _CENTRE + radius[:, 0, 0] * np.cos(phi)
    cy = _CENTRE + radius[:, 0, 0] * np.sin(phi)
    r = np.hypot(b.xx - cx[:, None, None], b.yy - cy[:, None, None])
    img = np.exp(-0.5 * ((r - radius) / width) ** 2) + fill * 0.5 * (1 - np.tanh((r - radius) / width))
    b.add_artefact(idx, img, b.cfg.fp_snr, light=True)


def _half_plane(b: _Batch, direction: np.ndarray) -> np.ndarray:
    """Signed distance from the nominal centre towards the off-chip side, per pixel, shape (k, n, n)."""
    proj = np.empty((len(direction), _CANVAS, _CANVAS))
    for d, grid, sign in ((0, b.xx, 1), (1, b.xx, -1), (2, b.yy, 1), (3, b.yy, -1)):
        proj[direction == d] = sign * (grid - _CENTRE)
    return proj


def _fp_edge(b: _Batch, idx: np.ndarray) -> None:
    """A candidate next to the chip edge: amplifier glow/bad flat along the edge, the rest off the chip."""
    k, rng = len(idx), b.rng
    direction = rng.integers(0, 4, k)
    dist = _uniform(rng, b.cfg.edge_distance, k)
    b.off_dir[idx], b.off_dist[idx] = direction, dist
    inside = dist[:, None, None] - _half_plane(b, direction)  # px from the edge, positive on the chip
    width = rng.uniform(1.0, 3.0, k)[:, None, None]
    img = np.where(inside >= 0, np.exp(-inside / width), 0.0)
    b.add_artefact(idx, img, b.cfg.fp_snr)


def _fp_noise_peak(b: _Batch, idx: np.ndarray) -> None:
    """Pure noise that fluctuated to a detection: the noise is conditioned on scorr at the centre."""
    k, cfg = len(idx), b.cfg
    b.cond_u[idx] = cfg.noise_peak_snr_min + b.rng.exponential(cfg.noise_peak_snr_scale, k)
    b.cond_xy[idx] = b.jittered_centre(k)
    b.snr[idx] = b.cond_u[idx]


_KIND_FUNCS = {
    "transient": _tp_transient,
    "host_transient": _tp_host_transient,
    "nuclear_transient": _tp_nuclear_transient,
    "variable_star": _tp_variable_star,
    "dipole": _fp_dipole,
    "cosmic_ray": _fp_cosmic_ray,
    "hot_pixel": _fp_hot_pixel,
    "bad_column": _fp_bad_column,
    "bright_star_residual": _fp_bright_star,
    "trail": _fp_trail,
    "ghost": _fp_ghost,
    "edge": _fp_edge,
    "noise_peak": _fp_noise_peak,
}


# ----------------------------------------------------------------------------------------------------
# Static scene, noise, subtraction, significance


def _add_hosts(b: _Batch) -> None:
    """Galaxies (exponential disk + compact bulge), convolved with each image's PSF: cancel in diff."""
    rng, cfg = b.rng, b.cfg
    extra = (~b.host) & (rng.random(b.m) < cfg.random_host_fraction)
    r, phi = rng.uniform(0, 12, b.m), rng.uniform(0, 2 * np.pi, b.m)
    b.host_xy[extra] = _CENTRE + np.stack([r * np.cos(phi), r * np.sin(phi)], axis=1)[extra]
    b.host |= extra
    idx = np.flatnonzero(b.host)
    if not len(idx):
        return
    k = len(idx)
    h = _uniform(rng, cfg.host_scale, k)[:, None, None]
    q = rng.uniform(0.35, 1.0, k)[:, None, None]
    th = rng.uniform(0, np.pi, k)[:, None, None]
    bulge = rng.uniform(0.0, 0.5, k)[:, None, None]
    flux = _flux_for_snr(_loguniform(rng, cfg.host_snr, k), b.sig_s[idx], b.sky[idx])[:, None, None]
    ku = b.fx * np.cos(th) + b.fy * np.sin(th)
    kv = -b.fx * np.sin(th) + b.fy * np.cos(th)
    disk = (1.0 + (2 * np.pi * h) ** 2 * (ku**2 + (q * kv) ** 2)) ** -1.5
    core = np.exp(-2 * np.pi**2 * (0.3 * h) ** 2 * b.f2)
    shape = flux * ((1 - bulge) * disk + bulge * core)
    x, y = b.host_xy[idx, 0], b.host_xy[idx, 1]
    dx, dy = b.ref_shift[idx, 0], b.ref_shift[idx, 1]
    b.sci_hat[idx] += shape * b.shift_tf(x, y) * b.gauss_tf(b.sig_s[idx])
    b.ref_hat[idx] += shape * b.shift_tf(x + dx, y + dy) * b.gauss_tf(b.sig_r[idx])


def _add_field_stars(b: _Batch) -> None:
    """Unrelated stars anywhere on the canvas, in both images."""
    rng, cfg = b.rng, b.cfg
    count = np.minimum(rng.poisson(cfg.field_star_density * _CANVAS**2, b.m), 12)
    j = max(int(count.max()), 1)
    present = np.arange(j)[None, :] < count[:, None]
    x, y = rng.uniform(0, _CANVAS, (b.m, j)), rng.uniform(0, _CANVAS, (b.m, j))
    snr = _loguniform(rng, cfg.field_star_snr, b.m * j).reshape(b.m, j)
    flux = np.where(present, _flux_for_snr(snr, b.sig_s[:, None], b.sky[:, None]), 0.0)
    b.add_pair(np.arange(b.m), flux, x, y)


def _add_offchip_regions(b: _Batch) -> None:
    """A few ordinary records also touch a chip edge, far from the candidate, so that an off-chip region
    alone does not give the class away."""
    rng = b.rng
    pick = (b.off_dir < 0) & (rng.random(b.m) < b.cfg.offchip_fraction)
    b.off_dir[pick] = rng.integers(0, 4, pick.sum())
    b.off_dist[pick] = rng.uniform(8.0, 28.0, pick.sum())


def _condition_noise(
    b: _Batch, idx: np.ndarray, n_s: np.ndarray, n_r: np.ndarray, truth: tuple[np.ndarray, ...]
) -> None:
    """Make the filtered difference at cond_xy equal cond_u sigma by the Gaussian conditioning update
    (Matheron's rule): the result is an exact draw of noise that produced a peak of that significance."""
    var_s, var_r, sci_true, ref_true = (a[idx] for a in truth)
    shift = b.shift_tf(b.cond_xy[idx, 0], b.cond_xy[idx, 1])
    w_s = np.fft.irfft2(b.h_sci[idx] * shift, s=(_CANVAS, _CANVAS))  # the filter K_s * P centred on the peak
    w_r = np.fft.irfft2(b.h_ref[idx] * shift, s=(_CANVAS, _CANVAS))
    axes = (1, 2)
    variance = (var_s * w_s**2).sum(axes) + (var_r * w_r**2).sum(axes)
    current = (w_s * (n_s[idx] + sci_true)).sum(axes) - (w_r * (n_r[idx] + ref_true)).sum(axes)
    lam = (b.cond_u[idx] * np.sqrt(variance) - current) / variance
    n_s[idx] += lam[:, None, None] * var_s * w_s
    n_r[idx] -= lam[:, None, None] * var_r * w_r


def _render(b: _Batch) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Noise, saturation, PSF matching, subtraction and significance for the whole chunk."""
    cfg, rng, m = b.cfg, b.rng, b.m
    shape = (_CANVAS, _CANVAS)
    sky, sky_r = b.sky[:, None, None], b.sky_r[:, None, None]
    sci_true = np.fft.irfft2(b.sci_hat, s=shape) + b.sci_light
    ref_true = np.fft.irfft2(b.ref_hat, s=shape)
    var_s = sky + np.clip(sci_true, 0.0, None)  # Poisson (gain 1) in the Gaussian limit
    var_r = b.ratio[:, None, None] ** 2 * (sky + np.clip(ref_true, 0.0, None))
    n_s = rng.standard_normal((m, *shape)) * np.sqrt(var_s)
    n_r = rng.standard_normal((m, *shape)) * np.sqrt(var_r)
    cond = np.flatnonzero(np.isfinite(b.cond_u))
    if len(cond):
        _condition_noise(b, cond, n_s, n_r, (var_s, var_r, sci_true + b.sci_pix, ref_true))

    sci = np.minimum(sky + sci_true + n_s + b.sci_pix, cfg.saturation)
    for j in np.flatnonzero(b.bleed_len > 0):  # bleed trails of saturated stars run along the column
        x0, y0 = np.rint(b.bleed_xy[j]).astype(int)
        half = int(b.bleed_len[j] / 2)
        sci[j, max(y0 - half, 0) : y0 + half + 1, x0] = cfg.saturation
    ref = sky_r + ref_true + n_r

    sci_hat, ref_hat = np.fft.rfft2(sci - sky), np.fft.rfft2(ref - sky_r)
    diff = np.fft.irfft2(sci_hat * b.k_sci - ref_hat * b.k_ref, s=shape)
    sci_f, ref_f = sci_hat * b.h_sci, ref_hat * b.h_ref  # each image's contribution to the filtered diff
    filtered = np.fft.irfft2(sci_f - ref_f, s=shape)
    # Variance of the filtered image: each (independent-pixel) variance map through the squared filter.
    var_hat = np.fft.rfft2(np.minimum(var_s, cfg.saturation)) * b.sq_sci + np.fft.rfft2(var_r) * b.sq_ref
    var_f = np.fft.irfft2(var_hat, s=shape)
    # ZOGY's astrometric term: a registration error of sigma_ast shifts each contribution by its gradient,
    # so steep, bright static sources get extra variance and leave no significant dipole.
    var_ast = np.zeros_like(var_f)
    for contribution in (sci_f, ref_f):
        for freq in (b.fx, b.fy):
            var_ast += np.fft.irfft2(2j * np.pi * freq * contribution, s=shape) ** 2
    var_ast *= cfg.astrometric_sigma**2
    scorr = filtered / np.sqrt(np.maximum(var_f + var_ast, 1e-6 * b.sky.min()))
    return sci, ref, diff, scorr


def _cut(b: _Batch, planes: tuple[np.ndarray, ...]) -> np.ndarray:
    """Mask off-chip pixels, centre on the scorr peak near the candidate, jitter, crop to (m, 64, 64, 4).

    Off-chip pixels are NaN in a random share of the records that have them, exactly 0 in the others.
    """
    cfg, rng, m = b.cfg, b.rng, b.m
    stack = np.stack(planes, axis=-1)  # (m, n, n, 4)
    off = np.zeros((m, _CANVAS, _CANVAS), bool)
    has_off = np.flatnonzero(b.off_dir >= 0)
    if len(has_off):
        off[has_off] = _half_plane(b, b.off_dir[has_off]) > b.off_dist[has_off, None, None]
    nan_fill = (b.off_dir >= 0) & (rng.random(m) < cfg.offchip_nan_prob)

    # Around a saturated star the detection is wherever its residual ring peaks: search further out.
    radius = np.full(m, cfg.recentre_radius)
    radius[b.kinds == "bright_star_residual"] = max(cfg.recentre_radius, _PAD - cfg.center_jitter)
    rad = int(radius.max())
    box = np.s_[_CENTRE - rad : _CENTRE + rad + 1, _CENTRE - rad : _CENTRE + rad + 1]
    oy, ox = np.mgrid[-rad : rad + 1, -rad : rad + 1]
    inside = (oy**2 + ox**2)[None] <= radius[:, None, None] ** 2
    win = np.where(inside & ~off[(slice(None), *box)], stack[(slice(None), *box, 3)], -np.inf)
    best = win.reshape(m, -1).argmax(axis=1)
    jit = rng.integers(-cfg.center_jitter, cfg.center_jitter + 1, (m, 2))
    y0 = _CENTRE + oy.ravel()[best] - SIZE // 2 + jit[:, 0]
    x0 = _CENTRE + ox.ravel()[best] - SIZE // 2 + jit[:, 1]

    rows = y0[:, None] + np.arange(SIZE)
    cols = x0[:, None] + np.arange(SIZE)
    sel = (np.arange(m)[:, None, None], rows[:, :, None], cols[:, None, :])
    out = stack[sel]
    out_off = off[sel]
    fill = np.where(nan_fill, np.nan, 0.0)[:, None, None, None]
    out = np.where(out_off[..., None], fill, out)
    return out.astype(np.float32)


def _central_peak(scorr: np.ndarray, half: int = 2) -> float:
    box = scorr[SIZE // 2 - half : SIZE // 2 + half + 1, SIZE // 2 - half : SIZE // 2 + half + 1]
    finite = box[np.isfinite(box)]
    return float(finite.max()) if finite.size else 0.0


def _simulate_chunk(kinds: list[str], cfg: SimConfig, rng: np.random.Generator) -> list[dict]:
    kinds_arr = np.asarray(kinds)
    b = _Batch(kinds_arr, cfg, rng)
    for kind in (*TP_KINDS, *FP_KINDS):  # fixed order: the stream of random numbers is reproducible
        idx = np.flatnonzero(kinds_arr == kind)
        if len(idx):
            _KIND_FUNCS[kind](b, idx)
    _add_hosts(b)
    _add_field_stars(b)
    _add_offchip_regions(b)
    cutouts = _cut(b, _render(b))
    records = []
    for j, kind in enumerate(kinds):
        sample = cutouts[j].copy()  # its own buffer, not a view of the whole chunk
        peak = _central_peak(sample[..., 3])
        snr = float(b.snr[j]) if np.isfinite(b.snr[j]) else peak
        records.append(
            {
                "sample": sample,
                "kind": str(kind),
                "detail": str(b.detail[j]),
                "snr": snr,
                "scorr_peak": peak,
                "flux": float(b.flux[j]),
                "fwhm_sci": float(b.sig_s[j] * FWHM_PER_SIGMA),
                "fwhm_ref": float(b.sig_r[j] * FWHM_PER_SIGMA),
                "sky": float(b.sky[j]),
                "host": int(b.host[j]),
                "offchip": int(b.off_dir[j] >= 0),
            }
        )
    return records


def simulate_records(
    n: int = 4676, seed: int = 0, tp_fraction: float = 2 / 3, config: SimConfig | None = None
) -> dict[str, list[dict]]:
    """Simulate an ExRomana-format data set: {"TP": [rec, ...], "FP": [rec, ...]}.

    round(n * tp_fraction) records are real transients (TP), the rest bogus (FP); kinds are apportioned by
    the config's weights (every kind with a positive weight appears once n allows) and shuffled. Each record
    holds "sample" (float32 (64, 64, 4), planes in PLANES order) and only plain Python str/float/int besides:

    - "kind": one of TP_KINDS or FP_KINDS; "detail": a sub-type ("track", "blob", ... for cosmic rays) or "";
    - "snr": the expected scorr of the injected signal at the candidate (noise-free, with the signal's own
      Poisson and astrometric variance); for saturated stars the measured value; "scorr_peak": the measured
      maximum of scorr in the central 5x5 pixels;
    - "flux": the transient's flux in counts (0.0 for bogus); "fwhm_sci", "fwhm_ref" (px); "sky" (counts/px);
      "host": 1 if a galaxy is in the field; "offchip": 1 if part of the field is beyond a chip edge.

    The same (n, seed, tp_fraction, config) always gives bit-identical arrays.
    """
    cfg = config or SimConfig()
    if n < 0:
        raise ValueError(f"n must be non-negative, got {n}")
    if not 0.0 <= tp_fraction <= 1.0:
        raise ValueError(f"tp_fraction must be in [0, 1], got {tp_fraction}")
    n_tp = round(n * tp_fraction)
    kinds = [
        kind
        for kind_set, weights, count in (
            (TP_KINDS, cfg.tp_kind_weights, n_tp),
            (FP_KINDS, cfg.fp_kind_weights, n - n_tp),
        )
        for kind, c in zip(kind_set, _apportion(count, weights), strict=True)
        for _ in range(c)
    ]
    seq = np.random.SeedSequence(seed)
    plan_seq, chunk_seq = seq.spawn(2)
    order = np.random.default_rng(plan_seq).permutation(n)
    kinds = [kinds[i] for i in order]
    out: dict[str, list[dict]] = {"TP": [], "FP": []}
    n_chunks = -(-n // _CHUNK)
    for c, child in zip(range(n_chunks), chunk_seq.spawn(n_chunks), strict=True):
        part = kinds[c * _CHUNK : (c + 1) * _CHUNK]
        for rec in _simulate_chunk(part, cfg, np.random.default_rng(child)):
            out["TP" if rec["kind"] in TP_KINDS else "FP"].append(rec)
    return out
