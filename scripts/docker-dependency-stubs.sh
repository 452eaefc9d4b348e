#!/bin/sh
# Empty stand-ins for the crate's targets, so that `cargo build` on Cargo.toml, Cargo.lock and
# build.rs alone compiles the dependencies: the Dockerfile caches that layer, and the sources
# come after it. `--clean` removes the stand-ins and what cargo built of them, so that the real
# sources are compiled whatever their timestamps.
#
# The targets are those Cargo.toml declares or cargo infers: src/main.rs, src/lib.rs, each
# [[bench]] (benches/NAME.rs) and an empty kernels/ for build.rs. Examples are inferred from
# examples/, which is not there yet.
set -eu
if [ "${1:-}" = "--clean" ]; then
  out=${CARGO_TARGET_DIR:-target}/release
  rm -rf src benches kernels
  rm -rf "$out"/.fingerprint/virtualfit-* "$out"/deps/virtualfit-* "$out"/deps/libvirtualfit-* \
    "$out"/build/virtualfit-* "$out"/incremental/virtualfit-* "$out"/virtualfit
  exit 0
fi
[ -f Cargo.toml ] || { echo "run from the folder of Cargo.toml" >&2; exit 1; }
mkdir -p src benches kernels
echo 'fn main() {}' > src/main.rs
: > src/lib.rs
awk '
  /^\[\[bench\]\]/ { in_bench = 1; next }
  /^\[/ { in_bench = 0 }
  in_bench && /^name[ \t]*=/ { gsub(/^name[ \t]*=[ \t]*"|"[ \t]*$/, ""); print }
' Cargo.toml | while read -r bench; do
  echo 'fn main() {}' > "benches/$bench.rs"
done
