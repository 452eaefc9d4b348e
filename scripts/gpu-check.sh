#!/usr/bin/env bash
# One-shot GPU check, under 8 minutes on a GPU machine (a lent card comes with 15 in all):
#   1. the card, the driver and the CUDA libraries found;
#   2. every CUDA kernel against its CPU op on fresh random inputs (rel L2 <= 1e-5, no NaN), and
#      CatVTON's flash attention against the f32 chunked attention (rel L2 <= 1e-2 in f16/bf16);
#   3. the DM-VTON parity fixtures on the GPU (the CPU tests' tolerances), and the kernels' f16
#      and bf16 entries against the CPU ops in the same precision;
#   4. DM-VTON forward at batch 1, 8 and 32 in f32, TF32, bf16 and f16, where the f32 pass
#      spends its time (per stage and op kind, CUDA events), and PyTorch on the same network:
#      eager, and as deployed (channels-last, cuDNN benchmark, CUDA graphs, a fused Triton
#      correlation; TF32, bf16 and f16 autocast), after its own self-test;
#   4b. the off-by-default paths on DM-VTON, each against the path it replaces on the same
#      inputs in the same run (output difference, median times, the pool's growth in the steady
#      state): --cuda-graphs (batch 5 padded to 8 included), --cudnn-conv, both, in f32 and f16,
#      and --overlap (batches served from 8-bit requests to 8-bit answers);
#   5. the server end to end (`bench http` at saturation) against the raw forward throughput,
#      then again with every off-by-default DM-VTON path on;
#   5b. DensePose (the automatic mask's third network, seeded weights) on two sample photos at
#      768x1024: time per image and the memory pool's peak, beside both SCHP parsers;
#   6. CatVTON: the tiny fixture model on the GPU against the CPU (same request and seed), then
#      the full-size networks with random weights generated there, bf16, 1024x768, batch 1 and
#      4: quality (DDIM 50) with flash attention off and on, balanced (DPM-Solver++ 2M 25) and
#      fast (DPM-Solver++ 2M 20, DeepCache interval 3), each with its peak GPU memory
#      (nvidia-smi, CUDA context included); and the official pipeline (diffusers, SDPA) with and
#      without DeepCache on the same card where torch is installed (scripts/torch_catvton.py,
#      its packages from the bundle's wheels/). To stay in budget every CatVTON row runs
#      CATVTON_MEASURE_STEPS (6) steps and is extrapolated to its own step count from the
#      measured time per step and the fixed (VAE) part; no row starts, and none runs, past the
#      check's budget (CHECK_BUDGET_S, 450 s from the start) less CATVTON_TORCH_RESERVE_S (90 s)
#      kept for the baseline, which itself stops at the budget;
# and a short table last. See README.md ("GPU check") for how the bundle is prepared
# (scripts/gpu-bundle.sh).
#
# Usage: scripts/gpu-check.sh [--device cpu] BUNDLE_DIR [OUT_DIR]
#   BUNDLE_DIR holds virtualfit (or virtualfit.gz), dmvton/ (the two checkpoints and a trimmed
#   parity.safetensors), samples/ (assets/samples: the photos for the HTTP benchmark),
#   catvton-tiny/ (tests/fixtures/catvton/model), catvton-config/ (models/catvton/config),
#   catvton-reference/ (CatVTON's pipeline files), wheels/ (the baseline's Python packages) and
#   densepose_cost.gz (examples/densepose_cost.rs; skipped when absent).
#   --device cpu rehearses the whole check on the CPU with small sizes and the tiny CatVTON
#   model instead of the full-size one, skipping only what needs CUDA.
set -uo pipefail
DEVICE=cuda:0
if [ "${1:-}" = "--device" ]; then DEVICE=${2:?--device needs a value}; shift 2; fi
BUNDLE=${1:?usage: scripts/gpu-check.sh [--device cpu] BUNDLE_DIR [OUT_DIR]}
OUT=${2:-${OUT:-/tmp/gpu-check}}
mkdir -p "$OUT"
CHECK_START=$(date +%s)
GPU=1
[ "$DEVICE" = cpu ] && GPU=0
if [ $GPU = 1 ]; then CHECK_BUDGET=${CHECK_BUDGET_S:-450}; else CHECK_BUDGET=${CHECK_BUDGET_S:-7200}; fi
TORCH_RESERVE=${CATVTON_TORCH_RESERVE_S:-90}
elapsed() { echo $(( $(date +%s) - CHECK_START )); }
if [ $GPU = 1 ]; then
  DM_BATCHES=1,8,32 DM_ITER=30 PATHS_ITER=10 MAX_BATCH=32 CONCURRENCY=128 HTTP_S=20s HTTP_WARM=3s
