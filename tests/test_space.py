"""The search space as data: the paper's space, validation of names and values, NAME=VALUE parsing."""

from __future__ import annotations

import pytest

from hpo_astro.core.space import DEFAULT_PARAMS, PAPER_SPACE, SearchSpace, parse_assignments
from hpo_astro.errors import UserError


def test_paper_space_size() -> None:
    space = SearchSpace.paper()
    assert space.n_combinations() == 11_059_200  # "over 10 million" in the paper
    assert sum(len(v) for v in space.values()) == 47  # the ablation budget
    assert list(space) == list(PAPER_SPACE)
    assert space.complete({}) == DEFAULT_PARAMS


def test_parse_assignments_matches_allowed_values() -> None:
    params = parse_assignments(["lr=0.001", "normalization=layernorm", "conv_layers=3", "dropout_rate=0"])
    assert params == {"lr": 1e-3, "normalization": "LayerNorm", "conv_layers": 3, "dropout_rate": 0.0}
    assert isinstance(params["conv_layers"], int)
    assert parse_assignments(["lr=1e-4"])["lr"] == 1e-4


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("lr", "NAME=VALUE"),
        ("=3", "NAME=VALUE"),
        ("depth=3", "unknown hyperparameter"),
        ("conv_layers=5", "outside the search space"),
        ("conv_layers=two", "outside the search space"),
        ("activation=relu6", "outside the search space"),
    ],
)
def test_parse_assignments_errors(item: str, message: str) -> None:
    with pytest.raises(UserError, match=message):
        parse_assignments([item])


def test_custom_space_from_a_config() -> None:
    space = SearchSpace.from_dict({"lr": [3e-4, 1e-2], "activation": ["gelu", "Tanh"], "conv_layers": [3]})
    assert space["activation"] == ("GELU", "Tanh") and space.n_combinations() == 4
    # defaults outside a narrowed space fall back to its first value
    assert space.complete({}) == {"lr": 3e-4, "activation": "GELU", "conv_layers": 3}
    assert space.complete({"lr": "1e-2", "activation": "tanh"}) == {"lr": 1e-2, "activation": "Tanh", "conv_layers": 3}
    for bad, message in (
        ({"lr": []}, "empty list"),
        ({"depth": [1]}, "unknown hyperparameter"),
        ({"activation": ["swish"]}, "unknown value"),
        ({"lr": "0.1"}, "must be a list"),
        ({"lr": [True]}, "must be a number"),
    ):
        with pytest.raises(UserError, match=message):
            SearchSpace.from_dict(bad)


@pytest.mark.parametrize(("name", "value"), [("normalization", 5), ("activation", 1.5)])
def test_a_number_for_a_named_choice_is_one_line(name: str, value: object) -> None:
    with pytest.raises(UserError, match=f"value {value!r} of {name!r} must be one of"):
        SearchSpace.from_dict({name: [value]})
