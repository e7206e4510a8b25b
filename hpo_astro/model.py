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
from hpo_astro.io import write_error

if TYPE_CHECKING:
    from hpo_astro.data.prepare import DataSplits, PrepConfig

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "ReLU": nn.ReLU,
    "LeakyReLU": nn.LeakyReLU,
    "GELU": nn.GELU,
    "Tanh": nn.Tanh,
}
FIRST_CHANNELS = 16  # channels of the first conv block; doubled per block


def _normalization(name: str, width: int) -> nn.Module:
    if name == "BatchNorm":
        return nn.BatchNorm1d(width)
    if name == "LayerNorm":
        return nn.LayerNorm(width)
    if name == "None":
        return nn.Identity()
    raise ValueError(f"unknown normalization {name!r}")


def build_model(params: Mapping[str, Any], in_channels: int = 1, image_size: int = 64) -> nn.Sequential:
    """`conv_layers` x [Conv2d(k, same) -> act -> MaxPool2d(2)], flatten, `fc_layers - 1` x
    [Linear(fc_width) -> norm -> act -> Dropout], then Linear(1): one logit, positive = real."""
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
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), directory / WEIGHTS_FILE)
        (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, default=str) + "\n")
    except (OSError, RuntimeError) as exc:  # not a directory, not writable, disk full (torch's zip writer: Runtime)
        raise write_error(directory, exc, f"the model to {directory}") from None
    return directory


def load_model(directory: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild a model saved by `save_model`. Weights load with `weights_only=True`: no code runs."""
    directory = Path(directory)
    manifest = json.loads((directory / MANIFEST_FILE).read_text())
    model = build_model(manifest["params"], in_channels=int(manifest["in_channels"]))
    with warnings.catch_warnings():  # torch warns about foreign pickle protocols before refusing them: one line
        warnings.simplefilter("ignore")
        state = torch.load(directory / WEIGHTS_FILE, map_location=device, weights_only=True)
    model.load_state_dict(state)
    return model.to(device).eval(), manifest
