#!/usr/bin/env bash
# One-shot GPU check, a few minutes on a GPU machine:
#   1. the card, the driver and the CUDA libraries found;
#   2. every CUDA kernel against its CPU op on fresh random inputs (rel L2 <= 1e-5, no NaN);
#   3. the DM-VTON parity fixtures on the GPU (the CPU tests' tolerances);
#   4. DM-VTON forward at batch 1, 8 and 32;
#   5. the server end to end (`bench http` at saturation) against the raw forward throughput;
#   6. catvton: the tiny fixture model on the GPU against the CPU (same request and seed), then
#      the full-size networks with random weights in bf16 at 1024x768, 50 steps, batch 1 and 4,
#      with the peak GPU memory (nvidia-smi, CUDA context included);
# and a short table last. See README.md ("GPU check") for how the bundle is prepared.
#
# Usage: scripts/gpu-check.sh BUNDLE_DIR [OUT_DIR]
#   BUNDLE_DIR holds virtualfit (or virtualfit.gz), dmvton/ (the two checkpoints and a trimmed
#   parity.safetensors) and samples/ (assets/samples: the photos for the HTTP benchmark);
#   optionally catvton-tiny/ (tests/fixtures/catvton/model) for step 6's parity run.
set -uo pipefail
BUNDLE=${1:?usage: scripts/gpu-check.sh BUNDLE_DIR [OUT_DIR]}
OUT=${2:-${OUT:-/tmp/gpu-check}}
mkdir -p "$OUT"
BIN="$BUNDLE/virtualfit"
if [ ! -x "$BIN" ] && [ -f "$BUNDLE/virtualfit.gz" ]; then
  BIN=/tmp/virtualfit-gpu
  gunzip -c "$BUNDLE/virtualfit.gz" > "$BIN" && chmod +x "$BIN"
fi

