"""The README's figures for operating-point and multi-objective studies on the shipped table, recomputed by the
script that states them (`scripts/objective_effects.py`): a change to the table or to the script that moves them
fails here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_figures_are_what_the_script_measures() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "objective_effects.py")], capture_output=True, text=True, check=True
    ).stdout
    readme = (ROOT / "README.md").read_text()
    assert "320 configurations, 960 runs" in out
    by_accuracy, by_fpr = (
        line.split()[-2:] for line in out.splitlines() if line.strip().startswith(("best val", "lowest val"))
    )
    assert by_accuracy == by_fpr == ["0.2314", "0.8699"]  # the same configuration, test FPR at 5% FNR 0.231
    assert "correlation of val accuracy and val FPR@5%FNR over the configurations: -0.82" in out
    assert "Pareto front of (val accuracy, params): 2 of 320 configurations" in out
    assert "val accuracy 0.8765  params 1,048,865  test accuracy 0.8699" in out
    assert "val accuracy 0.8601  params   228,353  test accuracy 0.8739" in out
    for claim in (
        "correlation -0.82",
        "test FPR at 5% FNR 0.231",
        "4.6x smaller",
        "228k against 1.05M",
        "1.6\n  points",
    ):
        assert claim in readme, claim
    assert re.search(r"for 1\.6\s+points of validation accuracy", readme)
