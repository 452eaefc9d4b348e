#!/usr/bin/env bash
# Reproduces the performance table of benches/README.md on this machine.
#
#   benches/perf.sh                                                   # overlay
#   MODEL=dmvton MODEL_DIR=tests/fixtures/dmvton ITERATIONS=10 benches/perf.sh  # dmvton
#
# It needs a release build (`cargo build --release`) and writes every report under
# target/perf/<model>/. Each server runs alone, one after the other, on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

BIN=${BIN:-target/release/virtualfit}
MODEL=${MODEL:-overlay}
MODEL_DIR=${MODEL_DIR:-}
DEVICE=${DEVICE:-cpu}
DATA=${DATA:-assets/samples}
OUT=${OUT:-target/perf/$MODEL}
DURATION=${DURATION:-10s}
WARMUP=${WARMUP:-2s}
SATURATION=${SATURATION:-16}
ITERATIONS=${ITERATIONS:-200}
SWEEP=${SWEEP:-1,2,4,8,16}
PORT=${PORT:-18400}
URL=http://127.0.0.1:$PORT

mkdir -p "$OUT"
model_flags=(--model "$MODEL" --device "$DEVICE")
if [ -n "$MODEL_DIR" ]; then model_flags+=(--model-dir "$MODEL_DIR"); fi

SERVER=
serve() { # max batch size
  "$BIN" serve --bind "127.0.0.1:$PORT" "${model_flags[@]}" --max-batch-size "$1" \
    >"$OUT/serve-b$1.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 1 1200); do
    if curl -sf "$URL/readyz" >/dev/null; then return 0; fi
    sleep 0.1
  done
  echo "the server did not become ready; see $OUT/serve-b$1.log" >&2
  exit 1
}
stop() {
  kill -TERM "$SERVER"
  wait "$SERVER" || true
}
trap '[ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null || true' EXIT

http() { # report name, then load flags
  local name=$1
  shift
  echo "== $name" >&2
  "$BIN" bench http --url "$URL" --data "$DATA" --duration "$DURATION" --warmup "$WARMUP" \
    --json "$OUT/$name.json" "$@" | tee "$OUT/$name.txt" >&2
}

echo "load before: $(cut -d' ' -f1-3 /proc/loadavg)" | tee "$OUT/load.txt" >&2

serve 8
http c1 --concurrency 1 --plot "$OUT/c1.png"
http c8 --concurrency 8 --plot "$OUT/c8.png"
http sat-b8 --concurrency "$SATURATION"
"$BIN" bench sweep --url "$URL" --data "$DATA" --duration 5s --warmup 1s \
  --concurrency "$SWEEP" --json "$OUT/sweep.json" --plot "$OUT/sweep.png" | tee "$OUT/sweep.txt" >&2
stop

serve 1
http sat-b1 --concurrency "$SATURATION"
stop

for b in 1 8; do
  echo "== model batch $b" >&2
  "$BIN" bench model "${model_flags[@]}" --data "$DATA" --batch-size "$b" \
    --iterations "$ITERATIONS" --json | tee "$OUT/model-b$b.json" >&2
done

echo "load after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/load.txt" >&2

j() { jq -r "$2" "$OUT/$1"; }
f() { printf '%.*f' "$1" "$2"; }
ratio() { jq -n "$1 / $2"; }
echo
echo "| $MODEL ($DEVICE) | figure | reproduce |"
echo "|---|---|---|"
for c in 1 8; do
  echo "| HTTP, concurrency $c | $(f 1 "$(j c$c.json .throughput_rps)") req/s, p50 $(f 1 "$(j c$c.json .latency_ms.p50)") ms, p95 $(f 1 "$(j c$c.json .latency_ms.p95)") ms, mean batch $(f 2 "$(j c$c.json .server.mean_batch_size)") | \`bench http --concurrency $c\` vs \`serve --max-batch-size 8\` |"
done
for b in 1 8; do
  echo "| HTTP at saturation, max batch $b | $(f 1 "$(j sat-b$b.json .throughput_rps)") req/s, p50 $(f 1 "$(j sat-b$b.json .latency_ms.p50)") ms, mean batch $(f 2 "$(j sat-b$b.json .server.mean_batch_size)") | \`bench http --concurrency $SATURATION\` vs \`serve --max-batch-size $b\` |"
  echo "| raw forward, batch $b | $(f 1 "$(j model-b$b.json .images_per_s)") images/s ($(f 2 "$(j model-b$b.json .per_image_ms)") ms/image) | \`bench model --batch-size $b --data ...\` |"
done
echo "| batching gain (max batch 8 / 1, saturation) | $(f 2 "$(ratio "$(j sat-b8.json .throughput_rps)" "$(j sat-b1.json .throughput_rps)")") | sat-b8 / sat-b1 |"
for b in 1 8; do
  echo "| serving efficiency, batch $b (HTTP / raw) | $(f 2 "$(ratio "$(j sat-b$b.json .throughput_rps)" "$(j model-b$b.json .images_per_s)")") | sat-b$b / model-b$b |"
  echo "| model busy at saturation, max batch $b | $(f 2 "$(j sat-b$b.json .server.busy_ratio)") | sat-b$b: server forward time / wall time |"
done
