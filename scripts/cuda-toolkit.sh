#!/usr/bin/env bash
# Sets up a CUDA 13.0 toolkit for BUILDING the `cuda` feature on a machine without a GPU or a
# system CUDA (see docs/cuda.md).
#
#   cargo fetch                                      # cudarc's sources, for the link stubs
#   eval "$(scripts/cuda-toolkit.sh)"                # --cudnn also installs cuDNN 9
#   CARGO_TARGET_DIR=target-cuda cargo build --release --features cuda
#
# It installs NVIDIA's PyPI wheels into $CUDA_VENV (default /opt/virtualfit-cuda), pinned to 13.0
# because driver 580 cannot load the PTX of a newer nvcc, adds link-time stub libraries for the
# CUDA libraries the wheels lack, and prints the environment to export. The stubs only satisfy the
# linker: at run time the GPU machine's real libcuda.so.1, libcublas.so.13, libcublasLt.so.13 and
# libcurand.so.10 are loaded. The `cudnn` feature links libcudnn.so.9 the same way: a stub is
# made for it too, so `--features cuda,cudnn` builds without the large cuDNN wheel; the binary
# then needs the real libcudnn.so.9 where it runs (the runtime image does not ship it). With
# --cudnn it also installs that wheel for CUDA 13 and puts it on LIBRARY_PATH.
set -euo pipefail
with_cudnn=0
for arg in "$@"; do
  case "$arg" in
    --cudnn) with_cudnn=1 ;;
    *) echo "usage: $0 [--cudnn]" >&2; exit 2 ;;
  esac
done
V=${CUDA_VENV:-/opt/virtualfit-cuda}
CAP=${CUDA_COMPUTE_CAP:-90}
if [ ! -x "$V/bin/pip" ]; then python3 -m venv "$V" >&2; fi
wheels=("nvidia-cuda-nvcc==13.0.88" "nvidia-cuda-crt==13.0.88" "nvidia-nvvm==13.0.88"
  "nvidia-cuda-runtime==13.0.96" "nvidia-cuda-cccl==13.0.85")
[ "$with_cudnn" = 1 ] && wheels+=("nvidia-cudnn-cu13==9.27.0.42")
"$V/bin/pip" install -q --disable-pip-version-check "${wheels[@]}" >&2
CU=$(echo "$V"/lib/python3*/site-packages/nvidia/cu13)
[ -x "$CU/bin/nvcc" ] || { echo "nvcc not found under $CU" >&2; exit 1; }
[ -e "$CU/lib/libcudart.so" ] || ln -s libcudart.so.13 "$CU/lib/libcudart.so"
LIBS="$CU/lib/stubs:$CU/lib"
if [ "$with_cudnn" = 1 ]; then
  CUDNN=$(dirname "$(ls "$V"/lib/python3*/site-packages/nvidia/cudnn/lib/libcudnn.so.9 "$CU"/lib/libcudnn.so.9 2>/dev/null | head -1)")
  [ -e "$CUDNN/libcudnn.so.9" ] || { echo "libcudnn.so.9 not found in the cuDNN wheel" >&2; exit 1; }
  [ -e "$CUDNN/libcudnn.so" ] || ln -s libcudnn.so.9 "$CUDNN/libcudnn.so"
  LIBS="$LIBS:$CUDNN"
fi
mkdir -p "$CU/lib/stubs"
CUDARC=$(ls -d ~/.cargo/registry/src/*/cudarc-0.19.* 2>/dev/null | sort -V | tail -1 || true)
if [ -n "$CUDARC" ] && [ ! -e "$CU/lib/stubs/libcudnn.so" ]; then
  # One empty function per symbol that cudarc declares, in a library with the real soname.
  python3 - "$CUDARC/src" "$CU/lib/stubs" >&2 <<'PY'
import re, subprocess, sys
src, out = sys.argv[1], sys.argv[2]
libs = {"driver": ("cuda", "libcuda.so.1"), "nvrtc": ("nvrtc", "libnvrtc.so.13"),
        "curand": ("curand", "libcurand.so.10"), "cublas": ("cublas", "libcublas.so.13"),
        "cublaslt": ("cublasLt", "libcublasLt.so.13"), "cudnn": ("cudnn", "libcudnn.so.9")}
decl = re.compile(r'extern "C" \{\s*(?:#\[[^\]]*\]\s*)*(?:pub )?fn ([A-Za-z0-9_]+)\(')
for module, (name, soname) in libs.items():
    names = sorted(set(decl.findall(open(f"{src}/{module}/sys/mod.rs").read())))
    c_file = f"{out}/{name}.c"
    with open(c_file, "w") as f:
        f.write("".join(f"void {n}(void){{}}\n" for n in names))
    subprocess.check_call(["gcc", "-shared", "-fPIC", "-o", f"{out}/lib{name}.so",
                           f"-Wl,-soname,{soname}", c_file])
    print(f"stub lib{name}.so ({soname}): {len(names)} symbols")
PY
fi
[ -n "$CUDARC" ] || echo "note: cudarc's sources are not in ~/.cargo/registry yet: run 'cargo fetch' first, then this again for the link stubs" >&2
echo "export PATH=$CU/bin:\$PATH CUDA_ROOT=$CU CUDA_HOME=$CU CUDA_COMPUTE_CAP=$CAP CUDARC_CUDA_VERSION=13000 LIBRARY_PATH=$LIBS\${LIBRARY_PATH:+:\$LIBRARY_PATH}"
