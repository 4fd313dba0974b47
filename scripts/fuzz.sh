#!/usr/bin/env bash
# Fuzzing (libFuzzer): builds the targets of fuzz/ with libFuzzer's coverage instrumentation
# on the stable toolchain (the flags cargo-fuzz passes, without a sanitizer, which needs
# nightly; like cargo-fuzz's default, a release build: overflow wraps as in production, where
# the targets' own checks catch wrong numbers) and runs each for SECONDS over its corpus: fuzz/corpus/TARGET (committed: the
# seeds) and target/fuzz/corpus/TARGET (what this machine found). A crash or a failed check
# stops it non-zero; the input is left in target/fuzz/artifacts/TARGET/ (reproduce: run the
# target binary with that file as its argument; add it to fuzz/corpus/TARGET with the fix).
# Targets: decode (the event decoder against serde_json), ws_subscribe (a WebSocket client's
# message through to the views it may see), checkpoint (the checkpoint loader).
# Usage: scripts/fuzz.sh [SECONDS=60] [TARGET...]
#        scripts/fuzz.sh ci   (what scripts/test.sh runs: a fixed seed and number of runs per
#                              target, so a CI run is repeatable; ~1 minute with the build)
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
ci=
if [ "$secs" = ci ]; then ci=1; secs=0; fi
targets=("$@")
if [ ${#targets[@]} = 0 ]; then targets=(decode ws_subscribe checkpoint); fi
host=$(rustc -vV | sed -n 's/^host: //p')
# --target: the flags must not reach build scripts and proc macros (as cargo-fuzz does).
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing" \
  cargo build --release --locked --manifest-path fuzz/Cargo.toml --target "$host" --target-dir target/fuzz
for t in "${targets[@]}"; do
  case "$t" in
    checkpoint) max_len=131072; runs=60000 ;;
    decode) max_len=8192; runs=2000000 ;;
    *) max_len=4096; runs=2000000 ;;
  esac
  if [ -n "$ci" ]; then
    # Only the committed corpus, a fixed seed and a fixed number of runs: the same inputs each time.
    limit=(-seed=1 -runs="$runs")
    corpora=("target/fuzz/ci-corpus/$t" "fuzz/corpus/$t")
    rm -rf "target/fuzz/ci-corpus/$t"
    mkdir -p "target/fuzz/ci-corpus/$t"
  else
    limit=(-max_total_time="$secs")
    corpora=("target/fuzz/corpus/$t" "fuzz/corpus/$t")
  fi
  rm -rf "target/fuzz/artifacts/$t"
  mkdir -p "target/fuzz/corpus/$t" "target/fuzz/artifacts/$t"
  log="target/fuzz/$t.log"
  echo "fuzz $t: ${limit[*]} (corpus: fuzz/corpus/$t, $(ls "fuzz/corpus/$t" | wc -l) seeds)"
  rc=0
  "target/fuzz/$host/release/$t" "${limit[@]}" -max_len="$max_len" -timeout=10 -rss_limit_mb=2048 \
    -print_final_stats=1 -artifact_prefix="target/fuzz/artifacts/$t/" "${corpora[@]}" > "$log" 2>&1 || rc=$?
  grep -E "^stat::(number_of_executed_units|new_units_added)|^Done [0-9]+ runs" "$log" | sed "s/^/  /" || true
  if [ "$rc" != 0 ]; then
    grep -E "panicked|assert|ERROR|SUMMARY|Test unit written|deadly signal" "$log" | head -20 >&2 || true
    echo "fuzz $t: FAILED (exit $rc); the input is in target/fuzz/artifacts/$t/, the log in $log" >&2
    exit 1
  fi
done
