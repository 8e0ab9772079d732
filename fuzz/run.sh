#!/usr/bin/env bash
# Coverage-guided fuzzing, run by hand (not in CI: building the targets with nightly and
# coverage instrumentation costs more than CI can spend). Runs every fuzz target for a
# bounded time, starting from its committed seed corpus (fuzz/corpus/<target>), and fails
# on the first crash (the input is kept in fuzz/artifacts/<target>/). New inputs found
# during the run go to a scratch copy, so the committed corpus changes only on purpose;
# once a crash is fixed, copy its input into fuzz/corpus/<target>/: `cargo test` replays
# every corpus input through the same checks (fuzz/harness/) on the stable toolchain.
# Needs the nightly toolchain and cargo-fuzz (both installed when missing).
#   FUZZ_SECONDS=300 fuzz/run.sh [target...]
set -euo pipefail
cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-60}"
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
# No sanitizer: the code under test is safe Rust, and coverage guidance is what finds bugs.
cargo +nightly fuzz build -s none -O
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
for target in "${targets[@]}"; do
    scratch="$(mktemp -d)"
    cp -r "corpus/$target/." "$scratch/" 2>/dev/null || true
    echo "== $target: ${seconds}s from $(ls "$scratch" | wc -l) seed inputs"
    cargo +nightly fuzz run -s none -O "$target" "$scratch" -- \
        -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 -print_final_stats=1 2>&1 |
        grep -E '^(stat::number_of_executed_units|stat::new_units_added|#[0-9]+ +DONE)|panicked|ERROR|SUMMARY|Test unit written' || true
    # A crash leaves its input in artifacts/: fail on it.
    if find "artifacts/$target" -maxdepth 1 -type f \( -name 'crash-*' -o -name 'timeout-*' \
        -o -name 'oom-*' \) 2>/dev/null | grep -q .; then
        echo "fuzz target $target failed; inputs in fuzz/artifacts/$target" >&2
        exit 1
    fi
    rm -rf "$scratch"
done
