"""Optuna's own sampler test cases (`optuna.testing.pytest_samplers`) run against AblationSampler.

Optuna's cases are written for samplers that can draw any value of any distribution, forever. An AblationSampler
draws only its plan's values, refuses the values a distribution does not contain, and runs out after its slots. So
each case gets a plan (`_plan`) that suits it the way a user would write one: its names and values inside the
case's distributions, and at least as many slots as the case runs trials to completion. Cases no plan can suit are
skipped with the reason in `INAPPLICABLE`. The cases also call `sample_independent` / `sample_relative` on trials
created directly in the storage and left running for good: those trials take slots without `before_trial`, and the
plans here use `lost_after=0` so that a slot held by such an abandoned trial is evaluated again instead of the
plan running out (the sampler warns each time; the warning is silenced here).

Every case class runs in both modes (greedy or not):
- `BasicSamplerTestCase`, `RelativeSamplerTestCase`. The sampler is not a relative one (its relative search space
  is empty, so Optuna never asks `sample_relative` for values), but it answers `sample_relative` for a given search
  space with the plan's values, which is what the relative cases check.
- `MultiObjectiveSamplerTestCase` applies without greedy (the plan does not depend on objective values), and
  `SingleOnlySamplerTestCase` with greedy, which refuses multi-objective studies: each is skipped in the other mode.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import optuna
import pytest
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler
from optuna.testing.pytest_samplers import (
    BasicSamplerTestCase,
    MultiObjectiveSamplerTestCase,
    RelativeSamplerTestCase,
    SingleOnlySamplerTestCase,
)

from hpo_astro.samplers import AblationSampler

optuna.logging.set_verbosity(optuna.logging.ERROR)
pytestmark = pytest.mark.filterwarnings("ignore:AblationSampler.*presumed lost:UserWarning")

# (test name with its parameters, or its name alone, greedy or not) -> why it does not apply
INAPPLICABLE_IN_MODE = {
    ("test_multi_objective_sample_independent", True): (
        "greedy mode refuses multi-objective studies (the best value of a sweep is undefined): "
        "SingleOnlySamplerTestCase checks that instead"
    ),
    ("test_raise_error_for_samplers_during_multi_objectives", False): (
        "without greedy the sampler supports multi-objective studies: MultiObjectiveSamplerTestCase checks that"
    ),
}
# test name with its parameters -> why no plan suits it, in either mode
INAPPLICABLE = {
    "test_dynamic_range_objective[20-30]": (
        "the objective suggests x in [0, 10], then in [20, 30]: no planned value lies in both, and the sampler "
        "refuses a value outside the distribution asked for"
    ),
}


def _inside(distribution: BaseDistribution, n: int = 3) -> list[Any]:
    """`n` values that `distribution` contains, spread from its low end to its high end."""
    if isinstance(distribution, CategoricalDistribution):
        return list(distribution.choices)
    assert isinstance(distribution, FloatDistribution | IntDistribution)
    low, high = distribution.low, distribution.high
    if isinstance(distribution, IntDistribution) or distribution.step is not None:
        step = distribution.step or 1
        points = round((high - low) / step)
        # On the grid, and not past `high` by a rounding error.
        values = [min(low + i * step, high) for i in np.linspace(0, points, n).round().astype(int).tolist()]
        return [int(v) for v in values] if isinstance(distribution, IntDistribution) else values
    spread = np.geomspace(low, high, n) if distribution.log else np.linspace(low, high, n)
    return [min(max(float(v), low), high) for v in spread]


def _repeat(values: list[Any], n: int) -> list[Any]:
    """`values` repeated to `n` of them: a plan that evaluates each value more than once."""
    return [values[i % len(values)] for i in range(n)]


def _plan(name: str, params: dict[str, Any]) -> dict[str, list[Any]]:
    """The plan for Optuna's case `name` with parametrisation `params`."""
    if name in ("test_float", "test_int", "test_multi_objective_sample_independent"):
        return {"x": _inside(params["distribution"])}
    if name == "test_categorical":
        return {"x": list(params["choices"])}
    if name == "test_conditional_sample_independent":
        return {"category": ["x", "y"], "x": ["a", "b"], "y": ["a", "b"]}
    if name == "test_nan_objective_value":  # 10 trials to completion, x in [0.1, 0.2]
        return {"x": _inside(FloatDistribution(0.1, 0.2), 10)}
    if name == "test_partial_fixed_sampling":
        return {"x": [-1.0, 1.0], "y": [-1, 1], "z": [0.0]}
    if name == "test_sample_single_distribution":  # never asked: Optuna does not sample one-value distributions
        return {"a": [1], "b": [1], "c": [1], "d": [1.0], "e": [1.0], "f": [1.0]}
    if name in ("test_single_parameter_objective", "test_combination_of_different_distributions_objective"):
        # 1 and 2 fit each of the six suggest methods of the case; 10 trials to completion at most.
        return {"x": _repeat([1, 2], 10), "y": [1, 2]}
    if name == "test_conditional_parameter_objective":  # 10 trials to completion
        return {"x": [True, False], "y": [0.0, 0.25, 0.5, 0.75], "z": [0.0, 0.25, 0.5, 0.75]}
    if name == "test_dynamic_range_objective":  # 20 trials to completion, in [0, 10] and in the second range
        high = min(10, params["second_high"])
        return {"x": _repeat(list(range(high + 1)), 10), "y": _repeat(list(range(high + 1)), 10)}
    if name in ("test_sample_relative_numerical", "test_sample_relative_mixed"):
        y = params.get("y_distribution", CategoricalDistribution([-1, -10, -100]))
        return {"x": _inside(params["x_distribution"]), "y": _inside(y)}
    if name == "test_sample_relative_categorical":
        return {"x": [1, 10, 100], "y": [-1, -10, -100]}
    if name == "test_trial_relative_params":  # 10 trials to completion, in two threads for n_jobs=2
        return {"x": _inside(FloatDistribution(-10, 10), 5), "y": _inside(FloatDistribution(-10, 10), 5)}
    if name == "test_raise_error_for_samplers_during_multi_objectives":
        return {"x": [0.5]}
    raise AssertionError(f"no plan for Optuna's case {name}: a new case in optuna.testing.pytest_samplers?")


def _factory(request: pytest.FixtureRequest, greedy: bool) -> Callable[[], BaseSampler]:
    node = request.node
    reason = INAPPLICABLE.get(node.name) or INAPPLICABLE_IN_MODE.get((node.originalname, greedy))
    if reason is not None:
        pytest.skip(reason)
    params = node.callspec.params if hasattr(node, "callspec") else {}
    plan = _plan(node.originalname, params)
    return lambda: AblationSampler(plan, greedy=greedy, seed=0, wait_timeout=5, poll_interval=0.001, lost_after=0)


class TestAblationSampler(
    BasicSamplerTestCase, RelativeSamplerTestCase, MultiObjectiveSamplerTestCase, SingleOnlySamplerTestCase
):
    @pytest.fixture
    def sampler(self, request: pytest.FixtureRequest) -> Callable[[], BaseSampler]:
        return _factory(request, greedy=False)


class TestGreedyAblationSampler(
    BasicSamplerTestCase, RelativeSamplerTestCase, MultiObjectiveSamplerTestCase, SingleOnlySamplerTestCase
):
    @pytest.fixture
    def sampler(self, request: pytest.FixtureRequest) -> Callable[[], BaseSampler]:
        return _factory(request, greedy=True)
