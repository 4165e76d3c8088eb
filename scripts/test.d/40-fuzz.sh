#!/usr/bin/env bash
# Build the cargo-fuzz targets (nightly + libFuzzer) and run each for its share of a bounded total,
# seeded with fuzz/seeds/<target> and guided by fuzz/dicts/<target>.dict. A crash fails the stage
# (the input is kept in fuzz/artifacts/<target>/). Prints executions, coverage and corpus per target.
#
#   TORU_FUZZ_TOTAL_SECS  seconds of fuzzing across all targets (default 60)
#   TORU_FUZZ_RELEASE=1   optimised build (slower to build, many more executions per second)
#   TORU_FUZZ_CORPUS      where the corpora grow (default fuzz/corpus, kept between runs)
#
# The extended run recorded in docs/RELIABILITY.md:
#   TORU_FUZZ_TOTAL_SECS=1800 TORU_FUZZ_RELEASE=1 bash scripts/test.d/40-fuzz.sh
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
total=${TORU_FUZZ_TOTAL_SECS:-60}
corpus_root=${TORU_FUZZ_CORPUS:-corpus}
# No sanitizer: the targets are safe Rust (a panic is the finding), and AddressSanitizer would cost
# a slower build and several times fewer executions. Debug assertions (overflow checks) stay on.
mode=(--dev --sanitizer none)
[ "${TORU_FUZZ_RELEASE:-}" = 1 ] && mode=(--release --debug-assertions --sanitizer none)
cargo +nightly fuzz build "${mode[@]}"

# Each target's share of the total, in parts (the frame codec is the smallest surface). Shares
# are cut from the running total, so they add up to exactly the total.
targets=(frame_decoder envelope envelope_roundtrip http_path config settings package)
parts=(2 3 2 3 3 3 3)
sum=0
for p in "${parts[@]}"; do sum=$((sum + p)); done
summary=()
failed=()
ran=0
cum=0
for i in "${!targets[@]}"; do
    t=${targets[$i]}
    cum=$((cum + parts[i]))
    secs=$(( total * cum / sum - ran ))
    ran=$((ran + secs))
    mkdir -p "$corpus_root/$t"
    dict=()
    [ -f "dicts/$t.dict" ] && dict=("-dict=dicts/$t.dict")
    log=$(mktemp)
    if ! cargo +nightly fuzz run "${mode[@]}" "$t" "$corpus_root/$t" "seeds/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=1024 -print_final_stats=1 "${dict[@]}" >"$log" 2>&1; then
        # The other targets still run: one report names every failing target.
        grep -a -A 8 -E 'panicked|ERROR: libFuzzer' "$log" | head -n 40 >&2 || tail -n 40 "$log" >&2
        rm -f "$log"
        failed+=("$t")
        summary+=("$(printf '%-20s %5s s  FAILED: the input is in fuzz/artifacts/%s/' "$t" "$secs" "$t")")
        continue
    fi
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -n 1)
    done_line=$(grep -a -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1)
    cov=$(sed -E 's/.* cov: ([0-9]+).*/\1/' <<<"$done_line")
    corp=$(sed -E 's/.* corp: ([^ ]+).*/\1/' <<<"$done_line")
    rm -f "$log"
    summary+=("$(printf '%-20s %5s s %12s execs  cov %6s  corpus %s' "$t" "$secs" "$execs" "$cov" "$corp")")
done
printf '%s\n' "${summary[@]}" >&2
if [ ${#failed[@]} -gt 0 ]; then
    say "fuzzing failed: ${failed[*]}"
    exit 1
fi
say "fuzzing passed (${ran} s in total, no crash)"