echo "== card and driver"
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader
echo "== CUDA libraries"
# The binary links libcuda.so.1, libcublas(Lt).so.13, libcurand.so.10 and libcudart.so.13.
for d in /usr/local/cuda/lib64 /usr/local/cuda-13*/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
         $(python3 -c 'import nvidia, os; print(" ".join(os.path.join(p, "cu13", "lib") for p in nvidia.__path__))' 2>/dev/null) \
         $(ls -d /opt/*/.venv/lib/python3*/site-packages/nvidia/*/lib 2>/dev/null); do
  [ -d "$d" ] && LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
[ -d "$BUNDLE/lib" ] && LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$BUNDLE/lib"
export LD_LIBRARY_PATH
missing=$(ldd "$BIN" | grep 'not found')
ldd "$BIN" | grep -E 'libcuda|cublas|curand|cudart|nvrtc' | sed 's/^\s*/  /'
[ -n "$missing" ] && { echo "missing libraries:"; echo "$missing"; exit 1; }

echo "== kernels, parity and forward timings"
"$BIN" gpu-check --device cuda:0 --model-dir "$BUNDLE/dmvton" --parity "$BUNDLE/dmvton/parity.safetensors" \
  --batch-sizes 1,8,32 --iterations 30 --json "$OUT/gpu-check.json" 2>&1 | tee "$OUT/gpu-check.txt"
check_rc=${PIPESTATUS[0]}

echo "== PyTorch eager baseline (same network and checkpoints)"
TORCH_SCRIPT=$(dirname "$0")/torch_dmvton.py
if python3 -c 'import torch' 2>/dev/null && [ -f "$TORCH_SCRIPT" ]; then
  python3 "$TORCH_SCRIPT" --model-dir "$BUNDLE/dmvton" --parity "$BUNDLE/dmvton/parity.safetensors" \
    --device cuda --batch-sizes 1,8,32 --iterations 30 --json "$OUT/torch.json" > "$OUT/torch.txt" 2>&1
  python3 "$TORCH_SCRIPT" --model-dir "$BUNDLE/dmvton" --device cuda --batch-sizes 1,8,32 \
    --iterations 30 --tf32 --cudnn-benchmark --json "$OUT/torch-tf32.json" > "$OUT/torch-tf32.txt" 2>&1
  tail -n 12 "$OUT/torch.txt"
else
  echo "no PyTorch here: baseline skipped"
fi

echo "== server end to end"
PORT=18080
"$BIN" serve --bind 127.0.0.1:$PORT --model dmvton --model-dir "$BUNDLE/dmvton" --device cuda:0 \
  --max-batch-size 32 --max-batch-delay-ms 5 --queue-capacity 512 > "$OUT/serve.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
echo "== GPU gauges (NVML)"
curl -s "http://127.0.0.1:$PORT/metrics" | grep '^virtualfit_gpu_' | tee "$OUT/gpu-gauges.txt"
"$BIN" bench model --model dmvton --model-dir "$BUNDLE/dmvton" --device cuda:0 --batch-size 32 \
  --iterations 30 --json > "$OUT/model-b32.json" 2>"$OUT/model-b32.err"
"$BIN" bench http --url "http://127.0.0.1:$PORT" --data "$BUNDLE/samples" --concurrency 128 \
  --duration 20s --warmup 3s --json "$OUT/http.json" > "$OUT/http.txt" 2>&1
kill -TERM $SERVER; wait $SERVER

echo "== catvton"
P="$BUNDLE/samples/person/000066_0.jpg"; C="$BUNDLE/samples/cloth/017575_1.jpg"
if [ -d "$BUNDLE/catvton-tiny" ]; then
  for dev in cpu cuda:0; do
    "$BIN" tryon --model catvton --model-dir "$BUNDLE/catvton-tiny" --device $dev --resolution 512x384 \
      --steps 2 --seed 7 --person "$P" --cloth "$C" --output "$OUT/catvton-tiny-${dev%%:*}.png" \
      >> "$OUT/catvton-tiny.log" 2>&1
  done
fi
for b in 1 4; do
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$OUT/catvton-mem-b$b.txt" &
  SMI=$!
  "$BIN" bench model --model catvton --random-weights --dtype bf16 --device cuda:0 --resolution 1024x768 \
    --steps 50 --batch-size $b --iterations 2 --warmup 1 --json > "$OUT/catvton-b$b.json" 2>"$OUT/catvton-b$b.err"
  kill $SMI; wait $SMI 2>/dev/null
done

python3 - "$OUT" <<'PY'
import json, sys, os
out = sys.argv[1]
def load(name):
    try:
        with open(os.path.join(out, name)) as f: return json.load(f)
    except Exception as e: return {"error": str(e)}
g, m, h = load("gpu-check.json"), load("model-b32.json"), load("http.json")
t32, ttf = load("torch.json"), load("torch-tf32.json")
print("\n== summary")
k = g.get("kernels", []); p = g.get("parity", [])
print(f"kernels: {sum(c['pass'] for c in k)}/{len(k)} pass, worst rel L2 {max([c['rel_l2'] for c in k] or [0]):.2e}")
print(f"parity:  {sum(c['pass'] for c in p)}/{len(p)} pass, worst rel L2 {max([c['rel_l2'] for c in p if 'u8' not in c['name']] or [0]):.2e}")
def by_batch(rows):
    return {r["batch_size"]: r for r in rows or []}
ours, ours_tf, th, th_tf = (by_batch(g.get("timings")), by_batch(g.get("timings_tf32")),
                            by_batch(t32.get("timings")), by_batch(ttf.get("timings")))
print(f"{'batch':>6} | {'ours f32':>16} {'torch f32':>16} {'x':>5} | {'ours tf32':>16} {'torch tf32':>16} {'x':>5}")
def cell(r): return f"{r['median_batch_ms']:7.2f}ms {r['images_per_s']:6.1f}/s" if r else f"{'-':>16}"
def ratio(a, b): return f"{b['median_batch_ms'] / a['median_batch_ms']:5.2f}" if a and b else f"{'-':>5}"
for b in sorted(ours):
    print(f"{b:>6} | {cell(ours.get(b))} {cell(th.get(b))} {ratio(ours.get(b), th.get(b))} | "
          f"{cell(ours_tf.get(b))} {cell(th_tf.get(b))} {ratio(ours_tf.get(b), th_tf.get(b))}")
if t32.get("parity"):
    print("torch parity (rel L2):", {k: f"{v:.1e}" for k, v in t32["parity"].items()})
raw = 32 * 1000.0 / (m.get("median_batch_s", float("nan")) * 1000.0) if "median_batch_s" in m else float("nan")
rps = h.get("throughput_rps", float("nan"))
lat = h.get("latency_ms", {})
print(f"http: {rps:.1f} req/s at concurrency 128, p50 {lat.get('p50', float('nan')):.1f} ms, p95 {lat.get('p95', float('nan')):.1f} ms, mean batch {(h.get('server') or {}).get('mean_batch_size')}")
print(f"raw forward at batch 32: {raw:.1f} images/s; serving efficiency {rps / raw:.2f}")
try:
    from PIL import Image
    import numpy as np
    a, b = (np.asarray(Image.open(os.path.join(out, f"catvton-tiny-{d}.png")), dtype=np.int16) for d in ("cpu", "cuda"))
    d = np.abs(a - b)
    print(f"catvton tiny model, GPU vs CPU: max {d.max()} levels, {(d > 1).mean() * 100:.3f} % of values off by more than 1")
except Exception as e:
    print(f"catvton tiny model, GPU vs CPU: not compared ({e})")
for b in (1, 4):
    r = load(f"catvton-b{b}.json")
    try:
        peak = max(int(l) for l in open(os.path.join(out, f"catvton-mem-b{b}.txt")) if l.strip().isdigit())
    except Exception:
        peak = float("nan")
    if "median_batch_s" in r:
        print(f"catvton bf16 1024x768 50 steps, batch {b}: {r['median_batch_s'] / b:.2f} s per image, "
              f"{r['unet_steps_per_s']:.1f} request-steps/s, peak GPU memory {peak} MiB")
    else:
        print(f"catvton batch {b}: failed, see catvton-b{b}.err")
PY
exit $check_rc
