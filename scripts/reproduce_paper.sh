#!/usr/bin/env bash
# Reproduce the paper: its four studies (random, ablation, genetic, Bayesian: studies/paper-*.toml), then the final
# table (`hpo-astro compare`) and the HTML report with its figures (`hpo-astro report`).
#
#   scripts/reproduce_paper.sh          the full protocol (100 + 47 + 100 + 100 trials, up to t_max epochs each) on
#                                       the default simulated set, into sqlite:///paper.db; writes reports/paper/
#   scripts/reproduce_paper.sh --quick  scaled down to run in minutes, into sqlite:///paper-quick.db; writes
#                                       reports/paper-quick/: a smaller simulated set (900 cutouts), 12 trials of at
#                                       most 2 epochs for random, genetic and Bayesian (just past the genetic first
#                                       generation and the GP's 10 random start-up trials), and all 47 ablation
#                                       trials at 1 epoch each
#
# Each writes table.md (the paper's final table, in Markdown) and index.html (the report) in its reports/ folder.
# Re-running resumes: every study stops at its budget and compare's evaluations are cached in the store.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
for arg in "$@"; do
  case "$arg" in
    --quick) quick=1 ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    *)
      echo "error: unknown argument '$arg' (use --quick or --help)" >&2
      exit 2
      ;;
  esac
done

if command -v hpo-astro > /dev/null 2>&1; then
  hpo=(hpo-astro)
elif [ -x .venv/bin/hpo-astro ]; then
  hpo=(.venv/bin/hpo-astro)
else
  echo "error: hpo-astro is neither on PATH nor in .venv/bin; install it first (see README)" >&2
  exit 2
fi

names=(random ablation genetic bayesian)
studies=()
for name in "${names[@]}"; do studies+=(--study "paper-$name"); done

if ((quick)); then
  store="sqlite:///paper-quick.db"
  out="reports/paper-quick"
  data="$out/sim-900.npy"
  mkdir -p "$out"
  [ -f "$data" ] || "${hpo[@]}" data synth --out "$data" --n 900 --seed 0
  declare -A extra=(
    [random]="--n-trials 12 --max-epochs 2"
    [ablation]="--max-epochs 1"
    [genetic]="--n-trials 12 --max-epochs 2"
    [bayesian]="--n-trials 12 --max-epochs 2"
  )
  common=(--data "$data")
else
  store="sqlite:///paper.db"
  out="reports/paper"
  declare -A extra=([random]="" [ablation]="" [genetic]="" [bayesian]="")
  common=()
fi

start=$SECONDS
for name in "${names[@]}"; do
  echo "== paper-$name"
  # shellcheck disable=SC2086  # the per-study options are meant to split into words
  "${hpo[@]}" run --config "studies/paper-$name.toml" --storage "$store" "${common[@]}" ${extra[$name]}
done
echo "== final table and report"
"${hpo[@]}" compare --storage "$store" "${studies[@]}" --format markdown --out "$out/table.md"
"${hpo[@]}" compare --storage "$store" "${studies[@]}"
"${hpo[@]}" report --storage "$store" "${studies[@]}" --out "$out"
elapsed=$((SECONDS - start))
printf 'done in %dh %02dm %02ds: %s/table.md and %s/index.html\n' \
  $((elapsed / 3600)) $((elapsed % 3600 / 60)) $((elapsed % 60)) "$out" "$out"
