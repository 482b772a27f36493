#!/usr/bin/env bash
# The scheduler's scale benchmark (BENCHMARKS.md, "Scheduler"): `taba sim` at
# 1,000, 10,000 and 50,000 nodes with 100 tasks per node, with every
# placement feature in use and plain, then the rebalancing scenario. Prints one Markdown table row per run.
# Usage: scripts/bench-sim.sh [SEED]
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/taba-target}"
cargo build --release --bin taba >&2
taba="$CARGO_TARGET_DIR/release/taba"
seed="${1:-1}"
echo "| nodes | tasks | seconds | placements/s | eval p50 / p99 ms | nodes used / lower bound | RSS |"
echo "| --- | --- | --- | --- | --- | --- | --- |"
# Each size twice: the workload with every placement feature (the default)
# and `--plain` (resources and constraints only), side by side.
for nodes in 1000 10000 50000; do
 for plain in "" --plain; do
  tasks=$((nodes * 100))
  out="$("$taba" sim --nodes "$nodes" --tasks "$tasks" --seed "$seed" $plain)"
  last="$(tail -n1 <<<"$out")"
  lat="$(grep -o 'p50=[0-9.]* p99=[0-9.]*' <<<"$out")"
  get() { grep -o "$1=[0-9.]*" <<<"$last" | cut -d= -f2; }
  used="$(get nodes_used)"; lb="$(get lower_bound)"
  ratio="$(awk -v u="$used" -v l="$lb" 'BEGIN { printf "%.3f", u / l }')"
  p50="$(cut -d' ' -f1 <<<"$lat" | cut -d= -f2)"; p99="$(cut -d' ' -f2 <<<"$lat" | cut -d= -f2)"
  echo "| $nodes ${plain:-features} | $tasks | $(get seconds) | $(get placements_per_s) | $p50 / $p99 | $used / $lb = $ratio | $(get rss_mib) MiB |"
 done
done
echo
"$taba" sim --nodes 1000 --tasks 50000 --seed "$seed" --scenario rebalance --rounds 200 | grep '^rebalance'
