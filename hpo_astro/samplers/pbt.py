"""PbtSampler: population-based training's exploit-and-explore step as an Optuna sampler.

Optuna and NumPy only, like the AblationSampler (whose small rules it shares: `hpo_astro.samplers.ablation_plan`).
The training side (each trial continues a checkpoint for `ready` epochs) is the objective's:
`hpo_astro.study.pbt`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from hpo_astro.samplers.ablation_plan import HOLDING, fail_stale_trials, plan_value, same, trial_numbers

SLOT_KEY = "pbt:slot"  # the trial's place in the population: (generation, member) = divmod(slot, population)
PLAN_KEY = "pbt:plan"  # [population, quantile, mutable names, seed]: written once the slot is taken
CONFIG_KEY = "pbt:config"  # the values of the search space's hyperparameters this trial trains with
# {"generation", "member", "parent", "exploited_from", "founder"}: the trial whose checkpoint it continues (None in
# generation 0), that trial again when it was exploited from another member (else None), and the generation-0
# member its lineage started from. Written last: the trial's decision is whole.
MEMBER_KEY = "pbt:member"
DEFERRED_KEY = "pbt:deferred"  # why the trial gets no slot: it evaluates nothing (the objective ends it as surplus)
MUTABLE = ("lr", "weight_decay", "dropout_rate")
FACTORS = (0.8, 1.2)  # explore: a range's value times one of these (Ray Tune's PBT), clipped to the range


class PbtSampler(BaseSampler):
    """Population-based training (Jaderberg et al. 2017) over the trials of one study.

    A trial is one member's segment of training in one generation: trial slots 0, 1, 2, ... are
    (generation, member) = divmod(slot, population). Generation 0 draws each member's configuration at random
    (seeded by `seed` and the slot, so one worker reproduces it). A trial of generation g > 0 waits until every
    member of generation g-1 has completed, ranks them by their objective at the end of their segment (the last
    reported intermediate value, else the trial's value; ties to the lower member), and then
    * a member in the bottom `quantile` *exploits* a member of the top quantile, drawn with a generator seeded by
      `seed` and the slot: it continues that member's checkpoint with its configuration, whose `mutable`
      hyperparameters are *explored*: a range's value times 0.8 or 1.2 clipped to the range (and to its step), a
      list's value moved to a neighbouring value (numbers in numeric order);
    * every other member continues its own checkpoint with its own configuration.
    The other hyperparameters (architecture, ...) never change along a lineage. `MEMBER_KEY` records the decision
    (parent trial, exploited_from, founder); the objective continues the parent's checkpoint.

    **State in the store**, as Optuna's GridSampler and the AblationSampler: trial system attributes. A new trial
    waits until every lower-numbered running trial has taken its slot (`PLAN_KEY` written), then takes the lowest
    slot no complete, running or waiting trial holds; a re-queued retry keeps its slot and configuration (copied
    attributes), a failed trial releases its slot. So a resumed study, or several processes sharing it, run the same
    population without a slot taken twice or skipped.

    **Waiting.** A trial of generation g waits for generation g-1 while its missing members run elsewhere, at most
    `wait_timeout` seconds; it gives up at once when a missing member is queued (a retry) or free (its trial
    failed), so that this process runs that one first. A trial that gives up, or whose slot is beyond `n_slots`,
    gets `DEFERRED_KEY`: it must evaluate nothing (its suggestions raise `optuna.TrialPruned`). `on_wait(study)` is
    called at every look at the store while waiting (e.g. to fail the trials of dead processes), after Optuna's
    check of stale heartbeats.

    Args:
        search_space: name -> distribution of every hyperparameter the objective suggests.
        population: members per generation.
        quantile: the share of the population that exploits (bottom) and is exploited (top), 0 to 0.5; the
            quantile's count is rounded up (Ray Tune's rule); 0: members never exploit.
        mutable: the hyperparameters explore perturbs (those absent from `search_space` are ignored).
        seed: seeds generation 0 and the exploit draws.
        n_slots: the study's budget of trials; a slot beyond it is deferred (None: no limit).
    """

    def __init__(
        self,
        search_space: Mapping[str, BaseDistribution],
        population: int,
        quantile: float = 0.25,
        mutable: Sequence[str] = MUTABLE,
        seed: int | None = None,
        n_slots: int | None = None,
        wait_timeout: float = 6 * 3600.0,
        choose_timeout: float = 60.0,
        poll_interval: float = 0.2,
        on_wait: Callable[[optuna.Study], None] | None = None,
    ) -> None:
        if population < 2:
            raise ValueError(f"population must be at least 2, got {population}")
        if not 0 <= quantile <= 0.5:
            raise ValueError(f"quantile must be between 0 and 0.5, got {quantile}")
        self._space = dict(search_space)
        self.population, self.quantile, self.seed, self.n_slots = population, quantile, seed or 0, n_slots
        self._mutable = [name for name in self._space if name in mutable]
        self._plan_id = [population, quantile, self._mutable, self.seed]
        self._wait_timeout, self._choose_timeout, self._poll = wait_timeout, choose_timeout, poll_interval
        self._on_wait = on_wait
        self._given_up: set[int] = set()  # trials this object stopped waiting for while they chose a slot

    @property
    def n_exploit(self) -> int:
        """Members in each of the top and bottom quantiles."""
        return min(self.population // 2, math.ceil(self.population * self.quantile - 1e-9))

    # --- BaseSampler -------------------------------------------------------------------------------------------

    def infer_relative_search_space(self, study: optuna.Study, trial: FrozenTrial) -> dict[str, BaseDistribution]:
        return {}

    def sample_relative(
        self, study: optuna.Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        return {}

    def before_trial(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if SLOT_KEY in trial.system_attrs or DEFERRED_KEY in trial.system_attrs:
            return  # a re-queued retry keeps its slot and configuration
        if len(study.directions) > 1:
            return  # refused at the first suggestion
        storage = study._storage
        slot = self._claim(study, trial)
        decision = self._decide(study, trial, slot)
        if isinstance(decision, str):
            storage.set_trial_system_attr(trial._trial_id, DEFERRED_KEY, decision)
            return
        config, member = decision
        storage.set_trial_system_attr(trial._trial_id, CONFIG_KEY, config)
        storage.set_trial_system_attr(trial._trial_id, MEMBER_KEY, member)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        if len(study.directions) > 1:
            raise ValueError("PbtSampler needs a single-objective study: members are ranked by one value")
        attrs = study._storage.get_trial_system_attrs(trial._trial_id)
        if SLOT_KEY not in attrs and DEFERRED_KEY not in attrs:  # before_trial never ran for this trial
            self.before_trial(study, study._storage.get_trial(trial._trial_id))
            attrs = study._storage.get_trial_system_attrs(trial._trial_id)
        if DEFERRED_KEY in attrs:
            raise optuna.TrialPruned(f"PbtSampler: no slot for this trial: {attrs[DEFERRED_KEY]}")
        config = attrs[CONFIG_KEY]
        if param_name not in config:
            raise ValueError(f"PbtSampler: {param_name!r} is not in its search space ({', '.join(self._space)})")
        internal = param_distribution.to_internal_repr(config[param_name])
        if not param_distribution._contains(internal):  # no public membership test; Optuna's samplers use it too
            raise ValueError(f"PbtSampler planned {param_name}={config[param_name]!r}, outside {param_distribution}")
        return param_distribution.to_external_repr(internal)

    # --- slots ---------------------------------------------------------------------------------------------------

    def _mine(self, t: FrozenTrial) -> bool:
        return same(t.system_attrs.get(PLAN_KEY), self._plan_id)

    def _pause(self, study: optuna.Study) -> None:
        time.sleep(self._poll)
        fail_stale_trials(study)
        if self._on_wait is not None:
            self._on_wait(study)

    def _claim(self, study: optuna.Study, trial: FrozenTrial) -> int:
        """Wait until the lower-numbered running trials have taken their slots; take the lowest free one."""
        storage, started = study._storage, time.monotonic()
        while True:
            trials = storage.get_all_trials(study._study_id, deepcopy=False)
            choosing = [
                t
                for t in trials
                if t.number < trial.number
                and t.state == TrialState.RUNNING
                and PLAN_KEY not in t.system_attrs
                and DEFERRED_KEY not in t.system_attrs
                and t._trial_id not in self._given_up
            ]
            if not choosing or time.monotonic() - started >= self._choose_timeout:
                break
            self._pause(study)
        self._given_up.update(t._trial_id for t in choosing)  # presumed dead before taking a slot
        held = {
            t.system_attrs[SLOT_KEY]
            for t in trials
            if t.number != trial.number and t.state in HOLDING and SLOT_KEY in t.system_attrs and self._mine(t)
        }
        slot = next(s for s in range(len(held) + 1) if s not in held)
        storage.set_trial_system_attr(trial._trial_id, SLOT_KEY, slot)
        storage.set_trial_system_attr(trial._trial_id, PLAN_KEY, self._plan_id)  # last: the slot is taken
        return slot

    def _decide(self, study: optuna.Study, trial: FrozenTrial, slot: int) -> tuple[dict, dict] | str:
        """(configuration, member record) of `slot`, or why the trial gets none."""
        generation, member = divmod(slot, self.population)
        if self.n_slots is not None and slot >= self.n_slots:
            return f"slot {slot} is beyond the budget of {self.n_slots} trials"
        if generation == 0:
            record = {"generation": 0, "member": member, "parent": None, "exploited_from": None, "founder": member}
            return self._draw(study, trial, slot), record
        started = time.monotonic()
        while True:
            trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
            previous, missing = self._generation(trials, generation - 1)
            if not missing:
                return self._next(study, slot, previous)
            held = [t for t in trials if t.state in HOLDING and self._mine(t) and t.system_attrs[SLOT_KEY] in missing]
            running = {t.system_attrs[SLOT_KEY] for t in held if t.state == TrialState.RUNNING}
            if set(missing) - running:  # queued or free: this process can run it, so it must not wait for it
                return (
                    f"generation {generation - 1} waits for slots {sorted(set(missing) - running)}, which are queued "
                    "or free: they run first"
                )
            if time.monotonic() - started >= self._wait_timeout:
                return (
                    f"waited {self._wait_timeout:g} s for generation {generation - 1} (running trials "
                    f"{trial_numbers(held)})"
                )
            self._pause(study)

    def _generation(self, trials: Sequence[FrozenTrial], generation: int) -> tuple[dict[int, FrozenTrial], list[int]]:
        """The complete trial of each member of `generation`, and the slots that have none yet."""
        slots = range(generation * self.population, (generation + 1) * self.population)
        done = {
            t.system_attrs[SLOT_KEY]: t
            for t in trials
            if t.state == TrialState.COMPLETE and self._mine(t) and t.system_attrs.get(SLOT_KEY) in slots
        }
        return {s % self.population: done[s] for s in slots if s in done}, [s for s in slots if s not in done]

    def _draw(self, study: optuna.Study, trial: FrozenTrial, slot: int) -> dict[str, Any]:
        """Generation 0: every hyperparameter at random, from the study's seed and the slot."""
        seed = int(np.random.SeedSequence([self.seed, slot]).generate_state(1)[0])
        random = optuna.samplers.RandomSampler(seed=seed)
        return {
            name: plan_value(name, random.sample_independent(study, trial, name, dist))
            for name, dist in self._space.items()
        }

    def _next(self, study: optuna.Study, slot: int, previous: dict[int, FrozenTrial]) -> tuple[dict, dict]:
        generation, member = divmod(slot, self.population)
        sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
        ranked = sorted(previous, key=lambda m: (sign * segment_score(previous[m]), m))  # best first
        k = self.n_exploit
        top, bottom = ranked[:k], ranked[len(ranked) - k :] if k else []
        rng = np.random.default_rng([self.seed, slot])
        exploits = member in bottom
        parent = previous[top[int(rng.integers(k))]] if exploits else previous[member]
        config = dict(parent.system_attrs[CONFIG_KEY])
        if exploits:
            config = {**config, **perturbed(config, self._space, self._mutable, rng)}
        record = {
            "generation": generation,
            "member": member,
            "parent": parent.number,
            "exploited_from": parent.number if exploits else None,
            "founder": parent.system_attrs[MEMBER_KEY]["founder"],
        }
        return config, record


