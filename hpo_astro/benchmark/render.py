"""Writing a benchmark's results: DIR/benchmark.json (everything), CSV files (one table each) and DIR/index.html
(Plotly figures and tables, self-contained the way `hpo-astro report` pages are: plotly.js inline, no URL).

Every file is written atomically (`hpo_astro.io.write_output`); index.html last, so a directory with an index.html
holds a whole report. The files hold no time stamp except the HTML's "generated" line: re-rendering a finished
benchmark gives the same JSON and CSV bytes.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from hpo_astro.benchmark import stats
from hpo_astro.benchmark.analysis import Analysis, Curves
from hpo_astro.benchmark.collect import schedule_text
from hpo_astro.benchmark.figures import anytime_figure, final_figure, rank_figure, selection_figure
from hpo_astro.benchmark.hypervolume import box_html
from hpo_astro.io import strict_json, write_output
from hpo_astro.results.page import escape, figure_html, page, table_html

# --- JSON and CSV -----------------------------------------------------------------------------------------------


def _estimate(e: stats.Estimate | None) -> dict[str, Any] | None:
    return None if e is None else {"mean": e.mean, "ci_low": e.low, "ci_high": e.high, "n": e.n}


def _curves_json(c: Curves) -> dict[str, Any]:
    return {
        "budgets": c.budgets,
        "strategies": {
            s: {"median": b.median, "low": b.low, "high": b.high, "n": b.n, "mean_rank": c.mean_rank[s]}
            for s, b in c.bands.items()
        },
    }


def to_json(analysis: Analysis, facts: dict[str, Any]) -> dict[str, Any]:
    a = analysis
    return strict_json(
        {
            "benchmark": facts,
            "strategies": [
                {
                    "strategy": s.strategy,
                    "repeats": s.repeats,
                    "mean_rank_at_n_trials": s.mean_rank,
                    "best_validation": _estimate(s.best_value),
                    "best_test": _estimate(s.best_test),
                    "best_true_test": _estimate(s.best_true),
                    "optimism": _estimate(s.optimism),
                    "trials_to_within_1pct": _estimate(s.trials_to_within),
                    "seconds_to_within_1pct": _estimate(s.time_to_within),
                    "training_seconds": _estimate(s.total_time),
                    "epochs_trained": _estimate(s.epochs),
                }
                for s in a.summary
            ],
            "studies": [asdict(row) for row in a.studies],
            "anytime": {"trials": _curves_json(a.by_trials), "seconds": _curves_json(a.by_time)},
            "pairwise": [_pair_record(p) for p in a.pairwise],
            "top_configurations": [_top_record(t) for t in a.top],
            "notes": a.notes,
        }
    )


def _pair_record(p: Any) -> dict[str, Any]:
    return {
        "family": p.family,
        "a": p.a,
        "b": p.b,
        "n": p.test.n,
        "statistic": p.test.statistic,
        "p_value": p.test.p_value,
        "p_holm": p.p_holm,
        "significant": p.significant,
        "better": p.better,
        "rank_biserial": p.test.rank_biserial,
        "median_difference": p.test.median_difference,
        "mean_difference": p.test.mean_difference,
    }


def _top_record(t: Any) -> dict[str, Any]:
    return {
        "strategy": t.strategy,
        "rank": t.rank,
        "found_by_studies": t.found_by,
        "search_validation": t.search_value,
        "search_test": t.search_test,
        "retrained_validation": _estimate(t.retrained_val),
        "retrained_test": _estimate(t.retrained_test),
        "retrain_seeds": list(t.seeds),
        "luck": t.luck,
        "params": t.params,
        **({"pbt_schedule": list(t.schedule)} if t.schedule else {}),
    }


def _csv(records: Sequence[dict[str, Any]]) -> str:
    if not records:
        return ""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(records[0]), lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({k: "" if v is None else v for k, v in strict_json(record).items()})
    return buffer.getvalue()


def _flat(prefix: str, e: dict[str, Any] | None) -> dict[str, Any]:
    e = e or {"mean": None, "ci_low": None, "ci_high": None}
    return {f"{prefix}_mean": e["mean"], f"{prefix}_ci_low": e["ci_low"], f"{prefix}_ci_high": e["ci_high"]}


def csv_files(payload: dict[str, Any]) -> dict[str, str]:
    """File name -> CSV text, from the JSON payload (one source for both)."""
    strategies = []
    for s in payload["strategies"]:
        row = {"strategy": s["strategy"], "repeats": s["repeats"], "mean_rank_at_n_trials": s["mean_rank_at_n_trials"]}
        for key in [k for k in s if k not in row]:  # every estimate, in the JSON's order
            row.update(_flat(key, s[key]))
        strategies.append(row)
    files = {"strategies.csv": _csv(strategies), "studies.csv": _csv(payload["studies"])}
    for axis, name in (("trials", "anytime_trials.csv"), ("seconds", "anytime_seconds.csv")):
        curves = payload["anytime"][axis]
        rows = [
            {
                "strategy": s,
                axis: budget,
                "median": c["median"][i],
                "low": c["low"][i],
                "high": c["high"][i],
                "repeats_with_value": c["n"][i],
                "mean_rank": c["mean_rank"][i],
            }
            for s, c in curves["strategies"].items()
            for i, budget in enumerate(curves["budgets"])
        ]
        files[name] = _csv(rows)
    files["pairwise.csv"] = _csv(payload["pairwise"])
    top = []
    for t in payload["top_configurations"]:
        row = {k: v for k, v in t.items() if k not in ("retrained_validation", "retrained_test", "retrain_seeds")}
        row.update(_flat("retrained_validation", t["retrained_validation"]))
        row.update(_flat("retrained_test", t["retrained_test"]))
        row["retrain_seeds"] = " ".join(str(s) for s in t["retrain_seeds"])
        row["params"] = json.dumps(t["params"], sort_keys=True)  # one cell
        top.append(row)
    if any("pbt_schedule" in row for row in top):  # one column for every row (a pbt arm's schedules), one cell each
        top = [{**row, "pbt_schedule": json.dumps(row.get("pbt_schedule"), sort_keys=True)} for row in top]
    files["top_configurations.csv"] = _csv(top)
    return files


# --- HTML -------------------------------------------------------------------------------------------------------


def _n(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def _ci(e: stats.Estimate | None, digits: int = 4) -> str:
    if e is None or e.n == 0:
        return "n/a"
    return f"{e.mean:.{digits}f} [{e.low:.{digits}f}, {e.high:.{digits}f}]"


def _p(p: float) -> str:
    return "n/a" if not math.isfinite(p) else (f"{p:.2e}" if p < 1e-3 else f"{p:.4f}")


def html_page(analysis: Analysis, facts: dict[str, Any], tabular: bool) -> str:
    a = analysis
    m = a.metric
    direction = "higher" if a.maximize else "lower"
    mo = a.multi_objective  # scored by hypervolume: no test metric of a best trial (`hypervolume_html`)
    tested = tabular and not mo
    parts = [f'<p class="muted">generated {time.strftime("%Y-%m-%d %H:%M:%S %Z")}</p>']
    parts.append(table_html(["setting", "value"], [(k, _fact(v)) for k, v in facts.items() if k != "hypervolume"]))
    parts.append("<h2>Summary per strategy</h2>")
    objective = (
        f"Objectives: {escape(facts.get('objective', ''))}; each study scored by the {escape(m)} of its Pareto front "
        "(higher is better, see Hypervolume below)"
        if mo
        else f"Objective: validation {escape(m)} ({direction} is better)"
    )
    parts.append(
        '<p class="muted">Means over repeats with bootstrap 95% confidence intervals. '
        f"{objective}. Mean rank at {a.n_trials} trials: 1 = best in every repeat.</p>"
    )
    rows = [
        [
            s.strategy,
            s.repeats,
            f"{s.mean_rank:.2f}",
            _ci(s.best_value),
            *([] if mo else [_ci(s.best_test)]),
            *([_ci(s.best_true)] if tested else []),
            *([] if mo else [_ci(s.optimism)]),
            _ci(s.trials_to_within, 1),
            _ci(s.time_to_within, 1),
            _ci(s.total_time, 1),
            _ci(s.epochs, 1),
        ]
        for s in a.summary
    ]
    parts.append(
        table_html(
            [
                "strategy",
                "repeats",
                "mean rank",
                f"final {m}" if mo else f"best validation {m}",
                *([] if mo else [f"its test {m}"]),
                *([f"its true test {m} (mean over the table's seeds)"] if tested else []),
                *([] if mo else ["validation - test (optimism)"]),
                "trials to within 1%",
                "training s to within 1%",
                "training s in all",
                "epochs trained",
            ],
            rows,
        )
    )
    parts += [f'<p class="note">{escape(n)}</p>' for n in a.notes]
    if mo:
        parts.append(box_html(facts.get("hypervolume") or {}))
    so_far = "Hypervolume of the Pareto front" if mo else "Best validation objective"
    parts += [
        "<h2>Anytime performance</h2>",
        f'<p class="muted">{so_far} so far: median over repeats (line) and 95% band (2.5th to 97.5th '
        "percentile, shaded). Training time is each trial's recorded training time summed in trial order"
        + (" (in tabular mode: the table's recorded time of the epochs replayed)" if tabular else "")
        + ".</p>",
        figure_html(anytime_figure(a.by_trials, m, f"{so_far} vs trials", mo)),
        figure_html(anytime_figure(a.by_time, m, f"{so_far} vs cumulative training time", mo)),
        figure_html(rank_figure(a.by_trials, "Mean rank of each strategy vs trials")),
        figure_html(rank_figure(a.by_time, "Mean rank of each strategy vs cumulative training time")),
    ]
    if not mo:
        parts += _final_quality(a, tabular)
    parts.append(f"<h2>Pairwise comparison at {a.budget} trials</h2>")
    parts.append(
        '<p class="muted">Paired by repeat (repeat r of every strategy ran with the same seed). Wilcoxon signed-rank '
        "test, two-sided, zero differences dropped; p-values adjusted with Holm's method over the pairs of each "
        f"table; significant: adjusted p &lt; {stats.ALPHA}. Effect size: matched-pairs rank-biserial correlation "
        "(+1: the first strategy better in every repeat, -1: the second). Median difference: first minus second, "
        f"oriented so that &gt; 0 favours the first ({direction} {escape(m)} is better).</p>"
    )
    for family, heading in (
        ("validation", f"The {m} after {a.budget} trials" if mo else f"Best validation {m} after {a.budget} trials"),
        ("test", f"Test {m} of the configuration that was best after {a.budget} trials"),
        ("true", f"True test {m} (mean over the table's seeds) of the configuration best after {a.budget} trials"),
    ):
        if (family == "true" and not tested) or (family == "test" and mo):
            continue
        parts += _pair_table(a, family, heading)
    if not mo:
        parts += _selection_bias(a, facts, tabular)
    parts.append(
        '<p class="muted">Files: benchmark.json (everything), strategies.csv, studies.csv, anytime_trials.csv, '
        "anytime_seconds.csv, pairwise.csv, top_configurations.csv.</p>"
    )
    return page(f"Benchmark {facts.get('name', '')}", '<a href="index.html">benchmark</a>', "\n".join(parts))


def _final_quality(a: Analysis, tabular: bool) -> list[str]:
    return [
        "<h2>Final quality</h2>",
        '<p class="muted">'
        + (
            "Each study's best configuration (its first complete trial with the best value) on the test split, as "
            "the table recorded the run the study saw; its true quality is the mean test metric over every seed the "
            "table holds of that configuration: what the configuration is worth, whatever run the search drew."
            if tabular
            else "Each study's best configuration evaluated on the test split once (its saved weights, or retrained "
            "with its seed; cached in the store, as `hpo-astro compare` does)."
        )
        + "</p>",
        figure_html(final_figure(a)),
    ]


def _pair_table(a: Analysis, family: str, heading: str) -> list[str]:
    parts: list[str] = []
    rows = [
        [
            p.a,
            p.b,
            p.test.n,
            _n(p.test.median_difference),
            _n(p.test.rank_biserial, 2),
            _p(p.test.p_value),
            _p(p.p_holm),
            ("yes: " + p.better + " better") if p.significant and p.better else "no",
        ]
        for p in a.pairwise
        if p.family == family
    ]
    parts.append(f"<h3>{escape(heading)}</h3>")
    if rows:
        header = ["A", "B", "pairs", "median A-B", "rank-biserial", "p", "p (Holm)", "significant"]
        parts.append(table_html(header, rows))
    else:
        parts.append('<p class="note">one strategy: nothing to compare.</p>')
    return parts


def _selection_bias(a: Analysis, facts: dict[str, Any], tabular: bool) -> list[str]:
    m = a.metric
    parts: list[str] = []
    parts += [
        "<h2>Selection bias: how much of each best is luck</h2>",
        '<p class="muted">A study\'s best trial was selected as the best of many noisy validation measurements, so its '
        "validation number is optimistic. Per study: validation minus test of the best trial (oriented: &gt; 0 = "
        "validation promised more than test gave); the summary table above has its mean per strategy.</p>",
        figure_html(selection_figure(a)),
        "<h3>Top configurations of each strategy</h3>",
    ]
    if not a.top:
        parts.append('<p class="note">--top-k 0: no configurations re-examined.</p>')
    else:
        if tabular:
            parts.append(
                '<p class="note">Tabular mode: the top configurations are not re-trained; their true quality over '
                "the table's seeds is in the pairwise table above. Run the benchmark in training mode (without "
                "--table) for the re-training check.</p>"
            )
        else:
            parts.append(
                '<p class="muted">Each strategy\'s best distinct configurations over all its repeats, each re-trained '
                "with fresh seeds (ones no repeat used). Luck: the search's validation number minus the re-trained "
                "mean (oriented: &gt; 0 = the search's number was lucky).</p>"
            )
        rows = [
            [
                t.strategy,
                t.rank,
                _n(t.search_value),
                _n(t.search_test),
                _ci(t.retrained_val),
                _ci(t.retrained_test),
                _n(t.luck),
                " ".join(str(s) for s in t.seeds) or "-",
                t.found_by,
                _configuration(t, facts),
            ]
            for t in a.top
        ]
        header = [
            "strategy",
            "#",
            f"search validation {m}",
            f"search test {m}",
            "re-trained validation",
            "re-trained test",
            "luck",
            "seeds",
            "studies that found it",
            "configuration",
        ]
        parts.append(table_html(header, rows))
    return parts


def _configuration(t: Any, facts: dict[str, Any]) -> str:
    """A top configuration's searched values; a PBT member's, then its schedule segment by segment."""
    shown = ", ".join(f"{k}={v}" for k, v in t.params.items() if k in facts.get("space", t.params))
    return f"{shown} | pbt schedule: {schedule_text(t.schedule)}" if t.schedule else shown


def _fact(value: Any) -> str:
    if isinstance(value, dict):
        return ", ".join(f"{k}: {_fact(v)}" for k, v in value.items())
    if isinstance(value, list | tuple):
        return ", ".join(str(v) for v in value) or "-"
    return "-" if value is None else str(value)


def write_all(out: Path, analysis: Analysis, facts: dict[str, Any], tabular: bool) -> list[Path]:
    """Write benchmark.json, the CSV files and index.html (last) into `out`; the paths written."""
    out = Path(out)
    payload = to_json(analysis, facts)
    written = [write_output(out / "benchmark.json", json.dumps(payload, indent=1, allow_nan=False) + "\n")]
    for name, text in csv_files(payload).items():
        written.append(write_output(out / name, text))
    written.append(write_output(out / "index.html", html_page(analysis, facts, tabular)))
    return written
