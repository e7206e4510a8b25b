"""What each hyperparameter is: its name, the paper's values, the default configuration, the numbers it can mean,
and how values from any source (study files, the command line, manifests, records, tables) are read and compared.
`hpo_astro.core.space` builds search spaces from them."""

from __future__ import annotations

import math
from typing import Any

from hpo_astro.errors import UserError

Value = int | float | str

# The reference study's space: 12 categorical hyperparameters, 11,059,200 combinations.
PAPER_SPACE: dict[str, tuple[Value, ...]] = {
    "conv_layers": (1, 2, 3, 4),
    "conv_kernel_size": (3, 5, 7),
    "fc_layers": (1, 2, 3, 4, 5),  # counts the final 1-unit layer
    "fc_width": (32, 64, 128, 256),
    "normalization": ("None", "BatchNorm", "LayerNorm"),
    "activation": ("ReLU", "LeakyReLU", "GELU", "Tanh"),
    "dropout_rate": (0.0, 0.05, 0.1, 0.2, 0.3),
    "lr": (1e-1, 1e-2, 1e-3, 1e-4),
    "weight_decay": (1e-2, 1e-3, 1e-4, 1e-5),
    "batch_size": (4, 16, 64, 256),
    "t_max": (10, 25, 50, 100),  # cosine-annealing horizon, also the epoch cap
    "early_stop_patience": (3, 5, 10),
}

# A plain, "default-looking" configuration: what `hpo-astro train` uses for parameters the user does not
# set, and a sensible ablation baseline. It is deliberately not tuned.
DEFAULT_PARAMS: dict[str, Value] = {
    "conv_layers": 2,
    "conv_kernel_size": 3,
    "fc_layers": 2,
    "fc_width": 64,
    "normalization": "None",
    "activation": "ReLU",
    "dropout_rate": 0.1,
    "lr": 1e-3,
    "weight_decay": 1e-4,
    "batch_size": 64,
    "t_max": 25,
    "early_stop_patience": 5,
}

# What each value means, checked before any store is opened: a value the model or the optimiser cannot take (a
# negative learning rate, a dropout of 1.5, seven halvings of a 64-pixel cutout) is refused with one line instead of
# failing every trial. Integers are (min, max) inclusive; floats are (min, max, whether max itself is allowed).
INT_RANGES: dict[str, tuple[int, int]] = {
    "conv_layers": (1, 6),  # each block halves the 64x64 cutout: 6 blocks leave 1x1
    "conv_kernel_size": (1, 64),
    "fc_layers": (1, 20),
    "fc_width": (1, 8192),
    "batch_size": (1, 65536),
    "t_max": (1, 100_000),
    "early_stop_patience": (1, 100_000),
}
FLOAT_RANGES: dict[str, tuple[float, float, bool]] = {
    "dropout_rate": (0.0, 1.0, False),  # a probability below 1: dropout 1 zeroes every activation
    "lr": (0.0, 10.0, True),  # must be > 0, see _check_value
    "weight_decay": (0.0, 10.0, True),
}

ARCHITECTURE_PARAMS = (
    "conv_layers",
    "conv_kernel_size",
    "fc_layers",
    "fc_width",
    "normalization",
    "activation",
    "dropout_rate",
)


def coerce_value(name: str, value: Any) -> Value:
    """One hyperparameter value as the space means it (a known name, a number in its range), from any source: a
    study file, a model manifest, a store's record. Anything else is a one-line UserError."""
    return _coerce(name, value)


def _coerce(name: str, value: Any) -> Value:
    """Normalise one value from a config file: numbers stay numbers, 'none'-like strings become 'None'."""
    if isinstance(value, bool):
        raise UserError(f"value {value!r} of {name!r} must be a number or a string")
    if isinstance(value, int | float):
        if isinstance(PAPER_SPACE[name][0], str):  # a named choice (normalization, activation) given as a number
            raise UserError(f"value {value!r} of {name!r} must be one of {', '.join(map(str, PAPER_SPACE[name]))}")
        return _check_value(name, value)
    if isinstance(value, str):
        for known in PAPER_SPACE[name]:
            if isinstance(known, str) and known.lower() == value.lower():
                return known
        if isinstance(PAPER_SPACE[name][0], str):
            raise UserError(f"unknown value {value!r} for {name!r}; known: {', '.join(map(str, PAPER_SPACE[name]))}")
        try:
            number = _number(value)
        except ValueError:
            raise UserError(f"value {value!r} of {name!r} is not a number") from None
        return _check_value(name, number)
    raise UserError(f"value {value!r} of {name!r} must be a number or a string")


def _check_value(name: str, value: int | float) -> int | float:
    """Refuse a number `name` cannot mean (see INT_RANGES and FLOAT_RANGES); integral floats become ints."""
    if not math.isfinite(value):
        raise UserError(f"{name} = {value} is not a finite number")
    if name in INT_RANGES:
        low, high = INT_RANGES[name]
        if value != int(value):
            raise UserError(f"{name} = {value} must be a whole number")
        if not low <= value <= high:
            raise UserError(f"{name} = {value} is out of range: it must be between {low} and {high}")
        return int(value)
    low_f, high_f, high_included = FLOAT_RANGES[name]
    positive = name == "lr"
    too_low = value <= low_f if positive else value < low_f
    too_high = value > high_f if high_included else value >= high_f
    if too_low or too_high:
        lower = f"> {low_f:g}" if positive else f">= {low_f:g}"
        upper = f"<= {high_f:g}" if high_included else f"< {high_f:g}"
        raise UserError(f"{name} = {value} is out of range: it must be {lower} and {upper}")
    return float(value)


def _number(text: str) -> int | float:
    number = float(text)
    return int(number) if number.is_integer() and "." not in text and "e" not in text.lower() else number


def value_key(value: Any) -> Any:
    """A hyperparameter value as every comparison in the package sees it (study files, baselines, table rows): names
    in any case, numbers to 12 significant digits, so 1e-3, 0.001 and 0.0010000000000000002 are one value, 64 and
    64.0 too, and a value survives a JSON round trip. Hashable: sets of values use it."""
    if isinstance(value, str):
        return value.lower()
    if isinstance(value, int | float) and not isinstance(value, bool):
        try:
            return float(f"{float(value):.12g}")
        except OverflowError:
            return value
    return value


def same_value(candidate: Value, value: Any) -> bool:
    """Whether `value` (a number, or a string from the command line) names the space's `candidate` (`value_key`)."""
    if not isinstance(candidate, str) and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            return False
    if isinstance(value, bool) or isinstance(candidate, str) != isinstance(value, str):
        return False
    return value_key(candidate) == value_key(value)
