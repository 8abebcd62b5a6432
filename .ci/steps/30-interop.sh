#!/usr/bin/env bash
# Interop with the reference Krmx packages from npm, both ways, over loopback:
#   1. the real @krmx/client against emitter's conformance server (tests/interop/test, Node's built-in test runner),
#      emitter-state's JSON deltas against the real jsondiffpatch 0.5.0 (tests/interop/test/delta.test.js), and the
#      real @krmx/state client models against emitter-state's models in examples/cards (tests/interop/test/state.test.js)
#      and against the conformance server's state app (tests/interop/test/state-conformance.test.js), on one process
#      and, with STATE_CLUSTER=1, on three nodes of a cluster on a throwaway redis-server (05-redis.sh installs it),
#      one of them SIGKILLed mid-run;
#   2. emitter-client against the real @krmx/server (crates/emitter-client/tests/interop_krmx_server.rs), with
#      EMITTER_INTEROP=1 so that a missing npm install fails instead of skipping.
# Installs Node.js from Debian if it is absent, and the npm packages from tests/interop/package-lock.json.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
    echo "installing nodejs and npm"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
fi
echo "node $(node --version), npm $(npm --version 2>/dev/null)"

(cd tests/interop && npm ci --no-audit --no-fund)

# One cargo invocation for the binaries the tests run.
cargo build -p example-conformance -p example-cards -p emitter-state --bins --example delta_cases --example compacting_stream
target_dir="$(cd "${CARGO_TARGET_DIR:-target}" && pwd)"

echo "--- @krmx/client against examples/conformance, emitter-state against jsondiffpatch and @krmx/state"
(cd tests/interop && EMITTER_CONFORMANCE_BIN="$target_dir/debug/example-conformance" \
    EMITTER_DELTA_CASES_BIN="$target_dir/debug/examples/delta_cases" \
    EMITTER_COMPACTING_STREAM_BIN="$target_dir/debug/examples/compacting_stream" \
    EMITTER_CARDS_BIN="$target_dir/debug/example-cards" node --test)

echo "--- @krmx/state clients against the state app on three nodes of a cluster (the owner SIGKILLed mid-run)"
(cd tests/interop && STATE_CLUSTER=1 EMITTER_CONFORMANCE_BIN="$target_dir/debug/example-conformance" \
    node --test test/state-conformance.test.js)

echo "--- emitter-client against @krmx/server"
EMITTER_INTEROP=1 cargo test -p emitter-client --test interop_krmx_server
