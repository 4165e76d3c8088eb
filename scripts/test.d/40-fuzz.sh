#!/usr/bin/env bash
# Build the cargo-fuzz targets (nightly + libFuzzer) and give each a short bounded run seeded with
# the protocol vectors. Longer runs: see README ("Fuzzing").
set -euo pipefail
. "$(dirname "$0")/../lib.sh"
cd "$(toru_root)"
if ! rustup toolchain list | grep -q '^nightly'; then
    say "no nightly toolchain: installing one for cargo-fuzz"
    rustup toolchain install nightly --profile minimal
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    say "installing cargo-fuzz"
    cargo +nightly install cargo-fuzz --locked
fi
cd fuzz
cargo +nightly fuzz build --dev
for target in frame_decoder envelope; do
    mkdir -p "corpus/$target"
    cp -n seeds/* "corpus/$target/" 2>/dev/null || true
    cargo +nightly fuzz run --dev "$target" "corpus/$target" -- -max_total_time=15 -rss_limit_mb=512 -print_final_stats=0
done
