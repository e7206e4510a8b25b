"""From an ExRomana file to in-memory tensors: channel choice, ZScale, stratified split, fingerprint, cache.

Everything here is deterministic, so every worker and every resumed run sees identical splits: the split
depends only on the labels and `split_seed`, and the fingerprint hashes the file and these settings.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from hpo_astro.data import exromana
from hpo_astro.errors import UserError
from hpo_astro.io import atomic_write

PREPROCESS_VERSION = 1  # bump when the preprocessing changes, so cached tensors and fingerprints change too
DEFAULT_CHANNELS = ("scorr",)  # the paper's single grayscale channel
DEFAULT_SIM_N = 4676  # 70/15/15 of this gives the paper's 3,273 training cutouts
DEFAULT_SIM_SEED = 0
DEFAULT_FRACTIONS = (0.70, 0.15, 0.15)  # train/val/test
DEFAULT_ZSCALE_CONTRAST = 0.25  # astropy's ZScale default
NONFINITE_HANDLING = "excluded from the ZScale limits, then set to 0"  # what `zscale` does, in the model manifest
# What the library tells a user while it works (the command line prints its INFO lines on stderr).
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PrepConfig:
    """How a file becomes tensors. Part of the data fingerprint, and recorded in a saved model's manifest."""

    channels: tuple[str, ...] = DEFAULT_CHANNELS
    plane_names: tuple[str, ...] = exromana.PLANE_NAMES
    split_seed: int = 0
    fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
    zscale_contrast: float = DEFAULT_ZSCALE_CONTRAST

    def __post_init__(self) -> None:
        if len(self.plane_names) != exromana.CUTOUT_SHAPE[-1] or len(set(self.plane_names)) != len(self.plane_names):
            raise UserError(f"plane names must be {exromana.CUTOUT_SHAPE[-1]} distinct names, got {self.plane_names}")
        if not self.channels:
            raise UserError("at least one channel is needed")
        for ch in self.channels:
            if ch not in self.plane_names:
                raise UserError(f"unknown channel {ch!r}; known: {', '.join(self.plane_names)}")
        if len(set(self.channels)) != len(self.channels):
            raise UserError(f"channel listed twice in {','.join(self.channels)}")
        if len(self.fractions) != 3 or any(f <= 0 for f in self.fractions) or abs(sum(self.fractions) - 1) > 1e-6:
            raise UserError(f"split fractions must be three positive numbers summing to 1, got {self.fractions}")
        if not (math.isfinite(self.zscale_contrast) and self.zscale_contrast > 0):
            raise UserError(f"the ZScale contrast must be a positive number, got {self.zscale_contrast}")

    @property
    def plane_indices(self) -> list[int]:
        return [self.plane_names.index(ch) for ch in self.channels]

    def to_manifest(self) -> dict[str, Any]:
        """The `preprocessing` settings of a model manifest (model.json), JSON-ready: what `predict` needs to
        prepare new cutouts exactly as these were."""
        return {
            "channels": list(self.channels),
            "plane_names": list(self.plane_names),
            "scaling": "zscale",
            "zscale_contrast": self.zscale_contrast,
            "nonfinite": NONFINITE_HANDLING,
            "split_seed": self.split_seed,
            "split_fractions": list(self.fractions),
        }

    @classmethod
    def from_manifest(cls, info: Mapping[str, Any]) -> PrepConfig:
        """The settings a manifest's `preprocessing` records; what an older manifest leaves out takes the value it
        was made with (the defaults: e.g. a manifest without `zscale_contrast` was scaled with 0.25)."""
        try:
            fractions: Any = tuple(float(f) for f in info.get("split_fractions") or DEFAULT_FRACTIONS)
            return cls(
                channels=tuple(info.get("channels") or DEFAULT_CHANNELS),
                plane_names=tuple(info.get("plane_names") or exromana.PLANE_NAMES),
                split_seed=int(info.get("split_seed", 0)),
                fractions=fractions,  # its length is checked with the rest
                zscale_contrast=float(info.get("zscale_contrast", DEFAULT_ZSCALE_CONTRAST)),
            )
        except (TypeError, ValueError) as exc:  # a value of the wrong kind (e.g. a seed that is not a number)
            raise UserError(f"invalid preprocessing settings: {exc}") from None


def parse_channels(text: str | None) -> tuple[str, ...]:
    """'sci,ref,diff,scorr' -> ('sci', 'ref', 'diff', 'scorr'); validated later against the plane names."""
    if text is None:
        return DEFAULT_CHANNELS
    channels = tuple(c.strip() for c in text.split(",") if c.strip())
    if not channels:
        raise UserError(f"--channels needs at least one name, got {text!r}")
    return channels