else
  DM_BATCHES=1,2 DM_ITER=2 PATHS_ITER=1 MAX_BATCH=2 CONCURRENCY=4 HTTP_S=3s HTTP_WARM=1s
fi
BIN="$BUNDLE/virtualfit"
if [ ! -x "$BIN" ] && [ -f "$BUNDLE/virtualfit.gz" ]; then
  BIN=/tmp/virtualfit-gpu
  gunzip -c "$BUNDLE/virtualfit.gz" > "$BIN" && chmod +x "$BIN"
fi
# The Python that runs the baselines (torch_dmvton.py, torch_catvton.py).
PY=${TORCH_PYTHON:-python3}
SCRIPTS=$(dirname "$0")

if [ $GPU = 1 ]; then
  echo "== card and driver"
  nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv,noheader
  echo "== CUDA libraries"
  # The binary links libcuda.so.1, libcublas(Lt).so.13, libcurand.so.10 and libcudart.so.13.
  # With the cudnn feature it also links libcudnn.so.9, which PyTorch's wheels (nvidia/cudnn/lib)
  # carry: every nvidia/*/lib of the Python packages is searched.
  for d in /usr/local/cuda/lib64 /usr/local/cuda-13*/lib64 /usr/local/cuda/targets/x86_64-linux/lib \
           $("$PY" -c 'import nvidia, os, glob; print(" ".join(glob.glob(os.path.join(p, "cu13", "lib")) + glob.glob(os.path.join(p, "*", "lib"))))' 2>/dev/null) \
           $(ls -d /opt/*/.venv/lib/python3*/site-packages/nvidia/*/lib 2>/dev/null); do
    [ -d "$d" ] && LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  done
  [ -d "$BUNDLE/lib" ] && LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$BUNDLE/lib"
  export LD_LIBRARY_PATH
  missing=$(ldd "$BIN" | grep 'not found')
  ldd "$BIN" | grep -E 'libcuda|cublas|curand|cudart|nvrtc|cudnn' | sed 's/^\s*/  /'
  [ -n "$missing" ] && { echo "missing libraries:"; echo "$missing"; exit 1; }

else
  echo "== card: none, the CPU rehearsal (--device cpu): CUDA-only steps are skipped"
fi

echo "== kernels, parity and forward timings"
if [ $GPU = 1 ]; then
  "$BIN" gpu-check --device "$DEVICE" --model-dir "$BUNDLE/dmvton" --parity "$BUNDLE/dmvton/parity.safetensors" \
    --batch-sizes $DM_BATCHES --iterations $DM_ITER --paths-iterations $PATHS_ITER --json "$OUT/gpu-check.json" 2>&1 | tee "$OUT/gpu-check.txt"
  check_rc=${PIPESTATUS[0]}
else
  echo "kernels and GPU parity skipped: CUDA only; the forward in each precision, with its profile:"
  check_rc=0
  for dt in f32 bf16 f16; do
    "$BIN" bench model --model dmvton --model-dir "$BUNDLE/dmvton" --device cpu --dtype $dt \
      --batch-size 2 --iterations $DM_ITER --warmup 1 --profile > "$OUT/dmvton-cpu-$dt.txt" 2>&1 \
      || { echo "  dmvton $dt failed (see dmvton-cpu-$dt.txt)"; check_rc=1; }
    head -n 1 "$OUT/dmvton-cpu-$dt.txt"
  done
  tail -n +2 "$OUT/dmvton-cpu-f32.txt"
fi

echo "== PyTorch eager baseline (same network and checkpoints)"
TORCH_SCRIPT=$SCRIPTS/torch_dmvton.py
TORCH_DEVICE=cuda
[ $GPU = 1 ] || TORCH_DEVICE=cpu
if "$PY" -c 'import torch' 2>/dev/null && [ -f "$TORCH_SCRIPT" ]; then
  "$PY" "$TORCH_SCRIPT" --model-dir "$BUNDLE/dmvton" --parity "$BUNDLE/dmvton/parity.safetensors" \
    --device $TORCH_DEVICE --batch-sizes $DM_BATCHES --iterations $DM_ITER --json "$OUT/torch.json" > "$OUT/torch.txt" 2>&1
  if [ $GPU = 1 ]; then
    "$PY" "$TORCH_SCRIPT" --model-dir "$BUNDLE/dmvton" --device cuda --batch-sizes $DM_BATCHES \
      --iterations $DM_ITER --tf32 --cudnn-benchmark --json "$OUT/torch-tf32.json" > "$OUT/torch-tf32.txt" 2>&1
  fi
  tail -n 12 "$OUT/torch.txt"
  # The deployed-style rows: the fused (Triton) correlation and the CUDA graphs checked against
  # the plain ones first (--self-test, f32), then TF32, bf16 and f16 autocast, each with cuDNN
  # benchmark, channels-last, CUDA graphs and the fused correlation, with the parity fixture.
  # In the CPU rehearsal: the self-test and one row that proves the CPU-capable flags work
  # (--cuda-graphs is CUDA only). Each row is capped (TORCH_ROW_TIMEOUT_S) to keep the budget.
  ROW_TIMEOUT=${TORCH_ROW_TIMEOUT_S:-120}
  [ $GPU = 1 ] || ROW_TIMEOUT=${TORCH_ROW_TIMEOUT_S:-900}
  torch_row() {  # torch_row NAME FLAGS...: writes $OUT/NAME.json and $OUT/NAME.txt
    local name=$1; shift
    timeout "$ROW_TIMEOUT" "$PY" "$TORCH_SCRIPT" --model-dir "$BUNDLE/dmvton" \
      --parity "$BUNDLE/dmvton/parity.safetensors" --device $TORCH_DEVICE --batch-sizes $DM_BATCHES \
      --iterations $DM_ITER "$@" --json "$OUT/$name.json" > "$OUT/$name.txt" 2>&1
    local rc=$?
    [ $rc = 0 ] || echo "  $name failed (exit $rc, see $name.txt)"
  }
  timeout "$ROW_TIMEOUT" "$PY" "$TORCH_SCRIPT" --self-test --model-dir "$BUNDLE/dmvton" --device $TORCH_DEVICE \
    > "$OUT/torch-self-test.txt" 2>&1
  self_rc=$?
  [ $self_rc = 0 ] || echo "  torch self-test failed (exit $self_rc, see torch-self-test.txt)"
  BEST=(--channels-last --cuda-graphs --fused-correlation)
  if [ $GPU = 1 ]; then
    torch_row torch-best-tf32 --tf32 --cudnn-benchmark "${BEST[@]}"
    torch_row torch-best-bf16 --amp bf16 --tf32 --cudnn-benchmark "${BEST[@]}"
    torch_row torch-best-f16 --amp f16 --tf32 --cudnn-benchmark "${BEST[@]}"
    rows="torch-tf32 torch-best-tf32 torch-best-bf16 torch-best-f16"
  else
    torch_row torch-cpu-best --channels-last --fused-correlation --amp bf16
    rows="torch-cpu-best"
  fi
  echo "-- torch-self-test"
  grep -E '^self-test|^  (fused|CUDA graph)' "$OUT/torch-self-test.txt" | tail -n 12
  for row in $rows; do
    [ -f "$OUT/$row.txt" ] || continue
    echo "-- $row"
    grep -E '^config:|^batch|rel_l2|Error|error' "$OUT/$row.txt" | tail -n 12
  done
else
  echo "no PyTorch here: baseline skipped"
fi

echo "== server end to end"
PORT=18080
"$BIN" serve --bind 127.0.0.1:$PORT --model dmvton --model-dir "$BUNDLE/dmvton" --device "$DEVICE" \
  --max-batch-size $MAX_BATCH --max-batch-delay-ms 5 --queue-capacity 512 > "$OUT/serve.log" 2>&1 &
SERVER=$!
for _ in $(seq 1 300); do
  curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
  sleep 0.2
done
echo "== GPU gauges (NVML)"
curl -s "http://127.0.0.1:$PORT/metrics" | grep '^virtualfit_gpu_' | tee "$OUT/gpu-gauges.txt"
"$BIN" bench model --model dmvton --model-dir "$BUNDLE/dmvton" --device "$DEVICE" --batch-size $MAX_BATCH \
  --iterations $DM_ITER --json > "$OUT/model-bmax.json" 2>"$OUT/model-bmax.err"
"$BIN" bench http --url "http://127.0.0.1:$PORT" --data "$BUNDLE/samples" --concurrency $CONCURRENCY \
  --duration $HTTP_S --warmup $HTTP_WARM --json "$OUT/http.json" > "$OUT/http.txt" 2>&1
kill -TERM $SERVER; wait $SERVER
if [ $GPU = 1 ]; then
  # The same, with every off-by-default DM-VTON path on (they are CUDA only).
  NEW_PATHS="--cuda-graphs on --cudnn-conv on --overlap on"
  "$BIN" serve --bind 127.0.0.1:$PORT --model dmvton --model-dir "$BUNDLE/dmvton" --device "$DEVICE" \
    --max-batch-size $MAX_BATCH --max-batch-delay-ms 5 --queue-capacity 512 $NEW_PATHS > "$OUT/serve-paths.log" 2>&1 &
  SERVER=$!
  for _ in $(seq 1 300); do
    curl -sf "http://127.0.0.1:$PORT/readyz" >/dev/null 2>&1 && break
    kill -0 $SERVER 2>/dev/null || break
    sleep 0.2
  done
  "$BIN" bench model --model dmvton --model-dir "$BUNDLE/dmvton" --device "$DEVICE" --batch-size $MAX_BATCH \
    --iterations $DM_ITER --cuda-graphs on --cudnn-conv on --json > "$OUT/model-bmax-paths.json" 2>"$OUT/model-bmax-paths.err"
  "$BIN" bench http --url "http://127.0.0.1:$PORT" --data "$BUNDLE/samples" --concurrency $CONCURRENCY \
    --duration $HTTP_S --warmup $HTTP_WARM --json "$OUT/http-paths.json" > "$OUT/http-paths.txt" 2>&1
  kill -TERM $SERVER; wait $SERVER
fi

echo "== densepose"
# Two photos: one warm-up and one measured per network; on the CPU this is the slow part of
# the rehearsal (about 30 s), on a card a few seconds.
if [ -f "$BUNDLE/densepose_cost.gz" ]; then
  gunzip -c "$BUNDLE/densepose_cost.gz" > /tmp/densepose_cost && chmod +x /tmp/densepose_cost
  dp_device=cpu
  [ $GPU = 1 ] && dp_device=cuda
  timeout 120 /tmp/densepose_cost --device $dp_device --photos "$BUNDLE/samples/person" --count 2 \
    > "$OUT/densepose.txt" 2>&1 || echo "  failed or over 120 s: see densepose.txt" >> "$OUT/densepose.txt"
else
  echo "skipped: no densepose_cost.gz in the bundle" > "$OUT/densepose.txt"
fi
sed 's/^/  /' "$OUT/densepose.txt"

echo "== catvton"
P="$BUNDLE/samples/person/000066_0.jpg"; C="$BUNDLE/samples/cloth/017575_1.jpg"
if [ -d "$BUNDLE/catvton-tiny" ]; then
  devices=cpu
  [ $GPU = 1 ] && devices="cpu $DEVICE"
  for dev in $devices; do
    "$BIN" tryon --model catvton --model-dir "$BUNDLE/catvton-tiny" --device $dev --resolution 512x384 \
      --steps 2 --seed 7 --person "$P" --cloth "$C" --output "$OUT/catvton-tiny-${dev%%:*}.png" \
      >> "$OUT/catvton-tiny.log" 2>&1
  done
fi
# Each row: its name, batch, scheduler, steps, cache interval, flash attention. On the GPU the
# full-size networks with random weights in bf16 at 1024x768; in the CPU rehearsal the tiny
# fixture model in f32 at 512x384 (flash attention is CUDA only).
MEASURE=${CATVTON_MEASURE_STEPS:-6}
if [ $GPU = 1 ]; then
  CATVTON_MODEL=(--random-weights --dtype bf16 --resolution 1024x768)
else
  CATVTON_MODEL=(--model-dir "$BUNDLE/catvton-tiny" --dtype f32 --resolution 512x384)
fi
if [ $GPU = 1 ]; then
  TORCH_CONFIGS_UNET="$BUNDLE/catvton-config/unet.json" TORCH_CONFIGS_VAE="$BUNDLE/catvton-config/vae.json"
  TORCH_CONFIGS_SCHEDULER="$BUNDLE/catvton-config/scheduler.json" TORCH_DTYPE=bf16 TORCH_RESOLUTION=1024x768
else
  TORCH_CONFIGS_UNET="$BUNDLE/catvton-tiny/base/unet/config.json" TORCH_CONFIGS_VAE="$BUNDLE/catvton-tiny/vae/config.json"
  TORCH_CONFIGS_SCHEDULER="$BUNDLE/catvton-tiny/base/scheduler/scheduler_config.json" TORCH_DTYPE=f32 TORCH_RESOLUTION=512x384
fi
: > "$OUT/catvton-rows.tsv"
watch_memory() {  # polls the card's used memory into $1 until killed
  if [ $GPU = 1 ]; then
    exec nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 100 > "$1"
  fi
  : > "$1"; exec sleep 100000
}
catvton_row() {
  local name=$1 batch=$2 scheduler=$3 steps=$4 interval=$5 flash=$6 tag="catvton-$1-b$2-flash-$6"
  local status=ok left=$(( CHECK_BUDGET - TORCH_RESERVE - $(elapsed) ))
  if [ "$flash" = on ] && [ $GPU = 0 ]; then
    status="skipped: CUDA only"
  elif [ $left -lt 20 ]; then
    status="skipped: the check's budget is spent"
  else
    watch_memory "$OUT/$tag.mem" & local smi=$!
    timeout "$left" "$BIN" bench model --model catvton "${CATVTON_MODEL[@]}" --device "$DEVICE" \
      --batch-size "$batch" --steps "$MEASURE" --scheduler "$scheduler" --cache_interval "$interval" \
      --flash-attention "$flash" --iterations 1 --warmup 1 --json > "$OUT/$tag.json" 2> "$OUT/$tag.err"
    local rc=$?
    kill $smi 2>/dev/null; wait $smi 2>/dev/null
    [ $rc = 0 ] || status="failed (exit $rc, see $tag.err)"
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$name" "$batch" "$scheduler" "$steps" "$interval" "$flash" "$tag" "$status" >> "$OUT/catvton-rows.tsv"
  echo "  $name batch $batch flash $flash: $status"
}
# The speed modes as the README defines them: quality = DDIM 50 (the reference), balanced =
# DPM-Solver++ 2M 25, fast = DPM-Solver++ 2M 20 with DeepCache interval 3. Given here by their
# scheduler, steps and interval, so that each can be measured at fewer steps.
# The most telling rows first, in case the budget runs out.
catvton_row quality 1 ddim 50 1 off
catvton_row quality 1 ddim 50 1 on
catvton_row fast 1 dpmpp_2m 20 3 off
catvton_row balanced 1 dpmpp_2m 25 1 off
catvton_row quality 4 ddim 50 1 off
catvton_row quality 4 ddim 50 1 on

echo "== catvton: the official pipeline (diffusers, SDPA), with and without DeepCache"
# torch where the card's machine has it; CatVTON's pins from the bundle's wheels, installed
# into a folder of our own that goes first on PYTHONPATH (only what is missing or pinned).
# The most telling rows first: torch_catvton.py writes its JSON after each one.
TORCH_ROWS=quality@1,fast@1,deepcache@1,balanced@1,quality@4
[ $GPU = 1 ] || TORCH_ROWS=quality@1,fast@1,deepcache@1,balanced@1
torch_status="not run"
if ! "$PY" -c 'import torch' 2>/dev/null; then
  torch_status="skipped: no torch here"
elif [ ! -d "$BUNDLE/catvton-reference/model" ]; then
  torch_status="skipped: no catvton-reference/ in the bundle"
else
  SITE="$OUT/torch-site"
  if ! "$PY" -c 'import diffusers, accelerate, DeepCache, transformers' 2>/dev/null; then
    pins=("diffusers==0.29.2" "DeepCache==0.1.1")
    "$PY" -c 'import accelerate' 2>/dev/null || pins+=("accelerate==0.31.0")
    "$PY" -c 'import transformers' 2>/dev/null || pins+=("transformers==4.27.3" "huggingface_hub==0.23.4")
    "$PY" -c 'import huggingface_hub' 2>/dev/null || pins+=("huggingface_hub==0.23.4")
    for mod_pkg in importlib_metadata:importlib_metadata zipp:zipp filelock:filelock regex:regex \
        requests:requests urllib3:urllib3 idna:idna certifi:certifi charset_normalizer:charset_normalizer \
        safetensors:safetensors yaml:pyyaml psutil:psutil packaging:packaging tqdm:tqdm; do
      "$PY" -c "import ${mod_pkg%%:*}" 2>/dev/null || pins+=("${mod_pkg##*:}")
    done
    echo "installing from the bundle: ${pins[*]}"
    "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --find-links "$BUNDLE/wheels" \
      --target "$SITE" "${pins[@]}" > "$OUT/torch-site.log" 2>&1 || echo "  pip failed: see torch-site.log"
  fi
  remaining=$(( CHECK_BUDGET - $(elapsed) ))
  if [ $remaining -lt 30 ]; then
    torch_status="skipped: over the budget"
  else
    watch_memory "$OUT/catvton-torch.mem" & smi=$!
    PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}" timeout $remaining "$PY" "$SCRIPTS/torch_catvton.py" \
      --reference "$BUNDLE/catvton-reference" \
      --configs "$TORCH_CONFIGS_UNET" "$TORCH_CONFIGS_VAE" "$TORCH_CONFIGS_SCHEDULER" \
      --device $TORCH_DEVICE --dtype "$TORCH_DTYPE" --resolution "$TORCH_RESOLUTION" \
      --rows $TORCH_ROWS --measure-steps "$MEASURE" \
      --json "$OUT/catvton-torch.json" > "$OUT/catvton-torch.txt" 2>&1
    rc=$?
    kill $smi 2>/dev/null; wait $smi 2>/dev/null
    if [ $rc = 0 ]; then torch_status=ok; else torch_status="failed (exit $rc, see catvton-torch.txt)"; fi
    grep '^torch ' "$OUT/catvton-torch.txt" | sed 's/^/  /'
  fi
