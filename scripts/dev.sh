#!/usr/bin/env bash
# README command 1: build taba, start `taba dev` in the background, import the
# sample busybox image and run the sample job. Idempotent: a running `taba dev`
# is reused and the unchanged job is not re-deployed.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/taba-target}"
cargo build --release --bin taba
TABA="$CARGO_TARGET_DIR/release/taba"
install -m 0755 "$TABA" /usr/local/bin/taba

DATA="${TABA_DEV_DATA:-/var/lib/taba-dev}"
ADDR="${TABA_DEV_HTTP:-127.0.0.1:4646}"
export TABA_ADDR="http://$ADDR"
mkdir -p "$DATA"
if ! taba node list >/dev/null 2>&1; then
  echo "dev: starting taba dev (data $DATA, API $TABA_ADDR, log $DATA/taba-dev.log)"
  setsid nohup taba dev --data-dir "$DATA" --http "$ADDR" >>"$DATA/taba-dev.log" 2>&1 </dev/null &
  echo $! >"$DATA/taba-dev.pid"
fi
for _ in $(seq 1 100); do
  taba node list --json 2>/dev/null | grep -q '"ready"' && break
  sleep 0.1
done
taba node list
taba image import "${TABA_IMAGE_DIR:-/var/cache/taba/images}/busybox.tar"
taba job run examples/hello.toml
cat <<MSG

taba dev is running (pid $(cat "$DATA/taba-dev.pid" 2>/dev/null || echo '?'), API $TABA_ADDR).
Try:   taba job status hello
       taba alloc exec <alloc-id> -- wget -qO- http://127.0.0.1:8080/passwd
       taba alloc logs <alloc-id>
Stop:  kill \$(cat $DATA/taba-dev.pid)   (workloads keep running; 'taba job stop hello' stops them)
MSG
