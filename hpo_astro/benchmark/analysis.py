"""From the benchmark's studies (plain `StudyRun` records) to every number of the report: anytime curves and ranks,
final quality, the pairwise table and the selection-bias check. No Optuna, no files: the statistics are
`hpo_astro.benchmark.stats`; this module decides what is compared with what.

* Anytime: a study's best validation objective so far after each finished trial (trial budgets 1..N) and after each
  amount of training time (its trials' recorded training time, summed in trial order, on a grid of 101 budgets from
  0 to the longest study's total). Per strategy the median and the 95% band (2.5th-97.5th percentile) over repeats,
  and at every budget each strategy's rank among the strategies within a repeat (1 = best, ties averaged, no value
  yet = last), averaged over repeats.
* Final quality: per study its incumbent after N trials (the first complete trial with the best value) and that
  configuration's test metric; per strategy the mean and its bootstrap 95% CI; trials and training time until the
  running best first came within 1% (relative) of the study's own final best.
* Pairwise: for each pair of strategies, paired by repeat (repeat r of every strategy has the same seed), the
  Wilcoxon signed-rank test of (a) the best validation objective after B trials and (b) the test metric of the
  configuration that was best after B trials; Holm's correction over the pairs of each of the two families; effect
  size the matched-pairs rank-biserial correlation (+1: the first strategy better in every repeat).
* Selection bias: per study the incumbent's validation objective minus its test metric (oriented so that > 0 means
  validation promised more than test gave); per strategy its top-k configurations over all repeats, their search
  value against the same configuration re-trained with k fresh seeds (training mode).
* Equal epochs (a `pbt` arm, population-based training): its trials are segments of `ready` epochs, `segments`
  of them per trial of the other arms; the trials axis runs to its last segment, and the pairwise tables compare it
  after `budget * segments` segments. Per study the epochs its trials trained (`TrialRecord.epochs`) are reported.
* Multi-objective: the runs arrive scored by `hypervolume.score` (a trial's value: its study's hypervolume just
  after it), so everything above is the hypervolume's, "higher is better"; the test-metric parts are left out.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from hpo_astro.benchmark import stats
from hpo_astro.benchmark.collect import Candidate, StudyRun, TrialRecord, incumbent

TIME_POINTS = 101


@dataclass(frozen=True)
class Curves:
    """Anytime performance on one axis: budgets, and per strategy the band over repeats and the mean rank."""

    axis: str  # "trials" or "seconds"
    budgets: np.ndarray
    bands: dict[str, stats.Band]
    mean_rank: dict[str, np.ndarray]


@dataclass(frozen=True)
class StudyRow:
    """One study's final numbers (a row of studies.csv)."""

    strategy: str
    repeat: int
    seed: int
    study: str
    trials: int  # finished trials (the budget's unit)
    failed: int
    best_trial: int | None
    best_value: float | None  # validation objective of the incumbent
    best_test: float | None
    best_true: float | None  # its configuration's true quality (tabular mode: mean test over the table's seeds)
    optimism: float | None  # validation minus test, oriented: > 0 = validation promised more
    trials_to_within: int | None
    time_to_within: float | None
    total_time: float  # training seconds charged to all its trials
    epochs: int = 0  # epochs its trials trained (`TrialRecord.epochs`)


@dataclass(frozen=True)
class StrategySummary:
    strategy: str
    repeats: int
    best_value: stats.Estimate
    best_test: stats.Estimate
    best_true: stats.Estimate
    optimism: stats.Estimate
    trials_to_within: stats.Estimate
    time_to_within: stats.Estimate
    total_time: stats.Estimate
    mean_rank: float  # at N trials (validation)
    epochs: stats.Estimate | None = None  # epochs trained per study


@dataclass(frozen=True)
class PairRow:
    family: str  # "validation", "test" or "true" (tabular mode: the true quality of the configuration chosen)
    a: str
    b: str
    test: stats.PairedTest
    p_holm: float
    significant: bool
    better: str | None  # the significantly better of the two, None when the difference is not significant


