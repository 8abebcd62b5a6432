#!/usr/bin/env bash
# Each library crate checked on its own, with only the features it asks for: in the workspace build Cargo unifies
# every crate's features, which hides a crate that uses a feature of a dependency it does not turn on (emitter-core
# once used tokio's block_in_place without rt-multi-thread). A user who depends on one crate gets exactly this build.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

for crate in emitter-listeners emitter-core emitter-axum emitter-client emitter-redis emitter-state; do
    echo "--- cargo check -p $crate"
    cargo check -p "$crate"
done
