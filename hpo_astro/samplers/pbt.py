"""PbtSampler: population-based training's exploit-and-explore step as an Optuna sampler.

Optuna and NumPy only, like the AblationSampler (whose small rules it shares: `hpo_astro.samplers.ablation_plan`).
The training side (each trial continues a checkpoint for `ready` epochs) is the objective's:
`hpo_astro.study.pbt`.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.samplers import BaseSampler
from optuna.trial import FrozenTrial, TrialState

from hpo_astro.samplers.ablation_plan import HOLDING, plan_value, same, trial_numbers
from hpo_astro.samplers.slots import OnWait, SlotWait, still_running

SLOT_KEY = "pbt:slot"  # the trial's place in the population: (generation, member) = divmod(slot, population)
# [population, quantile, mutable names, seed, ready, the search space's fingerprint]: written once the slot is taken
PLAN_KEY = "pbt:plan"
CONFIG_KEY = "pbt:config"  # the values of the search space's hyperparameters this trial trains with
# {"generation", "member", "parent", "exploited_from", "founder"}: the trial whose checkpoint it continues (None in
# generation 0), that trial again when it was exploited from another member (else None), and the generation-0
# member its lineage started from. Written last: the trial's decision is whole.
MEMBER_KEY = "pbt:member"
DEFERRED_KEY = "pbt:deferred"  # why the trial gets no slot: it evaluates nothing (the objective ends it as surplus)
# Written by the objective: FAILED_KEY on a trial whose training failed (its slot is decided again, differently),
# INVALID_KEY (the reason) on a trial whose segment did not train to its end (diverged): ranked worst, never copied.
FAILED_KEY, INVALID_KEY = "pbt:failed", "pbt:invalid"
MAX_PERTURBED_ATTEMPTS = 2  # a slot decided again after this many failures copies a top member unperturbed
MUTABLE = ("lr", "weight_decay", "dropout_rate")
FACTORS = (0.8, 1.2)  # explore: a range's value times one of these (Ray Tune's PBT), clipped to the range


class Decision(NamedTuple):
    config: dict[str, Any] | None  # None: no slot (`reason` says why)
    member: dict[str, Any] | None
    reason: str = ""


class PbtSampler(BaseSampler):
    """Population-based training (Jaderberg et al. 2017) over the trials of one study.

    A trial is one member's segment of `ready` epochs in one generation: trial slots 0, 1, 2, ... are
    (generation, member) = divmod(slot, population). Generation 0 draws each member's configuration at random
    (seeded by `seed` and the slot, so one worker reproduces it). A trial of generation g > 0 waits until every
    member of generation g-1 has completed, ranks them by their objective at the end of their segment (the
    intermediate value reported at step (g-1+1) x `ready`; ties to the lower member), and then
    * a member in the bottom `quantile` *exploits* a member of the top quantile, drawn with a generator seeded by
      `seed` and the slot: it continues that member's checkpoint with its configuration, whose `mutable`
      hyperparameters are *explored*: a range's value times 0.8 or 1.2 clipped to the range (and to its step), a
      list's value moved to a neighbouring value (numbers in numeric order);
    * every other member continues its own checkpoint with its own configuration.
    A segment that reported nothing at its end step, a non-finite value, or that the objective marked with
    `INVALID_KEY` (diverged) ranks worst, always exploits (even at quantile 0) and is never exploited. (An objective
    that reports no intermediate values at all is ranked by the trial's value.) The other hyperparameters
    (architecture, ...) never change along a lineage. `MEMBER_KEY` records the decision (parent trial,
    exploited_from, founder); the objective continues the parent's checkpoint.

    **State in the store**, as Optuna's GridSampler and the AblationSampler: trial system attributes, with the
    AblationSampler's slot-claim protocol (`hpo_astro.samplers.slots`): a new trial waits until every lower-numbered
    running trial has taken its slot (`PLAN_KEY` written), then takes the lowest slot no complete, running or waiting
    trial holds; a re-queued retry keeps its slot and configuration (copied attributes), a failed trial releases its
    slot. So a resumed study, or several processes sharing it, run the same population without a slot taken twice or
    skipped. A slot taken again after its trial's training failed (`FAILED_KEY`) is decided again with the attempt
    number in the seed: generation 0 draws anew, a later generation exploits a top member and perturbs it (from
    the `MAX_PERTURBED_ATTEMPTS`-th failure on: copies it unperturbed, a configuration that trained).

    **Waiting.** A trial of generation g waits for generation g-1 while its missing members run elsewhere, at most
    `wait_timeout` seconds; it gives up at once when a missing member is queued (a retry) or free (its trial
    failed), so that this process runs that one first. A trial that gives up, or whose slot is beyond `n_slots`,
    gets `DEFERRED_KEY`: it must evaluate nothing (its suggestions raise `optuna.TrialPruned`). While it waits the
    trial is marked alive (its heartbeat where the store has one, and `on_wait(study, trial_id)` at the start and
    at every look at the store, e.g. to record its worker and fail the trials of dead processes); a trial that
    another process failed meanwhile writes nothing more.

    Args:
        search_space: name -> distribution of every hyperparameter the objective suggests.
        population: members per generation.
        quantile: the share of the population that exploits (bottom) and is exploited (top), 0 to 0.5; the
            quantile's count is rounded up (Ray Tune's rule); 0: members never exploit (unless invalid).
        mutable: the hyperparameters explore perturbs (those absent from `search_space` are ignored).
        seed: seeds generation 0 and the exploit draws.
        n_slots: the study's budget of trials; a slot beyond it is deferred (None: no limit).
        ready: epochs per segment: the step a segment's score is read at is (generation + 1) x ready.
        invalid: the exception raised (with a message naming the trial) for a stored attribute the sampler cannot
            use (a tampered store).
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
        poll_interval: float = 0.2,
        on_wait: OnWait | None = None,
        ready: int = 1,
        invalid: Callable[[str], Exception] = ValueError,
    ) -> None:
        if population < 2:
            raise ValueError(f"population must be at least 2, got {population}")
        if not 0 <= quantile <= 0.5:
            raise ValueError(f"quantile must be between 0 and 0.5, got {quantile}")
        self._space = dict(search_space)
        self.population, self.quantile, self.seed, self.n_slots = population, quantile, seed or 0, n_slots
        self.ready = ready
        self._mutable = [name for name in self._space if name in mutable]
        self._plan_id = [population, quantile, self._mutable, self.seed, ready, space_fingerprint(self._space)]
        self._wait_timeout = wait_timeout
        self._wait = SlotWait(PLAN_KEY, (DEFERRED_KEY,), poll_interval, on_wait)
        self._invalid = invalid

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
        if MEMBER_KEY in trial.system_attrs or DEFERRED_KEY in trial.system_attrs:
            return  # a re-queued retry keeps its slot and configuration
        if len(study.directions) > 1:
            return  # refused at the first suggestion
        self._wait.alive(study, trial._trial_id)  # before any wait: its worker, its heartbeat
        if SLOT_KEY in trial.system_attrs and self._mine(trial):  # the retry of a trial killed while it waited
            slot: int | None = self._slot_of(trial)
        else:
            slot = self._claim(study, trial)
        if slot is None:
            return  # failed by another process while it waited (presumed dead): nothing may be written
        decision = self._decide(study, trial, slot)
        storage = study._storage
        if not still_running(study, trial._trial_id):
            return
        if decision.config is None:
            storage.set_trial_system_attr(trial._trial_id, DEFERRED_KEY, decision.reason)
            return
        storage.set_trial_system_attr(trial._trial_id, CONFIG_KEY, decision.config)
        storage.set_trial_system_attr(trial._trial_id, MEMBER_KEY, decision.member)

    def sample_independent(
        self, study: optuna.Study, trial: FrozenTrial, param_name: str, param_distribution: BaseDistribution
    ) -> Any:
        if len(study.directions) > 1:
            raise ValueError("PbtSampler needs a single-objective study: members are ranked by one value")
        attrs = study._storage.get_trial_system_attrs(trial._trial_id)
        if MEMBER_KEY not in attrs and DEFERRED_KEY not in attrs:  # before_trial never ran for this trial
            self.before_trial(study, study._storage.get_trial(trial._trial_id))
            attrs = study._storage.get_trial_system_attrs(trial._trial_id)
        if DEFERRED_KEY in attrs:
            raise optuna.TrialPruned(f"PbtSampler: no slot for this trial: {attrs[DEFERRED_KEY]}")
        if CONFIG_KEY not in attrs:
            raise optuna.TrialPruned("PbtSampler: no slot for this trial: it was failed while it waited")
        config = self.config_of(study._storage.get_trial(trial._trial_id))
        if param_name not in config:
            raise ValueError(f"PbtSampler: {param_name!r} is not in its search space ({', '.join(self._space)})")
        internal = param_distribution.to_internal_repr(config[param_name])
        if not param_distribution._contains(internal):  # no public membership test; Optuna's samplers use it too
            raise ValueError(f"PbtSampler planned {param_name}={config[param_name]!r}, outside {param_distribution}")
        return param_distribution.to_external_repr(internal)

    # --- what the store holds, checked -------------------------------------------------------------------------

    def config_of(self, trial: FrozenTrial) -> dict[str, Any]:
        """The trial's configuration (`CONFIG_KEY`): every hyperparameter of the search space, each inside it."""
        config = trial.system_attrs.get(CONFIG_KEY)
        if not isinstance(config, dict) or set(config) != set(self._space):
            raise self._invalid(
                f"trial {trial.number}'s attribute {CONFIG_KEY} is not an object of the search space's "
                f"hyperparameters ({', '.join(self._space)}): {str(config)[:80]}"
            )
        for name, dist in self._space.items():
            if not contains(dist, config[name]):
                raise self._invalid(
                    f"trial {trial.number}'s attribute {CONFIG_KEY}: {name}={config[name]!r} is outside its "
                    f"search space ({dist})"
                )
        return dict(config)

    def member_of(self, trial: FrozenTrial) -> dict[str, Any]:
        """The trial's member record (`MEMBER_KEY`), its fields checked."""
        record = trial.system_attrs.get(MEMBER_KEY)
        keys = ("generation", "member", "parent", "exploited_from", "founder")
        ok = isinstance(record, dict) and set(record) == set(keys)
        if ok:
            ints = {k: isinstance(record[k], int) and not isinstance(record[k], bool) for k in keys}
            ok = ints["generation"] and record["generation"] >= 0
            ok = ok and all(ints[k] and 0 <= record[k] < self.population for k in ("member", "founder"))
            ok = ok and all(record[k] is None or (ints[k] and record[k] >= 0) for k in ("parent", "exploited_from"))
        if not ok:
            raise self._invalid(
                f"trial {trial.number}'s attribute {MEMBER_KEY} is not a member record ({', '.join(keys)}; "
                f"generation, member and founder whole numbers, parent and exploited_from trials or null): "
                f"{str(record)[:80]}"
            )
        return dict(record)

    def _slot_of(self, trial: FrozenTrial) -> int:
        slot = trial.system_attrs.get(SLOT_KEY)
        if not isinstance(slot, int) or isinstance(slot, bool) or slot < 0:
            raise self._invalid(f"trial {trial.number}'s attribute {SLOT_KEY} is not a slot number: {slot!r}")
        return slot

    # --- slots ---------------------------------------------------------------------------------------------------

    def _mine(self, t: FrozenTrial) -> bool:
        return same(t.system_attrs.get(PLAN_KEY), self._plan_id)

    def _claim(self, study: optuna.Study, trial: FrozenTrial) -> int | None:
        """Wait until the lower-numbered running trials have taken their slots; take the lowest free one (None:
        the trial was failed meanwhile)."""
        trials, running = self._wait.wait_for_choosers(study, trial, self._wait_timeout)
        if not running:
            return None
        held = {
            self._slot_of(t)
            for t in trials
            if t.number != trial.number and t.state in HOLDING and SLOT_KEY in t.system_attrs and self._mine(t)
        }
        slot = next(s for s in range(len(held) + 1) if s not in held)
        storage = study._storage
        if not still_running(study, trial._trial_id):
            return None
        storage.set_trial_system_attr(trial._trial_id, SLOT_KEY, slot)
        storage.set_trial_system_attr(trial._trial_id, PLAN_KEY, self._plan_id)  # last: the slot is taken
        return slot

    def _attempt(self, trials: Sequence[FrozenTrial], slot: int) -> int:
        """How many trials of `slot` failed in training (`FAILED_KEY`) before: 0 for a slot's first decision."""
        return sum(
            t.state == TrialState.FAIL and FAILED_KEY in t.system_attrs and self._mine(t)
            and t.system_attrs.get(SLOT_KEY) == slot
            for t in trials
        )  # fmt: skip

    def _decide(self, study: optuna.Study, trial: FrozenTrial, slot: int) -> Decision:
        """The configuration and member record of `slot`, or why the trial gets none."""
        generation, member = divmod(slot, self.population)
        if self.n_slots is not None and slot >= self.n_slots:
            return Decision(None, None, f"slot {slot} is beyond the budget of {self.n_slots} trials")
        started = time.monotonic()
        while True:
            trials = study._storage.get_all_trials(study._study_id, deepcopy=False)
            attempt = self._attempt(trials, slot)
            if generation == 0:
                record = {"generation": 0, "member": member, "parent": None, "exploited_from": None, "founder": member}
                return Decision(self._draw(study, trial, slot, attempt), record)
            if not next((t.state == TrialState.RUNNING for t in trials if t._trial_id == trial._trial_id), True):
                return Decision(None, None, "failed while it waited")
            previous, missing = self._generation(trials, generation - 1)
            if not missing:
                return self._next(study, slot, previous, attempt)
            held = [t for t in trials if t.state in HOLDING and self._mine(t) and t.system_attrs[SLOT_KEY] in missing]
            running = {t.system_attrs[SLOT_KEY] for t in held if t.state == TrialState.RUNNING}
            if set(missing) - running:  # queued or free: this process can run it, so it must not wait for it
                return Decision(
                    None,
                    None,
                    f"generation {generation - 1} waits for slots {sorted(set(missing) - running)}, which are "
                    "queued or free: they run first",
                )
            if time.monotonic() - started >= self._wait_timeout:
                return Decision(
                    None,
                    None,
                    f"waited {self._wait_timeout:g} s for generation {generation - 1} (running trials "
                    f"{trial_numbers(held)})",
                )
            self._wait.pause(study, trial._trial_id)

    def _generation(self, trials: Sequence[FrozenTrial], generation: int) -> tuple[dict[int, FrozenTrial], list[int]]:
        """The complete trial of each member of `generation` (the earliest, should a slot have two), and the slots
        that have none yet."""
        slots = range(generation * self.population, (generation + 1) * self.population)
        done: dict[int, FrozenTrial] = {}
        for t in sorted(trials, key=lambda t: t.number):
            if t.state == TrialState.COMPLETE and self._mine(t) and t.system_attrs.get(SLOT_KEY) in slots:
                done.setdefault(self._slot_of(t), t)
        return {s % self.population: done[s] for s in slots if s in done}, [s for s in slots if s not in done]

    def _draw(self, study: optuna.Study, trial: FrozenTrial, slot: int, attempt: int = 0) -> dict[str, Any]:
        """Generation 0: every hyperparameter at random, from the study's seed and the slot (and the attempt)."""
        entropy = [self.seed, slot] if attempt == 0 else [self.seed, slot, attempt]
        seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])
        random = optuna.samplers.RandomSampler(seed=seed)
        return {
            name: plan_value(name, random.sample_independent(study, trial, name, dist))
            for name, dist in self._space.items()
        }

    def _next(self, study: optuna.Study, slot: int, previous: dict[int, FrozenTrial], attempt: int) -> Decision:
        generation, member = divmod(slot, self.population)
        sign = -1.0 if study.direction == optuna.study.StudyDirection.MAXIMIZE else 1.0
        end = generation * self.ready
        scores = {m: segment_score(t, end) for m, t in previous.items()}
        valid = sorted((m for m in previous if not math.isnan(scores[m])), key=lambda m: (sign * scores[m], m))
        ranked = valid + sorted(m for m in previous if math.isnan(scores[m]))  # best first, invalid last
        k = self.n_exploit
        top, bottom = valid[:k], (ranked[len(ranked) - k :] if k else [])
        pool = top or valid[:1]  # an invalid segment exploits the best member even at quantile 0
        rng = np.random.default_rng([self.seed, slot] if attempt == 0 else [self.seed, slot, attempt])
        exploits = bool(pool) and (
            (member in bottom and member not in top) or math.isnan(scores[member]) or attempt > 0
        )
        parent = previous[pool[int(rng.integers(len(pool)))]] if exploits else previous[member]
        config = self.config_of(parent)
        if exploits and attempt < MAX_PERTURBED_ATTEMPTS:
            config = {**config, **perturbed(config, self._space, self._mutable, rng)}
        record = {
            "generation": generation,
            "member": member,
            "parent": parent.number,
            "exploited_from": parent.number if exploits else None,
            "founder": self.member_of(parent)["founder"],
        }
        return Decision(config, record)


def space_fingerprint(space: Mapping[str, BaseDistribution]) -> str:
    """A short digest of a search space (names and distributions): part of the plan's identity."""
    text = json.dumps({k: optuna.distributions.distribution_to_json(d) for k, d in space.items()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def contains(dist: BaseDistribution, value: Any) -> bool:
    try:
        return bool(dist._contains(dist.to_internal_repr(value)))  # no public membership test; Optuna uses it too
    except (ValueError, TypeError):
        return False


def segment_score(trial: FrozenTrial, end: int | None = None) -> float:
    """What a member is ranked by: the objective reported at step `end`, the last epoch of its segment (the weights
    it hands on; None: the last reported step). NaN (ranked worst) for a segment the objective marked invalid
    (`INVALID_KEY`), or that reported nothing at `end` or a non-finite value there; the trial's value when it
    reported no intermediate value at all (an objective that does not report)."""
    if INVALID_KEY in trial.system_attrs:
        return math.nan
    values = trial.intermediate_values
    if not values:
        value = trial.value
        return float(value) if value is not None and math.isfinite(value) else math.nan
    value = values.get(max(values) if end is None else end)
    return float(value) if value is not None and math.isfinite(value) else math.nan


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