@dataclass(frozen=True)
class TopRow:
    """One of a strategy's top configurations: what the search saw, and what fresh seeds give."""

    strategy: str
    rank: int
    params: dict[str, Any]
    found_by: int  # studies that tried it
    search_value: float
    search_test: float | None
    retrained_val: stats.Estimate | None  # None: not re-trained (tabular mode, or --top-k 0)
    retrained_test: stats.Estimate | None
    seeds: tuple[int, ...]
    luck: float | None  # search value minus the re-trained mean, oriented: > 0 = the search's number was lucky
    schedule: tuple[dict[str, Any], ...] | None = None  # a PBT member's schedule (what was re-trained)


@dataclass
class Analysis:
    strategies: list[str]
    metric: str
    maximize: bool
    n_trials: int
    budget: int
    repeats: list[int]  # the repeats every strategy has (the pairs)
    by_trials: Curves
    by_time: Curves
    studies: list[StudyRow]
    summary: list[StrategySummary]
    pairwise: list[PairRow]
    top: list[TopRow]
    notes: list[str] = field(default_factory=list)
    # Scored by hypervolume (`hpo_astro.benchmark.hypervolume`): `metric` is its label, the test-metric parts are None
    multi_objective: bool = False


def oriented(value: float | None, maximize: bool) -> float:
    """`value` as a "bigger is better" number (NaN for None)."""
    if value is None:
        return math.nan
    return value if maximize else -value


def _best_curve(run: StudyRun, maximize: bool) -> np.ndarray:
    return stats.running_best([t.value for t in run.finished], maximize)


def _value_at(run: StudyRun, budget: int, maximize: bool) -> float:
    return float(stats.at_trials(_best_curve(run, maximize), budget)[budget - 1])


def _incumbent_at(run: StudyRun, budget: int, maximize: bool) -> TrialRecord | None:
    """The trial that was best after `budget` finished trials."""
    kept: list[TrialRecord] = []
    finished = 0
    for t in run.trials:
        if finished >= budget:
            break
        kept.append(t)
        finished += t.finished
    return incumbent(kept, maximize)


def _test_at(run: StudyRun, budget: int, maximize: bool) -> float:
    """The test metric of the configuration that was best after `budget` finished trials: the trial's own (tabular
    mode), else the study's evaluated incumbent when it is that trial; NaN when not known."""
    best = _incumbent_at(run, budget, maximize)
    if best is None:
        return math.nan
    if best.test is not None:
        return best.test
    if best.number == run.best_trial and run.best_test is not None:
        return run.best_test
    return math.nan


def _true_at(run: StudyRun, budget: int, maximize: bool) -> float:
    """The true quality of the configuration that was best after `budget` finished trials (tabular mode); NaN when
    not known."""
    best = _incumbent_at(run, budget, maximize)
    return math.nan if best is None or best.true_test is None else best.true_test


def _by_repeat(
    runs: Sequence[StudyRun], strategies: Sequence[str], repeats: Sequence[int]
) -> dict[str, list[StudyRun]]:
    index = {(r.strategy, r.repeat): r for r in runs}
    return {s: [index[(s, rep)] for rep in repeats] for s in strategies}


