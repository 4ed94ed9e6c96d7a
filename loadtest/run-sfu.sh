#!/usr/bin/env bash
# One command for the README's SFU figures: builds release binaries, starts `convoy dev` with one
# media core pinned to CPU 1, runs `loadtest sfu` pinned to CPU 0 with the arguments given here,
# stops the node, and exits with the load test's status (0 pass, 1 a threshold failed, 2 error).
#
#   bash loadtest/run-sfu.sh --rooms 20 --speakers 3 --listeners 20 --duration 10
set -euo pipefail
cd "$(dirname "$0")/.."
# CONVOY_BIN: another build of the node to measure (an A/B comparison), instead of this tree's.
# NODE_LOG: where the node's log goes (default: a temporary folder, printed if it fails to start).
# RT_PRIORITY: SCHED_FIFO priority of the node's media core and the generator's packet thread
# (default 10 when run as root; empty: normal priority). Without it the machine's housekeeping
# threads (kdamond here: up to 4.5 ms at a time) now and then preempt either side.
NODE_CPU=${NODE_CPU:-1}
LOAD_CPU=${LOAD_CPU:-0}
if [ "$(id -u)" = 0 ]; then RT_PRIORITY=${RT_PRIORITY-10}; else RT_PRIORITY=${RT_PRIORITY-}; fi
rt=()
if [ -n "$RT_PRIORITY" ]; then rt=(--realtime-priority "$RT_PRIORITY"); fi

cargo build --release --quiet --bin convoy
cargo build --release --quiet -p loadtest --bin loadtest
data=$(mktemp -d)
log="${NODE_LOG:-$data/node.log}"
taskset -c "$NODE_CPU" "${CONVOY_BIN:-target/release/convoy}" dev --cores 1 "${rt[@]}" --data-dir "$data/db" >"$log" 2>&1 &
node=$!
stop() {
  kill -INT "$node" 2>/dev/null || true
  # A second signal skips draining.
  sleep 1
  kill -INT "$node" 2>/dev/null || true
  wait "$node" 2>/dev/null || true
}
trap stop EXIT
ready=""
for _ in $(seq 100); do
  if curl -sf http://127.0.0.1:8090/readyz >/dev/null && curl -sf http://127.0.0.1:8080/readyz >/dev/null; then
    ready=yes
    break
  fi
  if ! kill -0 "$node" 2>/dev/null; then break; fi
  sleep 0.1
done
if [ -z "$ready" ]; then
  echo "the node did not become ready; its log:" >&2
  cat "$log" >&2
  exit 2
fi
status=0
target/release/loadtest sfu --cpu "$LOAD_CPU" "${rt[@]}" "$@" || status=$?
exit "$status"
