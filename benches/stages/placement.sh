#!/usr/bin/env bash
# "Go or Rust?" (docs/stages.md): every stage of placement.toml, Go primary
# beside its Rust (and SQL) variants, on the same sample, with
# `sluice stage bench`. Starts the HTTP service the I/O-bound `scored` stage
# calls. The stages are release builds; the engine is whatever $SLUICE is
# (default the debug build: only the stages' own CPU is then comparable).
#
#   benches/stages/placement.sh [rows]        (default 500000)
set -euo pipefail
cd "$(dirname "$0")/../.."
rows="${1:-500000}"
sluice="${SLUICE:-target/debug/sluice}"
./scripts/build-stages --release
[ -x "$sluice" ] || cargo build --quiet
target/stages/go/scoresvc -addr 127.0.0.1:18089 -latency 5ms >/dev/null &
svc=$!
trap 'kill $svc' EXIT
sleep 0.5
for stage in valid enriched parsed scored; do
    echo "== $stage"
    "$sluice" stage bench benches/stages/placement.toml "$stage" --rows "$rows" "${@:2}"
done