def analyze(
    runs: Sequence[StudyRun],
    strategies: Sequence[str],
    n_trials: int,
    maximize: bool,
    metric: str,
    budget: int | None = None,
    top: dict[str, list[Candidate]] | None = None,
    retrained: dict[tuple[str, str], list[tuple[int, dict[str, float], dict[str, float]]]] | None = None,
    multi_objective: bool = False,
    segments: dict[str, float] | None = None,
) -> Analysis:
    """Every statistic of the report. `top`: each strategy's top configurations; `retrained`: per (strategy,
    configuration key) the (seed, validation metrics, test metrics) of its re-trainings. `multi_objective`: the runs'
    values are hypervolumes (`hypervolume.score`), `metric` their label; a front has no one best trial, so the
    test-metric families, the optimism and the top configurations are left out. `segments`: per pbt arm, its trials
    per trial of the others (equal epochs: `BenchmarkSpec.segments_per_trial`)."""
    strategies = list(strategies)
    segments = segments or {}

    def arm_budget(s: str, b: int) -> int:  # trial budget b of the benchmark, in trials of arm s
        return max(1, int(b * segments[s] + 1e-9)) if s in segments else b

    budget = budget or n_trials
    repeats = sorted(set.intersection(*({r.repeat for r in runs if r.strategy == s} for s in strategies)))
    if not repeats:
        raise ValueError("no repeat has a study of every strategy")
    grouped = _by_repeat(runs, strategies, repeats)
    notes: list[str] = []

    # --- anytime, against trials and against training time
    axis = max([n_trials, *(arm_budget(s, n_trials) for s in strategies)])
    trial_budgets = np.arange(1, axis + 1)
    totals = [sum(t.cost for t in r.trials) for r in runs]
    time_budgets = np.linspace(0.0, max(totals, default=0.0), TIME_POINTS)
    per_trials = {
        s: np.array([stats.at_trials(_best_curve(r, maximize), axis) for r in grouped[s]]) for s in strategies
    }
    per_time = {}
    for s in strategies:
        rows = []
        for r in grouped[s]:
            cumulative = np.cumsum([t.cost for t in r.trials])
            best = stats.running_best([t.value for t in r.trials], maximize)  # failed trials cost time, never improve
            rows.append(stats.at_costs(cumulative, best, time_budgets))
        per_time[s] = np.array(rows)
    by_trials = _curves("trials", trial_budgets, per_trials, strategies, maximize)
    by_time = _curves("seconds", time_budgets, per_time, strategies, maximize)

    # --- final quality and selection bias, per study
    rows: list[StudyRow] = []
    for s in strategies:
        for r in grouped[s]:
            n_within, t_within = _to_within(r, maximize)
            best = incumbent(r.trials, maximize)
            value = best.value if best is not None else None
            gap = None
            if value is not None and r.best_test is not None:
                gap = value - r.best_test if maximize else r.best_test - value
            rows.append(
                StudyRow(
                    strategy=s,
                    repeat=r.repeat,
                    seed=r.seed,
                    study=r.study,
                    trials=len(r.finished),
                    failed=sum(t.state == "fail" for t in r.trials),
                    best_trial=r.best_trial,
                    best_value=value,
                    best_test=r.best_test,
                    best_true=r.best_true,
                    optimism=gap,
                    trials_to_within=n_within,
                    time_to_within=t_within,
                    total_time=float(sum(t.cost for t in r.trials)),
                    epochs=sum(t.epochs for t in r.trials),
                )
            )
    summary = []
    for s in strategies:
        mine = [row for row in rows if row.strategy == s]
        # A fixed bootstrap stream per quantity: the same report every time, and the same interval for the same
        # values whatever the strategy (identical strategies get identical intervals).
        base = 0
        summary.append(
            StrategySummary(
                strategy=s,
                repeats=len(mine),
                best_value=_estimate([r.best_value for r in mine], base),
                best_test=_estimate([r.best_test for r in mine], base + 1),
                best_true=_estimate([r.best_true for r in mine], base + 6),
                optimism=_estimate([r.optimism for r in mine], base + 2),
                trials_to_within=_estimate([r.trials_to_within for r in mine], base + 3),
                time_to_within=_estimate([r.time_to_within for r in mine], base + 4),
                total_time=_estimate([r.total_time for r in mine], base + 5),
                mean_rank=float(by_trials.mean_rank[s][-1]),
                epochs=_estimate([r.epochs for r in mine], base + 7),
            )
        )
    if segments:
        arms = ", ".join(f"{s} ran {arm_budget(s, n_trials)} trials" for s in strategies if s in segments)
        first = next(iter(segments))
        notes.append(
            f"Equal training epochs: {arms} against {n_trials} of each other arm. A pbt trial is one member's segment "
            f"({segments[first]:g} per trial of another arm), trained whole (never stopped early), while the others' "
            "trials may stop early: 'epochs trained' says what each arm trained. On the trials axis pbt runs to its "
            "last segment; the training-time axis is the fair one. The pairwise tables compare pbt after "
            f"{arm_budget(first, budget)} segments with the others after {budget} trials."
        )

    # --- pairwise, paired by repeat, at the chosen budget
    pairwise: list[PairRow] = []
    families: list[tuple[str, Any]] = [("validation", _value_at)]
    if not multi_objective:
        families.append(("test", _test_at))
    else:
        notes.append(
            f"Multi-objective: each study is scored by the {metric} of its Pareto front (higher is better); the test "
            "metric of a best trial, its optimism and the top configurations do not apply to a front and are left out."
        )
    if any(r.best_true is not None for r in runs):  # tabular mode: what the chosen configurations are truly worth
        families.append(("true", _true_at))
    for family, value_of in families:
        values = {s: [value_of(r, arm_budget(s, budget), maximize) for r in grouped[s]] for s in strategies}
        pairs = list(itertools.combinations(strategies, 2))
        tests = [stats.paired_wilcoxon(values[a], values[b], maximize) for a, b in pairs]
        adjusted = stats.holm([t.p_value if t.n else math.nan for t in tests])
        for (a, b), test, p in zip(pairs, tests, adjusted, strict=True):
            p_holm = 1.0 if math.isnan(p) else float(p)
            significant = p_holm < stats.ALPHA
            better = (a if test.rank_biserial > 0 else b) if significant else None
            pairwise.append(PairRow(family, a, b, test, p_holm, significant, better))
    if len(repeats) <= 5 and len(strategies) > 1:
        notes.append(
            f"With {len(repeats)} paired repeats the smallest possible Wilcoxon p-value is "
            f"{stats.min_p_value(len(repeats)):.4g}: no difference can be significant at {stats.ALPHA}; use 6 or more "
            "repeats (more with many strategies: Holm multiplies the smallest p-value by the number of pairs)."
        )

    # --- the top configurations: search value against fresh seeds
    top_rows: list[TopRow] = []
    for s, candidates in (top or {}).items():
        for rank, c in enumerate(candidates, start=1):
            done = (retrained or {}).get((s, c.key), [])
            val = test = luck = None
            seeds: tuple[int, ...] = ()
            if done:
                seeds = tuple(seed for seed, _, _ in done)
                val = stats.bootstrap_mean([_get(v, metric) for _, v, _ in done], seed=rank)
                test = stats.bootstrap_mean([_get(t, metric) for _, _, t in done], seed=rank)
                luck = c.value - val.mean if maximize else val.mean - c.value
            top_rows.append(
                TopRow(s, rank, c.params, len(c.found_by), c.value, c.test, val, test, seeds, luck, c.schedule)
            )
    return Analysis(
        strategies,
        metric,
        maximize,
        n_trials,
        budget,
        repeats,
        by_trials,
        by_time,
        rows,
        summary,
        pairwise,
        top_rows,
        notes,
        multi_objective,
    )


