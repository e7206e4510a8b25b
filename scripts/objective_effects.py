"""What choosing by another objective changes, measured exhaustively on a table (every configuration it holds, every
seed, no search noise): the README's figures for operating-point and multi-objective studies.

    python scripts/objective_effects.py [--table astro-small]

1. **Operating point.** The configuration with the best mean validation accuracy over the table's seeds, against
   the one with the lowest mean validation FPR at 5% FNR (`--objective fpr_at_fnr`): each one's mean *test* FPR at
   5% FNR and test accuracy over the same seeds.
2. **Accuracy against size.** The Pareto front of (mean validation accuracy, parameter count) over the table
   (`--objective accuracy,params`): each of its configurations with its test accuracy and FPR at 5% FNR; and how
   closely validation accuracy and FPR at 5% FNR agree over the configurations.
"""

from __future__ import annotations

import argparse
import statistics
from collections import defaultdict

from hpo_astro.core.model import parameter_count
from hpo_astro.tabular import load_table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--table", default="astro-small")
    args = parser.parse_args()
    table = load_table(args.table)
    channels = len(table.info.get("channels") or ["scorr"])
    runs = defaultdict(list)
    for row in table.rows:
        runs[tuple(sorted((k, str(v)) for k, v in row.params.items()))].append(row)

    def mean(rows: list, split: str, metric: str) -> float:
        return statistics.fmean(getattr(r, f"{split}_metrics")[metric] for r in rows)

    configs = list(runs.values())
    print(f"table {table.name!r}: {len(configs)} configurations, {len(table.rows)} runs")
    by_accuracy = max(configs, key=lambda rows: mean(rows, "val", "accuracy"))
    by_fpr = min(configs, key=lambda rows: mean(rows, "val", "fpr_at_5fnr"))
    print("\n1. chosen by                 test FPR@5%FNR   test accuracy   (means over the seeds)")
    for label, rows in (("best val accuracy", by_accuracy), ("lowest val FPR@5%FNR", by_fpr)):
        print(f"   {label:24s} {mean(rows, 'test', 'fpr_at_5fnr'):14.4f} {mean(rows, 'test', 'accuracy'):15.4f}")

    points = [(mean(rows, "val", "accuracy"), parameter_count(rows[0].params, channels), rows) for rows in configs]
    front = [
        p for p in points if not any(q[0] >= p[0] and q[1] <= p[1] and (q[0] > p[0] or q[1] < p[1]) for q in points)
    ]
    print(f"\n2. Pareto front of (val accuracy, params): {len(front)} of {len(points)} configurations")
    for acc, size, rows in sorted(front, key=lambda p: -p[0]):
        print(
            f"   val accuracy {acc:.4f}  params {size:>9,}  test accuracy {mean(rows, 'test', 'accuracy'):.4f}  "
            f"test FPR@5%FNR {mean(rows, 'test', 'fpr_at_5fnr'):.4f}"
        )
    accuracy = [mean(rows, "val", "accuracy") for rows in configs]
    fpr = [mean(rows, "val", "fpr_at_5fnr") for rows in configs]
    print(f"\ncorrelation of val accuracy and val FPR@5%FNR over the configurations: {_pearson(accuracy, fpr):+.2f}")


def _pearson(x: list[float], y: list[float]) -> float:
    mx, my = statistics.fmean(x), statistics.fmean(y)
    sxy = sum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    return sxy / (sum((a - mx) ** 2 for a in x) * sum((b - my) ** 2 for b in y)) ** 0.5


if __name__ == "__main__":
    main()