def segment_score(trial: FrozenTrial) -> float:
    """What a member is ranked by: the objective at the last epoch of its segment (the weights it hands on), else
    the trial's value."""
    if trial.intermediate_values:
        return float(trial.intermediate_values[max(trial.intermediate_values)])
    return float(trial.value) if trial.value is not None else math.nan


def perturbed(
    config: Mapping[str, Any], space: Mapping[str, BaseDistribution], names: Sequence[str], rng: np.random.Generator
) -> dict[str, Any]:
    """Explore: each of `names` moved (one draw from `rng` per name, in order) as `PbtSampler` describes."""
    out: dict[str, Any] = {}
    for name in names:
        dist, value = space[name], config[name]
        up = bool(rng.integers(2))
        if isinstance(dist, CategoricalDistribution):
            choices = list(dist.choices)
            numeric = all(isinstance(c, int | float) and not isinstance(c, bool) for c in choices)
            order = sorted(range(len(choices)), key=lambda i: choices[i]) if numeric else list(range(len(choices)))
            at = order.index(next(i for i, c in enumerate(choices) if same(c, value)))
            out[name] = choices[order[min(len(order) - 1, max(0, at + (1 if up else -1)))]]
        elif isinstance(dist, FloatDistribution | IntDistribution):
            moved = min(dist.high, max(dist.low, value * FACTORS[up]))
            if dist.step is not None:
                moved = dist.low + round((moved - dist.low) / dist.step) * dist.step
                moved = min(dist.high, max(dist.low, moved))
            out[name] = round(moved) if isinstance(dist, IntDistribution) else float(f"{moved:.12g}")
        else:
            out[name] = value
    return out
