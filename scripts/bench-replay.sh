#!/usr/bin/env bash
# The engine issue's speed bar and memory check, measured in one run on this machine:
#  1. `warroom replay` over a 2M-event file (~340 MB) against the decode floor (a plain
#     single-threaded serde_json loop: parse, check required fields, sum paid amounts),
#     alternating runs, reporting each run and the median ratio; on the sparse night (6 h of
#     event time, 32 slots) and on the dense night (30 min, 400 slots);
#  2. peak RSS of replay for 1M, 2M and 4M events at the same event rate over a growing span,
#     with the same users and slots: it must not grow with the number of events.
# Usage: scripts/bench-replay.sh [WORKDIR]   (files are generated there once and reused)
set -euo pipefail
cd "$(dirname "$0")/.."
work=${1:-target/bench-data}
mkdir -p "$work"
cargo build --release -q -p warroom -p warroom-benches --bin warroom --bin decode-floor
bin=target/release
gen() { # events span file [slots-per-venue]
  [ -s "$3" ] || { echo "generating $3 ($1 events over $2)" >&2; "$bin/warroom" gen --events "$1" --span "$2" --users 200000 --slots-per-venue "${4:-8}" --out "$3"; }
}
ratio_runs() { # label file: 5 alternated floor/replay runs and the median ratio
  echo "$1: $(du -m "$2" | cut -f1) MB, $(wc -l < "$2") lines"
  local ratios=() i f s r ratio
  for i in 1 2 3 4 5; do
    f=$("$bin/decode-floor" "$2" | sed -E 's/.*"seconds":([0-9.]+).*/\1/')
    s=$( { /usr/bin/time -f "%e %M" "$bin/warroom" replay --quiet --input "$2" --snapshot-out "$2.snapshot.json"; } 2>&1 | tail -1)
    r=${s% *}
    ratio=$(python3 -c "print(f'{$r/$f:.3f}')")
    ratios+=("$ratio")
    echo "  run $i: floor ${f}s  replay ${r}s  ratio $ratio  (replay max RSS ${s#* } KB)"
  done
  echo "  median ratio replay/floor ($1): $(printf '%s\n' "${ratios[@]}" | sort -n | sed -n 3p)"
}
# The sparse night: 2M events over 6 h of event time (about 90 a second), 32 slots.
gen 2000000 6h "$work/2m.jsonl"
ratio_runs "sparse night" "$work/2m.jsonl"
# The dense night: 2M events in 30 min (about 1,100 a second of event time), 400 slots: the
# dedupe horizon and the 1-hour window hold every event at the end.
gen 2000000 30m "$work/2m-dense-400.jsonl" 100
ratio_runs "dense night" "$work/2m-dense-400.jsonl"
echo
echo "peak RSS vs number of events: a steady 333k events per hour of event time, 200k users, 32 slots"
printf '[engine]\norder_horizon = "1h"\n' > "$work/order-1h.toml"
for n in 1 2 4 8; do
  f="$work/flat-$n.jsonl"
  [ -s "$f" ] || "$bin/warroom" gen --profile flat --events "${n}000000" --span "$((n * 3))h" --users 200000 --out "$f" 2>/dev/null
  a=$( { /usr/bin/time -f "%M" "$bin/warroom" replay --quiet --input "$f" --snapshot-out "$work/x.json"; } 2>&1 | tail -1)
  b=$( { /usr/bin/time -f "%M" "$bin/warroom" replay --quiet --input "$f" --snapshot-out "$work/x.json" --config "$work/order-1h.toml"; } 2>&1 | tail -1)
  echo "${n}M events over $((n * 3))h: max RSS ${a} KB (default: orders kept 24 h), ${b} KB (orders kept 1 h)"
done
