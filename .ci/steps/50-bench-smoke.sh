#!/usr/bin/env bash
# Benchmarks never run as timed tests in CI. This step only checks that the benchmark binaries build and that a tiny
# run of every scenario against our own server completes: a few users, about a second per scenario (the multicore
# groups at one server core, pinned, when there are 2 CPUs), no Node, no report written; about 20 s. The full suite is
# `just bench`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

cargo build --release -p emitter-bench -p example-bench
# Bounded twice: the runner's own time-outs, and this one around the whole run.
timeout 600 target/release/emitter-bench smoke
