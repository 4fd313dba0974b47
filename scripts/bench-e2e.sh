#!/usr/bin/env bash
# The end-to-end bench (issue 4's latency bar): event produced to Kafka -> the WebSocket frame
# that includes it, with 100 clients connected, at 20k events/s for 60 s by default.
# Builds what it needs, starts a Tansu broker the way scripts/test.sh does, runs
# benches/src/bin/e2e.rs against the real `warroom` binary, stops the broker.
# Usage: scripts/bench-e2e.sh [e2e args, e.g. --rate 20000 --seconds 60 --clients 100 --slo-p99-ms 1000]
#        scripts/bench-e2e.sh --profile double11 --rate 5000 --peak 8 --seconds 120
#        scripts/bench-e2e.sh --search --seconds 20 --clients 20     (the capacity search)
# The load comes from `warroom loadgen` (a child process). Exits non-zero when the p99 SLO is missed.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p warroom -p warroom-benches --bin warroom --bin e2e
B=$(scripts/kafka-broker.sh start)
trap 'scripts/kafka-broker.sh stop' EXIT
target/release/e2e --brokers "$B" --broker-pid "$(cat target/tansu.pid)" --warroom target/release/warroom "$@"
