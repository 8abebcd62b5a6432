#!/usr/bin/env bash
# Coverage-guided fuzzing (cargo-fuzz, libFuzzer) of the two targets in fuzz/, a short run each:
#   parse    incoming frame parsing (parse_bounded, parse, ClientMessage::from, LinkRequest::from_payload) never
#            panics, and what it accepts is classified and re-encoded consistently;
#   actions  sequences of client and server actions through Server::host() with fake connections, checked after
#            every step against the model and invariants of crates/emitter-core/tests/model/harness.rs.
# Installs cargo-fuzz if absent. cargo-fuzz passes nightly-only flags (-Z); RUSTC_BOOTSTRAP=1 lets the machine's
# stable toolchain accept them. A crash fails the step; its input is kept under fuzz/artifacts/<target>/.
#
# FUZZ_SECONDS (default 60) is the time per target; FUZZ_SANITIZER (default none: ~10x the executions of
# AddressSanitizer on this safe-Rust code) is passed to cargo fuzz. `just fuzz` runs longer, with AddressSanitizer.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

seconds="${FUZZ_SECONDS:-60}"
sanitizer="${FUZZ_SANITIZER:-none}"
export RUSTC_BOOTSTRAP=1
# The instrumented build has its own target directory, fuzz/target.
unset CARGO_TARGET_DIR

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install --locked cargo-fuzz
fi
cargo fuzz --version

cargo fuzz build --sanitizer "$sanitizer"

for target in parse actions; do
    echo "--- fuzz $target for ${seconds}s (sanitizer: $sanitizer)"
    corpus="fuzz/corpus/$target"
    mkdir -p "$corpus"
    seeds=()
    [ -d "fuzz/seeds/$target" ] && seeds=("fuzz/seeds/$target")
    log="$(mktemp)"
    status=0
    cargo fuzz run --sanitizer "$sanitizer" "$target" "$corpus" "${seeds[@]}" -- \
        -max_total_time="$seconds" -print_final_stats=1 -timeout=10 </dev/null >"$log" 2>&1 || status=$?
    if [ "$status" -ne 0 ]; then
        tail -n 80 "$log"
        echo "fuzz target $target failed (exit $status); the input is under fuzz/artifacts/$target/"
        exit "$status"
    fi
    grep -E '^(Done [0-9]+ runs|stat::number_of_executed_units|stat::peak_rss_mb|#[0-9]+ +DONE)' "$log" || tail -n 5 "$log"
    rm -f "$log"
done