fi
echo "$torch_status" > "$OUT/catvton-torch.status"
echo "  official pipeline: $torch_status"
echo "== check took $(elapsed) s (budget ${CHECK_BUDGET} s)"

python3 - "$OUT" "$MEASURE" "$CONCURRENCY" "$GPU" <<'PY'
import json, sys, os
out, measure, concurrency, gpu = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
def load(name):
    try:
        with open(os.path.join(out, name)) as f: return json.load(f)
    except Exception as e: return {"error": str(e)}
g, m, h = load("gpu-check.json"), load("model-bmax.json"), load("http.json")
t32, ttf = load("torch.json"), load("torch-tf32.json")
print("\n== summary")
try:
    dp = [l.strip() for l in open(os.path.join(out, "densepose.txt")) if l.startswith(("DensePose", "skipped", "  failed"))]
except OSError:
    dp = ["not run"]
print("densepose: " + ("; ".join(dp) or "no figures (see densepose.txt)"))
k = g.get("kernels", []); p = g.get("parity", [])
print(f"kernels: {sum(c['pass'] for c in k)}/{len(k)} pass, worst rel L2 {max([c['rel_l2'] for c in k] or [0]):.2e}")
print(f"parity:  {sum(c['pass'] for c in p)}/{len(p)} pass, worst rel L2 {max([c['rel_l2'] for c in p if 'u8' not in c['name']] or [0]):.2e}")
fa = g.get("flash_attention", [])
print(f"flash attention: {sum(c['pass'] for c in fa)}/{len(fa)} pass, worst rel L2 {max([c['rel_l2'] for c in fa] or [0]):.2e}"
      + ("" if fa else " (not run)"))
