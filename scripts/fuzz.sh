#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time (issue 7).
#
#   bash scripts/fuzz.sh [SECONDS_PER_TARGET]      (default 300)
#
# Needs a nightly toolchain and cargo-fuzz. Runs at the lowest CPU priority so
# it can share a machine with builds. Crashes land in fuzz/artifacts/TARGET/;
# the script exits non-zero if any target found one.
set -uo pipefail
secs="${1:-300}"
cd "$(dirname "$0")/.."
targets=$(ls fuzz/fuzz_targets/*.rs | xargs -n1 basename | sed 's/\.rs$//')
# Keep fuzz builds out of the workspace's stable target dir.
target_dir="${CARGO_TARGET_DIR:-$PWD/fuzz/target}/fuzz"
failed=()
for t in $targets; do
    echo "=== fuzz target $t: ${secs}s"
    if ! nice -n 19 cargo +nightly fuzz run --target-dir "$target_dir" "$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -print_final_stats=1; then
        failed+=("$t")
    fi
done
if ((${#failed[@]})); then
    echo "fuzz: crashes in: ${failed[*]} (see fuzz/artifacts/)"
    exit 1
fi
echo "fuzz: no crashes in: $(echo $targets)"
