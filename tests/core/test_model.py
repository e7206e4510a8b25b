"""The paper's CNN: every architecture in the space builds and trains a step; save/load round-trips."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
import torch
from torch import nn

from hpo_astro.core.hyperparameters import ARCHITECTURE_PARAMS, DEFAULT_PARAMS, PAPER_SPACE
from hpo_astro.core.model import build_model, count_parameters, load_model, parameter_count, save_model


def test_every_architecture_builds_and_runs_forward_and_backward() -> None:
    """Every combination of the shape-setting hyperparameters (conv_layers x kernel x fc_layers x fc_width x
    normalization: 720) builds, on 1 and 4 input channels, with the parameter count `parameter_count` predicts; and
    every (conv_layers, kernel, fc_layers, normalization) combination (180), each with one fc_width in turn, runs a
    forward and backward pass. The layers' shapes depend on fc_width only through the Linear layers' sizes, which
    the parameter count checks for all 720; running all 720 forward and backward took 40 s in the suite.

    activation and dropout_rate change no shape and hold no parameters, so they cycle through their values instead
    of multiplying the grid by 20: with 4 activations against 3 normalizations (coprime), every activation still
    meets every normalization, fc_layers and conv_layers value.
    """
    shape_params = ["conv_layers", "conv_kernel_size", "fc_layers", "normalization", "fc_width"]
    free_params = [p for p in ARCHITECTURE_PARAMS if p not in shape_params]
    assert sorted(free_params) == ["activation", "dropout_rate"]
    combos = list(itertools.product(*(PAPER_SPACE[p] for p in shape_params)))
    assert len(combos) == 720
    activations, dropouts = itertools.cycle(PAPER_SPACE["activation"]), itertools.cycle(PAPER_SPACE["dropout_rate"])
    widths = len(PAPER_SPACE["fc_width"])
    inputs = {c: torch.randn(2, c, 64, 64) for c in (1, 4)}
    seen: set[tuple] = set()
    ran: set[tuple] = set()
    for i, values in enumerate(combos):
        params = dict(zip(shape_params, values, strict=True), activation=next(activations))
        params["dropout_rate"] = next(dropouts)
        channels = 1 + 3 * (i % 2)
        runs = i % widths == (i // widths) % widths  # one fc_width of each (conv_layers, kernel, fc_layers, norm)
        with torch.device("cpu" if runs else "meta"):  # shapes only: no storage, no initialisation
            model = build_model(params, in_channels=channels)
        assert count_parameters(model) == parameter_count(params, in_channels=channels), params
        if runs:
            out = model(inputs[channels])
            assert out.shape == (2, 1), params
            out.sum().backward()
            assert all(p.grad is not None for p in model.parameters()), params
            ran.add(values[:4])
            seen |= {(n, params[n], params["activation"]) for n in ("normalization", "fc_layers", "conv_layers")}
    assert len(ran) == 180
    expected = {
        (name, value, act)
        for name in ("normalization", "fc_layers", "conv_layers")
        for value in PAPER_SPACE[name]
        for act in PAPER_SPACE["activation"]
    }
    assert seen == expected


def test_structure_follows_the_paper() -> None:
    params = {
        **DEFAULT_PARAMS,
        "conv_layers": 3,
        "conv_kernel_size": 5,
        "fc_layers": 3,
        "fc_width": 32,
        "normalization": "LayerNorm",
        "activation": "GELU",
        "dropout_rate": 0.2,
    }
    model = build_model(params)
    convs = [m for m in model if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64]  # 16, doubling per block
    assert all(c.kernel_size == (5, 5) for c in convs)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert [lin.out_features for lin in linears] == [32, 32, 1]  # fc_layers counts the final 1-unit layer
    assert linears[0].in_features == 64 * 8 * 8  # three 2x2 pools: 64 -> 8
    assert sum(isinstance(m, nn.LayerNorm) for m in model) == 2
    assert sum(isinstance(m, nn.GELU) for m in model) == 3 + 2
    assert [m.p for m in model if isinstance(m, nn.Dropout)] == [0.2, 0.2]
    single = build_model({**params, "fc_layers": 1})
    assert sum(isinstance(m, nn.Linear) for m in single) == 1


def test_save_and_load(tmp_path: Path) -> None:
    model = build_model(DEFAULT_PARAMS, in_channels=2)
    save_model(tmp_path, model, {"params": DEFAULT_PARAMS, "in_channels": 2, "note": "x"})
    loaded, manifest = load_model(tmp_path)
    assert manifest["note"] == "x" and count_parameters(loaded) == count_parameters(model)
    x = torch.randn(3, 2, 64, 64)
    model.eval()
    assert torch.equal(model(x), loaded(x))
    with pytest.raises(ValueError, match="in_channels"):
        save_model(tmp_path, model, {"params": DEFAULT_PARAMS})
