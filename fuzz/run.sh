#!/usr/bin/env bash
# Runs the fuzz targets one after another, each for a bounded time, on a
# stable toolchain. Usage:
#
#   fuzz/run.sh [SECONDS_PER_TARGET] [TARGET...]     (default: 30, all)
#
# Exits non-zero if a target crashed (the input is left in
# fuzz/artifacts/<target>/ and the log in fuzz/work/<target>.log) or did
# not build. Prints each target's executions, coverage and features.
#
# Why these flags: `-s none` builds with libFuzzer's coverage
# instrumentation (sancov, trace-compares) but no sanitizer, which needs no
# nightly-only (-Z) flag, so a stable toolchain builds it as is; quintet is
# safe Rust, where AddressSanitizer finds little that a panic does not.
# FUZZ_SANITIZER=address builds with ASan instead, on stable by way of
# RUSTC_BOOTSTRAP=1 (the flag is nightly-only; the runtime ships with
# stable). New inputs go to fuzz/work/<target>/ (not committed); the seeds
# and regression inputs in fuzz/corpus/<target>/ are only read, and all of
# them run first, every time.
set -euo pipefail

cd "$(dirname "$0")"
secs=${1:-30}
shift || true
if [ "$#" -gt 0 ]; then
    targets=("$@")
else
    targets=(frame wal wal_open snapshot script peer coord)
fi
case "$secs" in
    '' | *[!0-9]*) echo "run.sh: seconds must be a whole number, got '$secs'" >&2; exit 2 ;;
esac

CARGO_FUZZ_VERSION=0.13.2
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "run.sh: installing cargo-fuzz $CARGO_FUZZ_VERSION" >&2
    cargo install cargo-fuzz --locked --version "$CARGO_FUZZ_VERSION"
fi

sanitizer=${FUZZ_SANITIZER:-none}
if [ "$sanitizer" != none ]; then
    export RUSTC_BOOTSTRAP=1
fi
fuzz=(cargo fuzz run --sanitizer "$sanitizer" --target-dir target)

# One build for every target first, so a build failure is reported as one
# and the time budget is spent fuzzing.
cargo fuzz build --sanitizer "$sanitizer" --target-dir target

mkdir -p work
failed=()
summary=()
for t in "${targets[@]}"; do
    mkdir -p "work/$t" "corpus/$t"
    log="work/$t.log"
    echo "== $t: ${secs}s" >&2
    start=$(date +%s)
    set +e
    "${fuzz[@]}" "$t" "work/$t" "corpus/$t" -- \
        -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    took=$(($(date +%s) - start))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    # The last status line libFuzzer printed: "#N ... cov: C ft: F corp: ...".
    last=$(grep -E '^#[0-9]+' "$log" | tail -1 || true)
    cov=$(sed -n 's/.* cov: \([0-9]*\).*/\1/p' <<<"$last")
    ft=$(sed -n 's/.* ft: \([0-9]*\).*/\1/p' <<<"$last")
    if [ "$rc" -ne 0 ]; then
        failed+=("$t")
        echo "== $t FAILED (exit $rc); the end of $log:" >&2
        tail -40 "$log" >&2
        ls -1 "artifacts/$t" 2>/dev/null | sed 's/^/   artifact: /' >&2 || true
    fi
    summary+=("$(printf '%-9s %12s execs %6ss  cov %6s  ft %7s  %s' \
        "$t" "${execs:-?}" "$took" "${cov:-?}" "${ft:-?}" \
        "$([ "$rc" -eq 0 ] && echo ok || echo CRASH)")")
done

echo
printf '%s\n' "${summary[@]}"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "run.sh: crashed: ${failed[*]}" >&2
    exit 1
fi
