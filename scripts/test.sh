#!/usr/bin/env bash
# README command 2: install what the tests need, then run formatting and lint
# checks and the whole test suite (unit, integration with real cgroups,
# namespaces, overlayfs and containers). Needs root. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/taba-target}"
export TABA_IMAGE_DIR="${TABA_IMAGE_DIR:-/var/cache/taba/images}"
cargo fmt --all --check
cargo clippy --workspace --all-targets -- -D warnings
# The end-to-end tests run the real binary.
cargo build --bin taba
cargo test --workspace --no-fail-fast -- --test-threads=2