hk, hp = g.get("half_kernels", []), g.get("parity_half", [])
print(f"half kernels: {sum(c['pass'] for c in hk)}/{len(hk)} pass, worst rel L2 {max([c['rel_l2'] for c in hk] or [0]):.2e}"
      + ("" if hk else " (not run)"))
for c in hp:
    if c["name"].endswith("output.tryon"):
        print(f"DM-VTON {c['name']} against the f32 reference: rel L2 {c['rel_l2']:.2e}")
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
# Each precision, ours against PyTorch as deployed (CUDA graphs, channels-last, cuDNN benchmark,
# fused correlation); the goals: >= 2x in f32/TF32, >= 2x with autocast in half.
half = {}
for r in g.get("timings_half", []):
    half.setdefault(r["dtype"], {})[r["batch_size"]] = r
pairs = [("tf32", ours_tf, "torch-best-tf32.json"), ("bf16", half.get("bf16", {}), "torch-best-bf16.json"),
         ("f16", half.get("f16", {}), "torch-best-f16.json")]
if any(rows for _, rows, _ in pairs):
    print(f"{'batch':>6} | " + " | ".join(f"{'ours ' + n:>16} {'torch best ' + n:>16} {'x':>5}" for n, _, _ in pairs))
    best = {n: by_batch(load(f).get("timings")) for n, _, f in pairs}
    for b in sorted(ours):
        print(f"{b:>6} | " + " | ".join(f"{cell(rows.get(b))} {cell(best[n].get(b))} {ratio(rows.get(b), best[n].get(b))}"
                                       for n, rows, _ in pairs))
