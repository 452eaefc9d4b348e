#!/usr/bin/env bash
# Fuzzes the /tryon upload path (fuzz/fuzz_targets/upload.rs; or the jobs form, or images) for a bounded time with libFuzzer,
# through cargo-fuzz on the stable toolchain (no sanitizer, which only nightly builds).
#
#   scripts/fuzz.sh [SECONDS] [TARGET]    (defaults: 120 s, target `upload`; or `jobs`, `image`)
#
# Installs the pinned cargo-fuzz if it is missing, builds the target into fuzz/target, and runs
# it over the committed seeds in fuzz/corpus/TARGET. Inputs that find new coverage are written to
# fuzz/target/corpus/TARGET (kept between runs, never committed); a crash, abort, timeout (10 s)
# or memory blow-up (2 GiB) is saved under fuzz/artifacts/TARGET and the script exits non-zero.
# More libFuzzer flags can be given in FUZZ_ARGS, e.g. FUZZ_ARGS="-seed=1 -fork=2".
set -euo pipefail
cd "$(dirname "$0")/.."

SECONDS_TO_RUN=${1:-120}
TARGET=${2:-upload}
CARGO_FUZZ_VERSION=0.13.2

case "$SECONDS_TO_RUN" in
'' | *[!0-9]*)
    echo "usage: $0 [SECONDS] [upload|jobs|image]" >&2
    exit 2
    ;;
esac
if [ ! -f "fuzz/fuzz_targets/$TARGET.rs" ]; then
    echo "no fuzz target \`$TARGET\` in fuzz/fuzz_targets" >&2
    exit 2
fi

if ! cargo fuzz --version 2>/dev/null | grep -qF "$CARGO_FUZZ_VERSION"; then
    echo "installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
    (unset CARGO_TARGET_DIR && cargo install cargo-fuzz --version "$CARGO_FUZZ_VERSION" --locked)
fi

export CARGO_TARGET_DIR="$PWD/fuzz/target"
# --sanitizer none: the address sanitizer needs a nightly compiler; safe Rust needs it little,
# and panics, aborts, timeouts and the RSS limit are still caught. -a: overflow checks and
# debug assertions, in the library and its image decoders alike.
BUILD=(--sanitizer none --debug-assertions)

start=$(date +%s)
cargo fuzz build "${BUILD[@]}" "$TARGET"
echo "fuzz build took $(($(date +%s) - start)) s" >&2

scratch="fuzz/target/corpus/$TARGET"
mkdir -p "$scratch" "fuzz/artifacts/$TARGET"
marker="fuzz/target/.fuzz-start-$TARGET"
touch "$marker"

status=0
# shellcheck disable=SC2086 # FUZZ_ARGS is split into flags on purpose
cargo fuzz run "${BUILD[@]}" "$TARGET" "$scratch" "fuzz/corpus/$TARGET" -- \
    -max_total_time="$SECONDS_TO_RUN" -rss_limit_mb=2048 -timeout=10 \
    -dict=fuzz/fuzz.dict -print_final_stats=1 ${FUZZ_ARGS:-} || status=$?

found=$(find "fuzz/artifacts/$TARGET" -type f -newer "$marker")
if [ "$status" -ne 0 ] || [ -n "$found" ]; then
    echo "fuzzing \`$TARGET\` failed (exit $status); its inputs:" >&2
    echo "${found:-none saved}" >&2
    echo "reproduce: cargo fuzz run ${BUILD[*]} $TARGET FILE; minimise: cargo fuzz tmin ${BUILD[*]} $TARGET FILE" >&2
    exit "$([ "$status" -ne 0 ] && echo "$status" || echo 1)"
fi
echo "fuzzed \`$TARGET\` for $SECONDS_TO_RUN s: no crash" >&2
