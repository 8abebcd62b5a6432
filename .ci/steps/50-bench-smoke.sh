#!/usr/bin/env bash
# Benchmarks never run as timed tests in CI. This step only checks that the benchmark binaries build and that a tiny
# run of every scenario against our own server completes: a few users, about a second per scenario (the multicore
# groups at one server core, pinned, when there are 2 CPUs), no Node, no report written; about 20 s. With
# redis-server on PATH it also runs the cluster groups small (three nodes of examples/bench on a throwaway Redis against
# one: a link storm of 60 users, a second of fan-out, a node killed with a 2 s lease): about 15 s more. Without it they
# are skipped with a note, except in CI (CI=true), where .ci/steps/05-redis.sh has installed it and a missing
# redis-server fails the step (EMITTER_REDIS=1). The full suite is `just bench`.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

if [ "${CI:-}" = true ]; then
    export EMITTER_REDIS=1
fi
cargo build --release -p emitter-bench -p example-bench
# Bounded twice: the runner's own time-outs, and this one around the whole run.
timeout 600 target/release/emitter-bench smoke
