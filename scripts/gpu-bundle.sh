#!/usr/bin/env bash
# Prepares the GPU check's bundle (see README.md, "GPU check") in one command: the CUDA build
# (--features cuda,cudnn), stripped and gzipped, the fixtures and samples the check reads,
# CatVTON's configurations and the official pipeline's files for the baseline, the Python
# wheels that baseline needs beyond torch, and the scripts. The bundle must stay under 64 MiB.
#
#   scripts/gpu-bundle.sh [BUNDLE_DIR]        # default .device-bundle (git-ignored locally)
#
# Then, on the GPU machine: bash BUNDLE_DIR/gpu-check.sh BUNDLE_DIR [OUT_DIR].
# Environment: CATVTON_REFERENCE, a checkout of Zheng-Chong/CatVTON (default /tmp/CatVTON);
# SKIP_BUILD=1 packs target-cuda/release/virtualfit as it is; VIRTUALFIT_BIN=PATH packs that
# binary instead and skips the build (the CPU rehearsal, `gpu-check.sh --device cpu`, with the
# CPU build's target/release/virtualfit).
set -euo pipefail
cd "$(dirname "$0")/.."
B=${1:-.device-bundle}
REF=${CATVTON_REFERENCE:-/tmp/CatVTON}
LIMIT=$((64 * 1024 * 1024))
[ -f "$REF/model/pipeline.py" ] || { echo "$REF is not a CatVTON checkout (set CATVTON_REFERENCE)" >&2; exit 1; }

BIN=${VIRTUALFIT_BIN:-target-cuda/release/virtualfit}
if [ "${SKIP_BUILD:-0}" != 1 ] && [ -z "${VIRTUALFIT_BIN:-}" ]; then
  cargo fetch --locked
  eval "$(scripts/cuda-toolkit.sh)"
  CARGO_TARGET_DIR=target-cuda cargo build --release --locked --features cuda,cudnn
  CARGO_TARGET_DIR=target-cuda cargo build --release --locked --features cuda,cudnn --example densepose_cost
fi
[ -x "$BIN" ] || { echo "no $BIN: build it first" >&2; exit 1; }
# DensePose's cost measurement, built beside the binary (examples/densepose_cost.rs).
DENSEPOSE_BIN=${DENSEPOSE_COST_BIN:-$(dirname "$BIN")/examples/densepose_cost}

rm -rf "$B"
mkdir -p "$B/dmvton" "$B/samples" "$B/wheels" "$B/catvton-reference/model"
case "$B" in
  /*) ;;  # outside the repository
  *) exclude=$(git rev-parse --git-path info/exclude)
     grep -qxF "/$B/" "$exclude" 2>/dev/null || echo "/$B/" >> "$exclude" ;;
esac

strip -o "$B/.virtualfit" "$BIN"
gzip -9 -c "$B/.virtualfit" > "$B/virtualfit.gz" && rm "$B/.virtualfit"
if [ -x "$DENSEPOSE_BIN" ]; then
  strip -o "$B/.densepose_cost" "$DENSEPOSE_BIN"
  gzip -9 -c "$B/.densepose_cost" > "$B/densepose_cost.gz" && rm "$B/.densepose_cost"
else
  echo "no $DENSEPOSE_BIN: the check will skip DensePose" >&2
fi
cp tests/fixtures/dmvton/*.pt "$B/dmvton/"
# The parity fixture's inputs and outputs, without the feature pyramids.
python3 scripts/trim-parity.py tests/fixtures/dmvton/parity.safetensors.gz "$B/dmvton/parity.safetensors" 2
cp -r assets/samples/* "$B/samples/"
cp -r tests/fixtures/catvton/model "$B/catvton-tiny"
cp -r models/catvton/config "$B/catvton-config"
cp scripts/gpu-check.sh scripts/torch_dmvton.py scripts/torch_catvton.py "$B/"

# The official pipeline's own files, run unmodified by torch_catvton.py.
for f in model/pipeline.py model/attn_processor.py model/utils.py utils.py; do
  cp "$REF/$f" "$B/catvton-reference/$f"
done
[ -f "$REF/LICENSE" ] && cp "$REF/LICENSE" "$B/catvton-reference/"

# The baseline's packages (the GPU machine has no internet): CatVTON's pins and what they
# import, installed there only where missing. Pure-Python wheels once; the compiled ones per
# CPython version (abi3 wheels once). Pillow, numpy and torch are expected there.
pip_dl() { python3 -m pip download -q --disable-pip-version-check --no-deps -d "$B/wheels" "$@"; }
pip_dl --only-binary=:all: diffusers==0.29.2 transformers==4.27.3 accelerate==0.31.0 \
  huggingface_hub==0.23.4 DeepCache==0.1.1 importlib_metadata zipp filelock requests urllib3 idna \
  certifi packaging tqdm
for py in 3.10 3.11 3.12 3.13; do
  pip_dl --only-binary=:all: --python-version "$py" --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 regex pyyaml charset_normalizer
done
pip_dl --only-binary=:all: --python-version 3.10 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 safetensors psutil

size=$(du -sb "$B" | cut -f1)
du -sh "$B"/* | sort -h | tail -n 6
echo "bundle $B: $((size / 1024 / 1024)) MiB ($size bytes)"
[ "$size" -lt "$LIMIT" ] || { echo "the bundle is over 64 MiB" >&2; exit 1; }