prof = g.get("profile", [])
if prof:
    print("where the f32 forward spends its time (largest batch):",
          ", ".join(f"{r['kind']} {100 * r['share']:.0f}%" for r in prof if r["level"] == "op" and r["share"] >= 0.03))
raw = m["batch_size"] / m["median_batch_s"] if "median_batch_s" in m else float("nan")
rps = h.get("throughput_rps", float("nan"))
lat = h.get("latency_ms", {})
print(f"http: {rps:.1f} req/s at concurrency {concurrency}, p50 {lat.get('p50', float('nan')):.1f} ms, p95 {lat.get('p95', float('nan')):.1f} ms, mean batch {(h.get('server') or {}).get('mean_batch_size')}")
print(f"raw forward at batch {m.get('batch_size')}: {raw:.1f} images/s; serving efficiency {rps / raw:.2f}")
paths = g.get("paths", [])
if paths:
    print("off-by-default paths vs the path each replaces (diff: largest output difference; fixture: rel L2 on the parity "
          "fixture; speedup = old ms / new ms; grew = MiB the pool took in the steady state):")
    def num(x, spec):  # JSON has no NaN or infinity: serde writes them as null
        return format(x, spec) if isinstance(x, (int, float)) else "-"
    for r in paths:
        err = f"  error: {r['error'][:120]}" if r.get("error") else ""
        print(f"  {'ok  ' if r['pass'] else 'FAIL'} {r['path']:<24} {r['dtype']:>4} b{r['batch_size']:<3} "
              f"diff {num(r['max_abs'], '.1e')} fixture {num(r.get('fixture_rel_l2'), '.1e')}  {num(r['old_ms'], '8.2f')} -> {num(r['new_ms'], '8.2f')} ms  "
              f"x{num(r['speedup'], '.2f')}  {num(r['images_per_s'], '8.1f')}/s  grew {num(r.get('reserved_growth_mib'), '.1f')}  "
              f"peak {num(r.get('peak_memory_mib'), '.0f')} + graphs {num(r.get('graph_memory_mib'), '.0f')} MiB{err}")
    # The fastest verified f32 and f16 paths against PyTorch as deployed, per batch size.
    best_torch = {"f32": by_batch(load("torch-best-tf32.json").get("timings")),
                  "f16": by_batch(load("torch-best-f16.json").get("timings"))}
    for dtype in ("f32", "f16"):
        for b in sorted({r["batch_size"] for r in paths if r["dtype"] == dtype}):
            ok = [r for r in paths if r["dtype"] == dtype and r["batch_size"] == b and r["pass"] and r.get("new_ms")]
            if not ok:
                continue
            fast = min(ok, key=lambda r: r["new_ms"])
            t = best_torch[dtype].get(b)
            vs = f"{t['median_batch_ms'] / fast['new_ms']:.2f}x torch best {'tf32' if dtype == 'f32' else 'f16'}" if t else "no torch row"
            print(f"  best {dtype} b{b}: {fast['path']} {fast['new_ms']:.2f} ms ({fast['images_per_s']:.0f} images/s), {vs}")
