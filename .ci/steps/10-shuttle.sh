#!/usr/bin/env bash
# The randomized concurrency checker: emitter-core's locks built on shuttle's, and each hand-off scenario in
# crates/emitter-core/tests/shuttle.rs run under 1,000 random and 1,000 PCT schedules (SHUTTLE_ITERATIONS to change).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

cargo test -p emitter-core --features shuttle --test shuttle
