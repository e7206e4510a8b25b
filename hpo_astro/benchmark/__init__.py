"""`hpo-astro benchmark`: strategies compared over repeated studies, with statistics that say what is significant.

Each strategy runs `repeats` independent studies, every one an ordinary resumable study in the store, named
`bench/<name>/<strategy>/seed-<seed>`. Seeds and pairing: repeat r of every strategy uses the study seed
`seed + r`, which seeds its sampler and its training, so repeat r of two strategies differs only by the strategy
(the same data split always; in training mode the same training seed; in tabular mode the same table). The paired
tests pair strategies by repeat. Re-training the top configurations uses the seeds after every repeat's
(`seed + repeats + j`), which trained nothing during the search.

Modules, one job each: `plan` (options, checks, the studies), `runner` (running studies and re-trainings, in this
process or K worker processes), `journal` (copying a finished in-memory study into a journal store in one write),
`collect` (the studies read back as plain records), `hypervolume` (a multi-objective study's score), `stats` (pure
statistics), `analysis` (what is compared with what), `render` (JSON, CSV, HTML), `pipeline` (all of it, in order).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from hpo_astro.benchmark.pipeline import BenchmarkResult, run_benchmark
    from hpo_astro.benchmark.plan import BenchmarkSpec

__all__ = ["BenchmarkResult", "BenchmarkSpec", "run_benchmark"]


def __getattr__(name: str) -> Any:
    """Imported when first used: a worker process imports `hpo_astro.benchmark.runner` without the statistics,
    plotting and rendering modules (seconds of start-up each)."""
    if name in ("BenchmarkResult", "run_benchmark"):
        from hpo_astro.benchmark import pipeline

        return getattr(pipeline, name)
    if name == "BenchmarkSpec":
        from hpo_astro.benchmark.plan import BenchmarkSpec

        return BenchmarkSpec
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
