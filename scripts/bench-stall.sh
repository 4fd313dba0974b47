#!/usr/bin/env bash
# What a stall does to memory: a monitor at a steady rate is frozen (SIGSTOP) for a while, as
# if its host hung; its consumer is expelled from the group, rejoins and catches up. Prints
# the monitor's RSS every 10 s and before the freeze / after the catch-up. 1-minute horizons
# (benches/stall.toml) so the state is full before the freeze.
# Usage: scripts/bench-stall.sh [FREEZE_SECONDS=60] [RATE=2000]
#   extra environment for the monitor via MONITOR_ENV, e.g. MONITOR_ENV=GLIBC_TUNABLES=...
set -euo pipefail
cd "$(dirname "$0")/.."
freeze=${1:-60}; rate=${2:-2000}
cargo build --release -q -p warroom --bin warroom
W=target/release/warroom
B=$(scripts/kafka-broker.sh start)
dir=$(mktemp -d)
trap 'kill $mp $lp 2>/dev/null || true; scripts/kafka-broker.sh stop; rm -rf "$dir"' EXIT
topic=stall-$(date +%s)
at=130; total=$((at + freeze + 70))
env ${MONITOR_ENV:-} "$W" run --source kafka --listen 127.0.0.1:0 --brokers "$B" --topic "$topic" \
  --config benches/stall.toml --group "g-$topic" --state-dir "$dir/state" > "$dir/mon.log" 2>&1 &
mp=$!
sleep 4
"$W" loadgen --brokers "$B" --topic "$topic" --rate "$rate" --seconds "$total" --threads 2 --progress 0 > "$dir/lg.log" 2>&1 &
lp=$!
rss() { awk '/VmRSS/{print $2}' "/proc/$mp/status"; }
before=0
for t in $(seq 1 "$total"); do
  r=$(rss)
  [ $((t % 10)) = 0 ] && echo "t=${t}s monitor RSS ${r} kB$( [ "$t" -ge "$at" ] && [ "$t" -lt $((at + freeze)) ] && echo ' (frozen)')"
  if [ "$t" = "$at" ]; then before=$r; kill -STOP "$mp"; fi
  if [ "$t" = $((at + freeze)) ]; then kill -CONT "$mp"; fi
  sleep 1
done
after=$(rss)
echo "RSS before the ${freeze}s freeze: ${before} kB; at the end, after the catch-up: ${after} kB; rise $(( (after - before) / 1024 )) MB"
