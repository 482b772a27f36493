#!/usr/bin/env bash
# Times image distribution: a real `taba server` and a real `taba agent` (separate data and
# image dirs, loopback), busybox imported into the server only; each run starts an agent
# with an empty image store and runs one container job, so the agent fetches the image.
# Prints, per run, the fetch time the agent reports (manifest asked -> image committed) and
# job run -> task started. Needs root and Debian's busybox-static.
#
#   cargo build --release --bin taba
#   scripts/bench-image-fetch.sh [RUNS] [TABA_BINARY]
set -euo pipefail
runs=${1:-5}
taba=${2:-target/release/taba}
[ -x "$taba" ] || { echo "no taba binary at $taba" >&2; exit 2; }
here=$(cd "$(dirname "$0")" && pwd)
root=$(mktemp -d /var/tmp/taba-bench-imagefetch.XXXXXX)
tar=$root/busybox.tar
bash "$here/build-busybox-image.sh" "$tar" >/dev/null 2>&1 || { echo "building the busybox image failed (needs busybox-static)" >&2; exit 1; }
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  grep " $root" /proc/self/mountinfo | awk '{print $5}' | sort -r | xargs -r -n1 umount -l 2>/dev/null || true
  rm -rf "$root"
}
trap cleanup EXIT

# Starts `taba ARGS...` with its stderr in LOG and waits for a line matching MARK.
start() {
  local log=$1 mark=$2; shift 2
  "$taba" "$@" 2>"$log" & pids+=($!)
  for _ in $(seq 100); do grep -q "$mark" "$log" && return 0; sleep 0.1; done
  echo "taba $* did not start:" >&2; cat "$log" >&2; exit 1
}

printf 'data_dir = "%s/server"\nhttp = "127.0.0.1:0"\n' "$root" >"$root/server.toml"
start "$root/server.log" "API on http://" server --config "$root/server.toml"
addr=$(grep -o 'API on http://[0-9.:]*' "$root/server.log" | head -1 | sed 's|API on http://||')
export TABA_ADDR=$addr
"$taba" image import "$tar" >/dev/null

echo "run  fetch_ms  job_run_to_started_ms  event"
for i in $(seq "$runs"); do
  a=$root/agent$i
  printf 'data_dir = "%s"\nserver = "http://%s"\nhttp = "127.0.0.1:0"\nname = "fetch-%s"\n' "$a" "$addr" "$i" >"$root/agent$i.toml"
  start "$root/agent$i.log" "taba agent: node" agent --config "$root/agent$i.toml"
  for _ in $(seq 100); do "$taba" node list 2>/dev/null | grep -q "fetch-$i.*ready" && break; sleep 0.1; done
  cat >"$root/job$i.toml" <<JOB
name = "fetch$i"
[[group]]
name = "g"
constraint = [{ attribute = "\${node.name}", operator = "==", value = "fetch-$i" }]
  [[group.task]]
  name = "t"
  driver = "container"
  image = "busybox:latest"
  command = ["sleep", "3600"]
  resources = { cpu = 50, memory = "32MiB" }
JOB
  t0=$(date +%s%3N)
  "$taba" job run --detach "$root/job$i.toml" >/dev/null
  alloc=""
  for _ in $(seq 300); do
    alloc=$("$taba" --json job status "fetch$i" | jq -r '.allocations[] | select(.status=="running") | .id' | head -1)
    [ -n "$alloc" ] && break; sleep 0.05
  done
  [ -n "$alloc" ] || { echo "run $i: not running" >&2; cat "$root/agent$i.log" >&2; exit 1; }
  detail=$("$taba" --json alloc status "$alloc")
  started=$(jq -r '.allocation.task_states.t.started_at' <<<"$detail")
  msg=$(jq -r '.allocation.task_states.t.events[] | select(.kind=="Image Fetched") | .message' <<<"$detail")
  ms=$(grep -o 'in [0-9]* ms' <<<"$msg" | grep -o '[0-9]*')
  echo "$i    $ms    $((started - t0))    $msg"
  "$taba" job stop "fetch$i" >/dev/null
  for _ in $(seq 200); do
    "$taba" --json job status "fetch$i" | jq -e '[.allocations[] | select(.status=="running" or .status=="pending")] | length == 0' >/dev/null && break
    sleep 0.1
  done
  kill "${pids[-1]}"; wait "${pids[-1]}" 2>/dev/null || true; unset 'pids[-1]'
done