def _to_within(run: StudyRun, maximize: bool) -> tuple[int | None, float | None]:
    """Finished trials until the running best came within 1% of the study's best, and the training time charged
    until then, failed trials' included (the time axis of the anytime curves): each finished trial carries the time
    of the failed trials before it."""
    values: list[float | None] = []
    costs: list[float] = []
    pending = 0.0
    for t in run.trials:
        pending += t.cost
        if t.finished:
            values.append(t.value)
            costs.append(pending)
            pending = 0.0
    return stats.to_within(values, costs, maximize)


def _estimate(values: Sequence[float | int | None], seed: int) -> stats.Estimate:
    return stats.bootstrap_mean([math.nan if v is None else float(v) for v in values], seed=seed)


def _get(metrics: dict[str, float], name: str) -> float:
    value = metrics.get(name)
    return float(value) if isinstance(value, int | float) else math.nan


def _curves(
    axis: str, budgets: np.ndarray, per: dict[str, np.ndarray], strategies: Sequence[str], maximize: bool
) -> Curves:
    bands = {s: stats.band(per[s]) for s in strategies}
    # (repeats, budgets, strategies): each repeat ranks the strategies at each budget
    stacked = np.stack([per[s] for s in strategies], axis=-1)
    means = stats.mean_ranks(stacked, maximize)
    return Curves(axis, budgets, bands, {s: means[:, i] for i, s in enumerate(strategies)})
