#!/usr/bin/env bash
# Reproduce the paper: its four studies (random, ablation, genetic, Bayesian: studies/paper-*.toml), then the final
# table (`hpo-astro compare`) and the HTML report with its figures (`hpo-astro report`).
#
#   scripts/reproduce_paper.sh          the full protocol (100 + 47 + 100 + 100 trials of up to t_max epochs) on the
#                                       default simulated set, into sqlite:///paper.db; writes reports/paper/
#   scripts/reproduce_paper.sh --quick  scaled down to run in minutes, into sqlite:///paper-quick.db; writes
#                                       reports/paper-quick/. Scaled down: a 600-cutout simulated set; the paper's
#                                       space without batch sizes 4 and 16 (their many small steps dominate the run
#                                       time); 12 trials of at most 2 epochs for random, genetic and Bayesian (just
#                                       past the genetic first generation and the GP's 10 random start-up trials);
#                                       the whole ablation plan (45 trials in this space) at 1 epoch each.
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
start=$SECONDS

if ((quick)); then
  store="sqlite:///paper-quick.db"
  out="reports/paper-quick"
  data="$out/sim-600.npy"
  mkdir -p "$out/studies"
  [ -f "$data" ] || "${hpo[@]}" data synth --out "$data" --n 600 --seed 0
  for name in "${names[@]}"; do # the paper's study files, with the narrowed space
    {
      cat "studies/paper-$name.toml"
      cat << 'TOML'

[space] # reproduce_paper.sh --quick: the paper's space without batch sizes 4 and 16
conv_layers = [1, 2, 3, 4]
conv_kernel_size = [3, 5, 7]
fc_layers = [1, 2, 3, 4, 5]
fc_width = [32, 64, 128, 256]
normalization = ["None", "BatchNorm", "LayerNorm"]
activation = ["ReLU", "LeakyReLU", "GELU", "Tanh"]
dropout_rate = [0.0, 0.05, 0.1, 0.2, 0.3]
lr = [1e-1, 1e-2, 1e-3, 1e-4]
weight_decay = [1e-2, 1e-3, 1e-4, 1e-5]
batch_size = [64, 256]
t_max = [10, 25, 50, 100]
early_stop_patience = [3, 5, 10]
TOML
    } > "$out/studies/paper-$name.toml"
  done
  config_dir="$out/studies"
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
  config_dir="studies"
  declare -A extra=([random]="" [ablation]="" [genetic]="" [bayesian]="")
  common=()
fi

for name in "${names[@]}"; do
  echo "== paper-$name"
  # shellcheck disable=SC2086  # the per-study options are meant to split into words
  "${hpo[@]}" run --config "$config_dir/paper-$name.toml" --storage "$store" "${common[@]}" ${extra[$name]}
done
echo "== final table and report"
"${hpo[@]}" compare --storage "$store" "${studies[@]}" --format markdown --out "$out/table.md"
"${hpo[@]}" compare --storage "$store" "${studies[@]}"
"${hpo[@]}" report --storage "$store" "${studies[@]}" --out "$out"
elapsed=$((SECONDS - start))
printf 'done in %dh %02dm %02ds: %s/table.md and %s/index.html\n' \
  $((elapsed / 3600)) $((elapsed % 3600 / 60)) $((elapsed % 60)) "$out" "$out"
