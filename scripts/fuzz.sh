#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS each (default 60),
# with cargo-fuzz and libFuzzer on the installed stable toolchain
# (RUSTC_BOOTSTRAP=1 lets stable take the flags cargo-fuzz passes).
# Exits non-zero if any target finds a crash, a leak of time (timeout) or
# memory (rss limit); the input is in fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh              every target, 60 s each
#   scripts/fuzz.sh 300 job_spec one target, 5 minutes
#
# New inputs the fuzzer finds go to fuzz/work/<target>/ (not committed); the
# seeds in fuzz/corpus/<target>/ are read, never written. To keep a crash as
# a regression, copy it into fuzz/corpus/<target>/ with a name that says what
# it is: `cargo test -p taba-fuzz` replays it on stable.
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH="${1:-60}"
shift || true
[[ "$SECONDS_EACH" =~ ^[0-9]+$ ]] || { echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2; exit 2; }
ALL=(job_spec image_reference layer_unpack image_manifest agent_message)
TARGETS=("${@:-${ALL[@]}}")
export RUSTC_BOOTSTRAP=1
TARGET_DIR="$(realpath -m "${FUZZ_TARGET_DIR:-fuzz/target}")"
# Jobs for libFuzzer's own workers; the machine's cores are shared.
JOBS="${FUZZ_JOBS:-1}"
PAR=()
((JOBS > 1)) && PAR=(-jobs="$JOBS" -workers="$JOBS")

command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# -O with -a: optimised, with debug assertions and overflow checks (as the
# replay tests run). No sanitizer: the code is safe Rust; a panic is the crash.
BUILD=(-O -a -s none --target-dir "$TARGET_DIR")

MOUNTED=""
FUZZ_TMP=""
cleanup() {
  if [ -n "$MOUNTED" ]; then umount "$MOUNTED" || umount -l "$MOUNTED"; MOUNTED=""; fi
  if [ -n "$FUZZ_TMP" ]; then rm -rf "$FUZZ_TMP"; FUZZ_TMP=""; fi
}
trap cleanup EXIT

failed=()
for t in "${TARGETS[@]}"; do
  mkdir -p "fuzz/work/$t" "fuzz/artifacts/$t"
  # The targets' scratch dirs: as root a small tmpfs of its own (fast, and a
  # decompression bomb meets ENOSPC instead of filling the disk), removed
  # after the run even if it was killed.
  FUZZ_TMP="$PWD/fuzz/work/tmp-$t"
  rm -rf "$FUZZ_TMP" && mkdir -p "$FUZZ_TMP"
  if [ "$(id -u)" = 0 ]; then
    mount -t tmpfs -o size=512m,mode=0700 "taba-fuzz-$t-$$" "$FUZZ_TMP"
    MOUNTED="$FUZZ_TMP"
  fi
  export TMPDIR="$FUZZ_TMP"
  echo "fuzz: $t for ${SECONDS_EACH}s"
  # Built (again, if the sources changed) before the clock starts.
  (cd fuzz && cargo fuzz build "${BUILD[@]}" "$t")
  # timeout(1) bounds a hung run beyond libFuzzer's own -max_total_time.
  rc=0
  (cd fuzz && timeout --kill-after=30 "$((SECONDS_EACH + 120))" \
        cargo fuzz run "${BUILD[@]}" "$t" "work/$t" "corpus/$t" -- \
        -max_total_time="$SECONDS_EACH" -timeout=10 -rss_limit_mb=2048 \
        -max_len=65536 "${PAR[@]}" -print_final_stats=1 \
        -artifact_prefix="artifacts/$t/") || rc=$?
  if ((rc == 124 || rc == 137)); then
    echo "fuzz: $t did not stop within $((SECONDS_EACH + 120))s" >&2
    failed+=("$t")
  elif ((rc != 0)); then
    failed+=("$t")
  fi
  cleanup
done
if ((${#failed[@]})); then
  echo "fuzz: failures in ${failed[*]}; inputs in fuzz/artifacts/<target>/" >&2
  exit 1
fi
echo "fuzz: ok (${TARGETS[*]}, ${SECONDS_EACH}s each)"