mp, hp = load("model-bmax-paths.json"), load("http-paths.json")
if "median_batch_s" in mp:
    raw_p = mp["batch_size"] / mp["median_batch_s"]
    rps_p = hp.get("throughput_rps", float("nan"))
    print(f"with every path on: raw forward {raw_p:.1f} images/s, http {rps_p:.1f} req/s, serving efficiency {rps_p / raw_p:.2f}")
try:
    from PIL import Image
    import numpy as np
    a, b = (np.asarray(Image.open(os.path.join(out, f"catvton-tiny-{d}.png")), dtype=np.int16) for d in ("cpu", "cuda"))
    d = np.abs(a - b)
    print(f"catvton tiny model, GPU vs CPU: max {d.max()} levels, {(d > 1).mean() * 100:.3f} % of values off by more than 1")
except Exception as e:
    print(f"catvton tiny model, GPU vs CPU: not compared ({e})")
def peak(name):
    try:
        return max(int(l) for l in open(os.path.join(out, name)) if l.strip().isdigit())
    except Exception:
        return None
torch = load("catvton-torch.json")
torch_rows = {(r["name"], r["batch_size"]): r for r in torch.get("rows", [])}
try:
    torch_status = open(os.path.join(out, "catvton-torch.status")).read().strip()
except OSError:
    torch_status = "not run"
