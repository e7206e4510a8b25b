"""The paper's CNN (convolution blocks, then fully connected layers, one real/bogus logit), built for any point of
the search space, and its saved form: weights plus a JSON manifest."""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from hpo_astro import __version__
from hpo_astro.errors import UserError
from hpo_astro.io import read_regular_file, write_error

if TYPE_CHECKING:
    from hpo_astro.data.prepare import DataSplits, PrepConfig

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "ReLU": nn.ReLU,
    "LeakyReLU": nn.LeakyReLU,
    "GELU": nn.GELU,
    "Tanh": nn.Tanh,
}
FIRST_CHANNELS = 16  # channels of the first conv block; doubled per block
MAX_IN_CHANNELS = 4  # an ExRomana cutout has four planes
# A bound on the model's size, checked before anything is allocated: the paper's largest configuration has 4.3
# million parameters; 50 million (200 MB of float32 weights, about 800 MB with AdamW's state and gradients) leaves
# room for wider searches, while a manifest or stored configuration asking for gigabytes is refused with one line.
MAX_PARAMETERS = 50_000_000


def _normalization(name: str, width: int) -> nn.Module:
    if name == "BatchNorm":
        return nn.BatchNorm1d(width)
    if name == "LayerNorm":
        return nn.LayerNorm(width)
    if name == "None":
        return nn.Identity()
    raise ValueError(f"unknown normalization {name!r}")


def architecture(params: Mapping[str, Any], in_channels: Any = 1) -> dict[str, Any]:
    """The architecture hyperparameters of `params`, checked for what they mean (types, ranges, known names: see
    `hpo_astro.core.space`) and for the model's size (at most MAX_PARAMETERS), before any memory is allocated. Whatever
    the configuration came from (a study file, a model manifest, a store written by someone else), a bad one is a
    one-line UserError."""
    from hpo_astro.core.hyperparameters import ARCHITECTURE_PARAMS, coerce_value

    if not isinstance(params, Mapping):
        raise UserError(f"the model's hyperparameters must be an object, got {type(params).__name__}")
    missing = [name for name in ARCHITECTURE_PARAMS if name not in params]
    if missing:
        raise UserError(f"the model's hyperparameters lack {', '.join(missing)}")
    checked = {name: coerce_value(name, params[name]) for name in ARCHITECTURE_PARAMS}
    if isinstance(in_channels, bool) or not isinstance(in_channels, int) or not 1 <= in_channels <= MAX_IN_CHANNELS:
        raise UserError(f"in_channels must be a whole number from 1 to {MAX_IN_CHANNELS}, got {in_channels!r}")
    size = parameter_count(checked, in_channels)
    if size > MAX_PARAMETERS:
        raise UserError(
            f"the model would have {size:,} parameters, more than the {MAX_PARAMETERS:,} allowed "
            f"(conv_layers {checked['conv_layers']}, conv_kernel_size {checked['conv_kernel_size']}, "
            f"fc_layers {checked['fc_layers']}, fc_width {checked['fc_width']})"
        )
    return checked


def parameter_count(params: Mapping[str, Any], in_channels: int = 1, image_size: int = 64) -> int:
    """The number of trainable parameters `build_model` would create, computed without building it."""
    kernel, width = int(params["conv_kernel_size"]), int(params["fc_width"])
    total, channels, size = 0, in_channels, image_size
    for block in range(int(params["conv_layers"])):
        out = FIRST_CHANNELS * 2**block
        total += channels * out * kernel * kernel + out
        channels, size = out, size // 2
    features = channels * size * size
    norm = 2 * width if str(params["normalization"]) in ("BatchNorm", "LayerNorm") else 0
    for _ in range(int(params["fc_layers"]) - 1):
        total += features * width + width + norm
        features = width
    return total + features + 1


def build_model(params: Mapping[str, Any], in_channels: int = 1, image_size: int = 64) -> nn.Sequential:
    """`conv_layers` x [Conv2d(k, same) -> act -> MaxPool2d(2)], flatten, `fc_layers - 1` x
    [Linear(fc_width) -> norm -> act -> Dropout], then Linear(1): one logit, positive = real.
    The configuration is checked first (`architecture`): a bad or oversized one is a UserError."""
    params = {**params, **architecture(params, in_channels)}
    activation = ACTIVATIONS[str(params["activation"])]
    kernel = int(params["conv_kernel_size"])
    layers: list[nn.Module] = []
    channels, size = in_channels, image_size
    for block in range(int(params["conv_layers"])):
        out = FIRST_CHANNELS * 2**block
        layers += [nn.Conv2d(channels, out, kernel, padding="same"), activation(), nn.MaxPool2d(2)]
        channels, size = out, size // 2
    layers.append(nn.Flatten())
    features = channels * size * size
    width = int(params["fc_width"])
    for _ in range(int(params["fc_layers"]) - 1):
        layers += [
            nn.Linear(features, width),
            _normalization(str(params["normalization"]), width),
            activation(),
            nn.Dropout(float(params["dropout_rate"])),
        ]
        features = width
    layers.append(nn.Linear(features, 1))
    return nn.Sequential(*layers)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


WEIGHTS_FILE = "model.pt"
MANIFEST_FILE = "model.json"
MANIFEST_FORMAT = "hpo-astro-model"
MANIFEST_VERSION = 1