@dataclass
class DataSplits:
    """Train/val/test tensors held whole in memory (N, C, 64, 64) float32 with labels (N,) float32."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    channels: tuple[str, ...]
    fingerprint: str
    source: str = ""
    n_nonfinite_pixels: int = 0
    info: dict = field(default_factory=dict)

    @property
    def in_channels(self) -> int:
        return self.x_train.shape[1]

    @property
    def pos_weight(self) -> float:
        """n_negative / n_positive on the training split: balances BCE for the 2:1 TP:FP imbalance."""
        n_pos = float(self.y_train.sum())
        return (len(self.y_train) - n_pos) / max(n_pos, 1.0)

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")

    def to(self, device: torch.device | str) -> DataSplits:
        moved = {k: getattr(self, k).to(device) for k in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test")}
        return DataSplits(
            **moved,
            channels=self.channels,
            fingerprint=self.fingerprint,
            source=self.source,
            n_nonfinite_pixels=self.n_nonfinite_pixels,
            info=self.info,
        )


def zscale(cutouts: np.ndarray, contrast: float = DEFAULT_ZSCALE_CONTRAST) -> tuple[np.ndarray, int]:
    """Scale each 2-D cutout to [0, 1] with astropy's ZScale limits.

    Non-finite pixels are handled explicitly (the paper's uint8 cast turned them into garbage): limits are
    computed on the finite pixels only and the non-finite ones are set to 0, the bottom of the scale.
    A flat cutout maps to 0. Returns the scaled array (float32, same shape) and the number of non-finite
    pixels replaced. Raises UserError for a cutout with no finite pixel.
    """
    from astropy.visualization import ZScaleInterval

    interval = ZScaleInterval(contrast=contrast)
    flat = cutouts.reshape(-1, *cutouts.shape[-2:])
    n_planes = cutouts.shape[1] if cutouts.ndim == 4 else 1
    out = np.zeros(flat.shape, dtype=np.float32)
    finite = np.isfinite(flat)
    n_bad = int(flat.size - finite.sum())
    for i, (img, ok) in enumerate(zip(flat, finite, strict=True)):
        if not ok.any():
            record, plane = divmod(i, n_planes)
            raise UserError(
                f"record {record} (channel {plane}) has no finite pixel (all NaN/inf); remove it from the file"
            )
        values = img[ok]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # astropy warns on nearly flat images; handled below
            vmin, vmax = interval.get_limits(values)
        if not np.isfinite(vmin) or not np.isfinite(vmax) or vmax <= vmin:
            continue  # flat cutout: all zeros
        with np.errstate(over="ignore", invalid="ignore"):  # inf pixels and extreme values: clipped, then masked
            scaled = np.clip((img - vmin) / (vmax - vmin), 0.0, 1.0)
        out[i] = np.where(ok, scaled, 0.0)
    return out.reshape(cutouts.shape), n_bad


def preprocess(samples: np.ndarray, config: PrepConfig) -> tuple[np.ndarray, int]:
    """Cutouts as stored, (N, 64, 64, 4) planes last, to what the model sees: the configured planes, planes first
    (N, C, 64, 64), each ZScaled with the configured contrast. Also returns the number of non-finite pixels set to 0.
    Training, export and predict all prepare cutouts through this one function."""
    planes = np.moveaxis(samples[..., config.plane_indices], -1, 1)
    return zscale(planes, config.zscale_contrast)


def stratified_split(
    labels: np.ndarray, seed: int, fractions: tuple[float, float, float] = DEFAULT_FRACTIONS
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of train/val/test, each class split in the given fractions (sorted, deterministic)."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[], [], []]
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        n_train = round(fractions[0] * len(idx))
        n_val = round(fractions[1] * len(idx))
        for part, chunk in zip(parts, np.split(idx, [n_train, n_train + n_val]), strict=True):
            part.append(chunk)
    train, val, test = (np.sort(np.concatenate(p)) for p in parts)
    return train, val, test


def check_splits(
    labels: np.ndarray, parts: tuple[np.ndarray, ...], fractions: tuple[float, float, float], source: str
) -> None:
    """Every split needs both classes (the metrics and early stopping need them): refuse a file too small for that,
    before any study store is opened, naming how many records of each class would do."""
    for name, idx in zip(("train", "val", "test"), parts, strict=True):
        present = set(np.unique(labels[idx]).tolist())
        if present != {0, 1}:
            # the smallest class size that stratified_split cuts into three non-empty parts
            need = next(
                n
                for n in range(3, 100_000)
                if min(round(fractions[0] * n), round(fractions[1] * n)) >= 1
                and round(fractions[0] * n) + round(fractions[1] * n) < n
            )
            counts = {cls: int((labels == cls).sum()) for cls in (1, 0)}
            raise UserError(
                f"{source}: too few records to split: the {name} split gets no "
                f"{'TP' if 1 not in present else 'FP'} record (file: {counts[1]} TP, {counts[0]} FP); at least "
                f"{need} records of each class are needed"
            )


def fingerprint(file_sha256: str, config: PrepConfig) -> str:
    """A short hash of the file's content and the preprocessing settings."""
    prep = asdict(config)
    if config.zscale_contrast == DEFAULT_ZSCALE_CONTRAST:
        # The default contrast is left out: it is what every fingerprint hashed before the contrast was a setting,
        # so those fingerprints (recorded in studies, naming cached tensors) stay valid.
        del prep["zscale_contrast"]
    payload = json.dumps({"file": file_sha256, "prep": prep, "version": PREPROCESS_VERSION}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def cache_dir() -> Path:
    """Where simulated data and preprocessed tensors are cached: $HPO_ASTRO_CACHE or ~/.cache/hpo-astro."""
    if env := os.environ.get("HPO_ASTRO_CACHE"):
        return Path(env)
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "hpo-astro"


def default_data_file(n: int = DEFAULT_SIM_N, seed: int = DEFAULT_SIM_SEED) -> Path:
    """Where the simulated data set used when no --data is given is cached (it may not exist yet)."""
    from hpo_astro.data import simulate

    # The name carries the simulator version and a hash of its default settings: a changed simulator never
    # serves a stale cached file.
    settings = hashlib.sha256(f"{simulate.SIMULATOR_VERSION}:{simulate.SimConfig()!r}".encode()).hexdigest()[:8]
    # The project's own non-pickle .npz format: the cache is read back on every run, so it carries no pickle.
    return cache_dir() / f"exromana-sim-n{n}-seed{seed}-{settings}.npz"


def default_data_path(n: int = DEFAULT_SIM_N, seed: int = DEFAULT_SIM_SEED) -> Path:
    """The simulated data set used when no --data is given: generated once, then reused."""
    from hpo_astro.data import simulate

    path = default_data_file(n, seed)
    if not path.exists():
        # Silence otherwise, for as long as simulating takes, on the very first command a new user runs.
        log.info("simulating the default data set, once (then cached as %s)", path)
        exromana.save(simulate.simulate_records(n=n, seed=seed), path)
    return path


def load_splits(path: str | os.PathLike | None = None, config: PrepConfig | None = None) -> DataSplits:
    """Load an ExRomana file (default: the cached simulated set), preprocess it and split it.

    Preprocessed tensors are cached under `cache_dir()` by fingerprint, so the second call is fast.
    """
    config = config or PrepConfig()
    path = Path(path) if path is not None else default_data_path()
    if not path.is_file():
        raise UserError(f"data file not found: {path}")
    digest = exromana.sha256_file(path)
    fp = fingerprint(digest, config)
    cached = cache_dir() / "prepared" / f"{fp}.npz"
    x = labels = None
    n_bad = 0
    if cached.exists():
        try:
            with np.load(cached, allow_pickle=False) as npz:
                x, labels, n_bad = npz["x"], npz["labels"], int(npz["n_nonfinite"])
        except (OSError, ValueError, KeyError):
            x = None  # unreadable cache entry: rebuild it below
    if x is None:
        data = exromana.load(path)
        x, n_bad = preprocess(data.samples, config)
        labels = data.labels
        try:
            with atomic_write(cached) as fh:
                np.savez(fh, x=x, labels=labels, n_nonfinite=np.int64(n_bad))
        except UserError:
            pass  # the cache only saves time: an unwritable cache directory must not stop the run
    train, val, test = stratified_split(labels, config.split_seed, config.fractions)
    check_splits(labels, (train, val, test), config.fractions, str(path))
    xt = torch.from_numpy(np.ascontiguousarray(x))
    yt = torch.from_numpy(labels.astype(np.float32))
    return DataSplits(
        x_train=xt[train],
        y_train=yt[train],
        x_val=xt[val],
        y_val=yt[val],
        x_test=xt[test],
        y_test=yt[test],
        channels=config.channels,
        fingerprint=fp,
        source=str(path),
        n_nonfinite_pixels=n_bad,
        info={"file_sha256": digest, "n": len(labels), "split_seed": config.split_seed},
    )
