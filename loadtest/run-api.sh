#!/usr/bin/env bash
# One command for the README's control-plane figures: builds release binaries, creates a fresh
# PostgreSQL database, starts `convoy control-plane` on it pinned to CPU 1 (trusting 127.0.0.1 as
# a proxy so each load sign-in counts as its own address), runs `loadtest api` pinned to CPU 0
# with the arguments given here, then stops the server and drops the database. Exits with the
# load test's status (0 pass, 1 a threshold failed, 2 error).
#
#   bash loadtest/run-api.sh --members 50 --rate 2000 --duration 10
#
# PG_ADMIN_URL (default postgres://postgres@127.0.0.1:5432/postgres) is where the database is
# created; REDIS_URL, when set, is passed to the control plane.
set -euo pipefail
cd "$(dirname "$0")/.."
SERVER_CPU=${SERVER_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
PG_ADMIN_URL=${PG_ADMIN_URL:-postgres://postgres@127.0.0.1:5432/postgres}
PORT=${PORT:-8180}

cargo build --release --quiet --bin convoy
cargo build --release --quiet -p loadtest --bin loadtest
db="convoy_loadtest_$(date +%s)_$$"
psql "$PG_ADMIN_URL" -qc "CREATE DATABASE $db"
if [ -n "${SYNCHRONOUS_COMMIT:-}" ]; then
  psql "$PG_ADMIN_URL" -qc "ALTER DATABASE $db SET synchronous_commit = $SYNCHRONOUS_COMMIT"
fi
database_url="${PG_ADMIN_URL%/*}/$db"
data=$(mktemp -d)
log="$data/control-plane.log"
extra=()
if [ -n "${REDIS_URL:-}" ]; then extra+=(--redis-url "$REDIS_URL"); fi
RUST_LOG=${RUST_LOG:-warn} taskset -c "$SERVER_CPU" target/release/convoy control-plane \
  --listen "127.0.0.1:$PORT" --database-url "$database_url" \
  --signing-key-file "$data/signing.key" --data-key-file "$data/data.key" \
  --trusted-proxies 127.0.0.1 "${extra[@]}" >"$log" 2>&1 &
server=$!
stop() {
  kill -INT "$server" 2>/dev/null || true
  wait "$server" 2>/dev/null || true
  psql "$PG_ADMIN_URL" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" || true
  rm -rf "$data"
}
trap stop EXIT
ready=""
for _ in $(seq 200); do
  if curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null; then ready=yes; break; fi
  if ! kill -0 "$server" 2>/dev/null; then break; fi
  sleep 0.1
done
if [ -z "$ready" ]; then
  echo "the control plane did not become ready; its log:" >&2
  cat "$log" >&2
  exit 2
fi
status=0
target/release/loadtest api --cpu "$LOAD_CPU" --base "http://127.0.0.1:$PORT" "$@" || status=$?
exit "$status"
