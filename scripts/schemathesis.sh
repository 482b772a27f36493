#!/usr/bin/env bash
# Runs schemathesis (every check) against a live `taba server` built from
# this tree, inside a network namespace of its own with only loopback: the
# API is reached on 127.0.0.1 and nothing the generated requests make the
# server do (a registry pull for a job's image) leaves the machine.
#
#   scripts/schemathesis.sh [TABA_BIN] [MAX_EXAMPLES]
#
# Exit status: schemathesis's (0: no failure). Needs root (unshare) and the
# venv scripts/setup.sh makes (/var/cache/taba/schemathesis).
set -euo pipefail
cd "$(dirname "$0")/.."

TABA="${1:-${CARGO_TARGET_DIR:-target}/debug/taba}"
MAX_EXAMPLES="${2:-${TABA_SCHEMATHESIS_EXAMPLES:-25}}"
ST="${TABA_SCHEMATHESIS:-/var/cache/taba/schemathesis/bin/st}"
[ -x "$ST" ] || { echo "schemathesis: $ST is missing; run scripts/setup.sh" >&2; exit 2; }
[ -x "$TABA" ] || { echo "schemathesis: $TABA is missing; cargo build --bin taba" >&2; exit 2; }

if [ "${TABA_IN_NETNS:-}" != 1 ]; then
  exec unshare --net env TABA_IN_NETNS=1 "$0" "$TABA" "$MAX_EXAMPLES"
fi
ip link set lo up

DIR="$(mktemp -d /var/tmp/taba-schemathesis.XXXXXX)"
SERVER_PID=
cleanup() {
  [ -n "$SERVER_PID" ] && kill "$SERVER_PID" 2>/dev/null && wait "$SERVER_PID" 2>/dev/null
  rm -rf "$DIR"
}
trap cleanup EXIT

cat >"$DIR/server.toml" <<EOF
data_dir = "$DIR/data"
http = "127.0.0.1:0"
# Generated blocking queries ask for indexes far ahead: keep their waits short.
max_blocking_wait = "1s"
EOF
"$TABA" server --config "$DIR/server.toml" 2>"$DIR/server.log" &
SERVER_PID=$!
ADDR=
for _ in $(seq 1 300); do
  ADDR="$(grep -o 'API on [^ ]*' "$DIR/server.log" | head -1 | cut -d' ' -f3 || true)"
  [ -n "$ADDR" ] && break
  kill -0 "$SERVER_PID" 2>/dev/null || { cat "$DIR/server.log" >&2; exit 2; }
  sleep 0.1
done
[ -n "$ADDR" ] || { echo "schemathesis: the server did not start" >&2; cat "$DIR/server.log" >&2; exit 2; }
case "$ADDR" in http*) ;; *) ADDR="http://$ADDR" ;; esac
TOKEN="$(TABA_ADDR="$ADDR" "$TABA" acl bootstrap --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["secret"])')"

# Every check, a bounded number of examples per operation. Excluded: the
# WebSocket routes (no HTTP reply to check), the event stream (never ends),
# the agent routes (agent credentials), bootstrap (done above), and the
# routes that stream a body of their own (checked by their own tests).
status=0
"$ST" --config-file schemathesis.toml run "$ADDR/v1/openapi.json" \
  --header "Authorization: Bearer $TOKEN" \
  --checks all \
  --max-examples "$MAX_EXAMPLES" \
  --workers 2 \
  --request-timeout 20 \
  --no-color \
  --exclude-path-regex '^/v1/(agent/|event/stream|acl/bootstrap|allocations/\{id\}/(console|logs)|registry/(pull|push)|image-save|metrics|openapi\.json)' \
  --exclude-operation-id get_allocations_id_exec \
  --exclude-operation-id post_images \
  || status=$?
if [ "$status" != 0 ]; then
  echo "--- server log (tail)" >&2
  tail -50 "$DIR/server.log" >&2
fi
exit "$status"
