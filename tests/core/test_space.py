"""The search space as data: the paper's space, validation of names and values, NAME=VALUE parsing."""

from __future__ import annotations

import pytest

from hpo_astro.core.hyperparameters import DEFAULT_PARAMS, PAPER_SPACE
from hpo_astro.core.space import SearchSpace, parse_assignments
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


def test_one_rule_says_when_two_values_are_the_same() -> None:
    """Study files, baselines and tables compare values by `value_key`: names in any case, numbers to 12 significant
    digits (so a value survives a JSON round trip); the command line's strings name numbers; a bool is no number."""
    from hpo_astro.core.hyperparameters import same_value, value_key

    assert value_key(1e-3) == value_key(0.001) == value_key(0.0010000000000000002)
    assert value_key(64) == value_key(64.0) and value_key("BatchNorm") == value_key("batchnorm")
    assert value_key(1e-3) != value_key(1.0001e-3)
    assert same_value(0.001, "1e-3") and same_value("ReLU", "relu") and same_value(64, 64.0)
    assert not same_value(1, True) and not same_value(0.001, "fast") and not same_value("ReLU", 1)
    assert value_key(10**400) == 10**400  # too large for a float: kept as it is
