#!/usr/bin/env bash
# Builds every fuzz target and runs each for N seconds (default 20): ./fuzz/run.sh [N]
# Fails on the first crash, leak, timeout or out-of-memory; the input is in fuzz/artifacts/<target>/.
# Stable Rust works through RUSTC_BOOTSTRAP=1 (cargo-fuzz needs -Z flags).
set -euo pipefail

secs="${1:-20}"
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1

targets=(stun_ufrag join_token control_message red_primary redis_records shard_datagram whip_offer loadtest_decoders control_plane_inputs realtime_frames location_frames music_file rtp_fast)

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

cargo fuzz build
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    echo "== $t (${secs}s)"
    log="target/fuzz-$t.log"
    mkdir -p target
    if ! cargo fuzz run "$t" -- -max_total_time="$secs" -timeout=10 -print_final_stats=1 \
        >"$log" 2>&1; then
        tail -n 60 "$log"
        echo "FAILED: $t (log: fuzz/$log)" >&2
        exit 1
    fi
    grep -E '^(Done|stat::number_of_executed_units|stat::peak_rss_mb)' "$log" || tail -n 3 "$log"
done
echo "all ${#targets[@]} targets ran ${secs}s without a crash"
