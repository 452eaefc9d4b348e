#!/usr/bin/env bash
# Regenerates the README's capacity plan: `virtualfit plan` on the default profile (dmvton on an
# H100, assumed) and the step trace of tests/data, with its table and assets/plan/step-plan.png.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
out=$(mktemp -d)
./target/release/virtualfit plan --trace tests/data/step-trace.csv --p95 1 \
  --gpu-hour-price 4 --spot-price 1.6 --out "$out"
mkdir -p assets/plan
cp "$out/plot.png" assets/plan/step-plan.png
rm -rf "$out"