what = "bf16 1024x768, random full-size weights" if gpu else "CPU rehearsal: f32 512x384, the tiny fixture model"
print(f"\ncatvton ({what}); every row ran {measure} steps and is extrapolated to its own steps "
      f"(fixed part + steps x measured time per step); peak memory from nvidia-smi, CUDA context included")
print(f"{'row':<46} {'batch':>5} {'s/image':>9} {'s/step':>8} {'fixed s':>8} {'peak MiB':>9} {'vs torch':>9}")
ours = {}
try:
    lines = [l.rstrip("\n").split("\t") for l in open(os.path.join(out, "catvton-rows.tsv")) if l.strip()]
except OSError:
    lines = []
for name, batch, scheduler, steps, interval, flash, tag, status in lines:
    batch, steps, interval = int(batch), int(steps), int(interval)
    label = f"ours {name} ({scheduler} {steps}{', cache ' + str(interval) if interval > 1 else ''}), flash {flash}"
    r = load(f"{tag}.json")
    ph = r.get("phases") if status == "ok" else None
    if not ph:
        print(f"{label:<46} {batch:>5} {status}")
        continue
    total = ph["begin_s"] + steps * ph["step_s"] + ph["finish_s"]
    per_image = total / batch
    ours[(name, batch, flash)] = (per_image, peak(f"{tag}.mem"))
    t = torch_rows.get((name, batch))
    ratio = f"{per_image / t['per_image_s']:8.2f}x" if t else f"{'-':>9}"
    mem = peak(f"{tag}.mem")
    print(f"{label:<46} {batch:>5} {per_image:9.2f} {ph['step_s']:8.3f} {ph['begin_s'] + ph['finish_s']:8.2f} "
          f"{mem if mem is not None else '-':>9} {ratio}")