def model_manifest(
    params: Mapping[str, Any],
    splits: DataSplits,
    prep: PrepConfig,
    threshold: float = 0.5,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The manifest (model.json) of a model with these hyperparameters, trained on `splits` as `prep` prepared
    them: what rebuilds the model, the preprocessing and decision threshold `predict` applies to new cutouts, the
    BCE pos_weight and the data. `extra` adds the caller's own fields (`train`: its summary; `export`: the study,
    trial and metrics); it cannot replace these. `train` and `export` both write this one layout."""
    manifest: dict[str, Any] = {
        "format": MANIFEST_FORMAT,
        "format_version": MANIFEST_VERSION,
        "hpo_astro_version": __version__,
        "params": dict(params),
        "in_channels": splits.in_channels,
        "preprocessing": {**prep.to_manifest(), "threshold": float(threshold)},
        "pos_weight": splits.pos_weight,
        "data": {
            "source": splits.source,
            "fingerprint": splits.fingerprint,
            "file_sha256": splits.info.get("file_sha256"),
        },
    }
    clash = sorted(set(extra or {}) & set(manifest))
    if clash:
        raise ValueError(f"extra manifest fields {clash} would replace the model's own")
    return {**manifest, **(extra or {})}


def save_model(directory: str | Path, model: nn.Module, manifest: Mapping[str, Any]) -> Path:
    """Write the weights (`model.pt`, a plain state dict) and a JSON manifest that rebuilds the model.

    The manifest must hold `params` and `in_channels`; the rest (preprocessing, metrics) is free-form.
    """
    for key in ("params", "in_channels"):
        if key not in manifest:
            raise ValueError(f"manifest needs {key!r}")
    import hashlib
    import io

    from hpo_astro.io import atomic_write

    directory = Path(directory)
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    weights = buffer.getvalue()
    manifest = {**manifest, "weights_sha256": hashlib.sha256(weights).hexdigest()}
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # not a directory, not writable
        raise write_error(directory, exc, f"the model to {directory}") from None
    # Each file replaced atomically, the manifest last: other files in the directory are left alone, and a crash in
    # between leaves new weights beside an old manifest, which `load_model` refuses by the digest.
    with atomic_write(directory / WEIGHTS_FILE) as fh:
        fh.write(weights)
    with atomic_write(directory / MANIFEST_FILE) as fh:
        fh.write((json.dumps(manifest, indent=2, default=str) + "\n").encode())
    return directory


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model saved by `save_model`. The manifest is checked before anything is built (its architecture and
    size, see `architecture`), the weights file before it is unpacked (a regular file whose unpacked size fits the
    model the manifest describes, and the SHA-256 the manifest records), and the weights load with
    `weights_only=True`: no code runs. Problems are one-line UserErrors."""
    directory = Path(directory)
    manifest = read_manifest(directory / MANIFEST_FILE)
    params = architecture(manifest["params"], manifest["in_channels"])
    weights = directory / WEIGHTS_FILE
    check_weights_file(weights, parameter_count(params, manifest["in_channels"]), manifest.get("weights_sha256"))
    model = build_model(manifest["params"], in_channels=manifest["in_channels"])
    with warnings.catch_warnings():  # torch warns about foreign pickle protocols before refusing them: one line
        warnings.simplefilter("ignore")
        state = torch.load(weights, map_location=device, weights_only=True)
    if not isinstance(state, Mapping):
        raise UserError(f"{weights} does not hold a model's weights (a {type(state).__name__})")
    model.load_state_dict(state)
    return model.to(device).eval(), manifest


MAX_MANIFEST_BYTES = 1 << 20  # a manifest is a few kB


def read_manifest(path: Path) -> dict[str, Any]:
    """A model manifest, read with a size bound, as a JSON object with `params` and an integral `in_channels`."""
    raw = read_regular_file(path, MAX_MANIFEST_BYTES, "model manifest")
    if len(raw) > MAX_MANIFEST_BYTES:
        raise UserError(f"{path} is larger than a model manifest can be ({MAX_MANIFEST_BYTES:,} bytes)")
    text = raw.decode("utf-8", errors="replace")
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        raise UserError(f"{path} is not a valid model manifest: {exc}") from None
    if not isinstance(manifest, dict) or "params" not in manifest or "in_channels" not in manifest:
        raise UserError(f"{path} is not a valid model manifest: it needs an object with params and in_channels")
    return manifest


def check_weights_file(path: Path, n_params: int, sha256: object) -> None:
    """Before torch unpacks `path`: a regular file whose archive entries add up to no more than the weights of
    `n_params` parameters (and BatchNorm statistics) with room for torch's bookkeeping, so a small file that
    decompresses to gigabytes is refused unread; and, when the manifest records one, the right SHA-256 (an export
    replaces model.pt before model.json: a crash between the two leaves a pair this check tells apart)."""
    import hashlib
    import stat
    import zipfile

    try:
        info = path.stat()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{path} is not a regular file")
    allowed = 8 * n_params + (1 << 20)
    if info.st_size > allowed:
        raise UserError(f"{path} is {info.st_size:,} bytes, too large for a model of {n_params:,} parameters")
    try:
        with zipfile.ZipFile(path) as archive:
            unpacked = sum(entry.file_size for entry in archive.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UserError(f"cannot load the weights in {path}: not a torch weights file ({exc})") from None
    if unpacked > allowed:
        raise UserError(f"{path} unpacks to {unpacked:,} bytes, too large for a model of {n_params:,} parameters")
    if isinstance(sha256, str):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != sha256:
            raise UserError(f"{path} is not the weights its manifest names (SHA-256 differs): export again")
