# emitter: common tasks. `just` lists them.

default:
    @just --list

# Run the chat example (PORT, default 8082)
run:
    cargo run -p example-chat

# Run every test, doctests included
test:
    cargo test --workspace

# Check formatting and lints, as CI does
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Run the conformance server (PORT, default 8787; CLOSED_PORT, default 8788)
conformance:
    cargo run -p example-conformance

# Build the book into docs/book, if mdbook is installed
docs:
    #!/usr/bin/env bash
    set -euo pipefail
    if command -v mdbook >/dev/null 2>&1; then
        mdbook build docs
    else
        echo "mdbook is not installed (cargo install mdbook); skipping the book"
    fi

# Everything CI runs
ci:
    .ci/run

# Interop with the npm reference packages (needs Node): @krmx/client against the conformance server, @krmx/state's
# client models against examples/cards, emitter-client against @krmx/server
interop:
    .ci/steps/30-interop.sh

# Fuzz each target (fuzz/: parse, actions) for SECONDS (default 600) with AddressSanitizer; crashes land in fuzz/artifacts/
fuzz seconds="600":
    FUZZ_SECONDS={{seconds}} FUZZ_SANITIZER=address .ci/steps/60-fuzz.sh

# The book as CI builds it: installs mdbook if needed, fails on a missing include or anchor
book:
    .ci/steps/20-book.sh

# The web examples in headless Chromium, tests/browser/ (installs Debian's chromium and its npm packages if needed)
browser:
    .ci/steps/40-browser.sh

# The benchmark suite (crates/emitter-bench): our server, the Node reference (@krmx/server from npm) and a bare axum
# server side by side, alternating, medians of 3 rounds, plus the 19,000-user scale run (and the cluster groups, when
# redis-server is on PATH); writes the table and plot to docs/src/performance/. ARGS go to `emitter-bench suite` (e.g. --rounds 1 --only fanout-max,echo; --help lists them)
bench *ARGS:
    cargo build --release -p emitter-bench -p example-bench
    cd tests/node-baseline && npm ci --no-audit --no-fund
    target/release/emitter-bench suite {{ARGS}}

# The multicore groups alone (server pinned to 1, 2, 4, 8 CPUs, the load to the rest; emitter and bare axum), 3
# rounds, results in OUT; needs no npm. On a machine without the toolchain, copy the two release binaries over and run
# crates/emitter-bench/multicore.sh OUT directly.
bench-multicore OUT *ARGS:
    cargo build --release -p emitter-bench -p example-bench
    crates/emitter-bench/multicore.sh {{OUT}} {{ARGS}}

# The cluster groups alone: three nodes of examples/bench on a throwaway redis-server against one node (links, fan-out
# across nodes, Redis CPU per link and per broadcast, a node SIGKILLed with 1,000 users linked at leases of 10 s and
# 2 s), 3 rounds alternating which goes first, results in OUT; needs redis-server on PATH. ARGS go to `emitter-bench
# suite` (e.g. --rounds 5, --crash-users 2000)
bench-cluster OUT *ARGS:
    cargo build --release -p emitter-bench -p example-bench
    target/release/emitter-bench suite --only cluster --targets emitter,cluster --out {{OUT}} --logs {{OUT}}/logs {{ARGS}}

# emitter-redis and the cluster chat example against throwaway redis-server processes (installs Debian's redis-server when it is not on PATH)
redis:
    .ci/steps/05-redis.sh

# Ready to publish: the API docs without a warning (also as docs.rs builds them), each published crate packaged and
# verified, cargo-deny's licenses, bans and sources, and the MSRV built with Rust 1.85 itself
publish-checks:
    .ci/steps/03-docs.sh
    .ci/steps/04-package.sh
    .ci/steps/06-deny.sh
    .ci/steps/07-msrv.sh