if torch_rows:
    tmem = peak("catvton-torch.mem")
    for (name, batch), t in torch_rows.items():
        label = f"torch {name} ({t['scheduler']} {t['steps']}{', DeepCache ' + str(t['cache_interval']) if t['cache_interval'] > 1 else ''})"
        pr = t.get("peak_reserved_mib")
        print(f"{label:<46} {batch:>5} {t['per_image_s']:9.2f} {t['per_step_s']:8.3f} {t['fixed_s']:8.2f} "
              f"{(str(round(pr)) + ' (torch)') if pr else '-':>9}")
    print(f"official pipeline: torch {torch.get('torch')}, diffusers {torch.get('diffusers')}, "
          f"attention {', '.join(torch.get('attention_processors', []))}; nvidia-smi peak over its run: {tmem} MiB")
else:
    print(f"official pipeline: {torch_status}")
if gpu:
    best = min((v for k, v in ours.items() if k[0] == "quality" and k[1] == 1), default=None, key=lambda v: v[0])
    t = torch_rows.get(("quality", 1))
    if best and t:
        print(f"goal quality batch 1 <= 0.5x diffusers SDPA: {best[0] / t['per_image_s']:.2f}x; "
              f"<= 8 GB at batch 1: {best[1]} MiB")
PY
exit $check_rc
