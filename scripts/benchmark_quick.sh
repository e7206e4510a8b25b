#!/usr/bin/env bash
# A quick benchmark in tabular mode: every strategy, 20 paired repeats of 15 trials each, every trial answered from a
# small table instead of training. The table is the shipped `astro-small` when the package has it; else a
# 32-configuration table is tabulated here first, once (600 simulated cutouts, 3 epochs per configuration), into
# OUT/table/. Re-running resumes whatever was interrupted; a finished run only re-renders the report.
#
#   scripts/benchmark_quick.sh [OUT]          # default OUT: benchmark-quick; open OUT/index.html
#
# Environment: STRATEGIES, REPEATS, N_TRIALS, WORKERS (benchmark processes), TABLE (a table name or file to use
# instead), HPO (the hpo-astro executable; default .venv/bin/hpo-astro of this checkout).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
HPO=${HPO:-$ROOT/.venv/bin/hpo-astro}
PYTHON=$(dirname "$HPO")/python
OUT=${1:-benchmark-quick}
STRATEGIES=${STRATEGIES:-random,ablation,genetic,bayesian,tpe}
REPEATS=${REPEATS:-20}
N_TRIALS=${N_TRIALS:-15}
WORKERS=${WORKERS:-1}
start=$(date +%s)

if [[ -z "${TABLE:-}" ]]; then
    if "$PYTHON" -c "import sys; from hpo_astro.tabular import shipped_tables; sys.exit('astro-small' not in shipped_tables())"; then
        TABLE=astro-small
    else
        # No shipped table: tabulate a small one (conv_layers x lr x activation x batch_size = 32 configurations).
        mkdir -p "$OUT/table"
        [[ -f "$OUT/table/sim.npz" ]] || "$HPO" data synth --out "$OUT/table/sim.npz" --n 600 --seed 0
        cat > "$OUT/table/space.toml" <<'EOF'
[space]
conv_layers = [1, 2]
lr = [1e-1, 1e-2, 1e-3, 1e-4]
activation = ["ReLU", "Tanh"]
batch_size = [64, 256]
EOF
        if [[ ! -f "$OUT/table/quick.json" ]]; then
            "$HPO" tabulate --out quick --space "$OUT/table/space.toml" --data "$OUT/table/sim.npz" --max-epochs 3 \
                --storage "sqlite:///$OUT/table/tables.db" --json "$OUT/table/quick.json" --workers 2
        fi
        TABLE=$OUT/table/quick.json
        echo "tabulated in $(( $(date +%s) - start )) s"
    fi
fi

bench_start=$(date +%s)
"$HPO" benchmark --strategies "$STRATEGIES" --repeats "$REPEATS" --n-trials "$N_TRIALS" --table "$TABLE" \
    --workers "$WORKERS" --out "$OUT"
echo "benchmark in $(( $(date +%s) - bench_start )) s, $(( $(date +%s) - start )) s in all; open $OUT/index.html"
