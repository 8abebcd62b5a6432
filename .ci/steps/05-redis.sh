#!/usr/bin/env bash
# emitter-redis (the cluster's Redis side) and examples/cluster-chat against real redis-server processes: their tests
# start throwaway servers on free loopback ports (no persistence) and kill them afterwards; none of them uses a
# running Redis.
# Installs Debian's redis-server and redis-sentinel (the failover tests run a real Sentinel) first when they are not on
# PATH. EMITTER_REDIS=1 makes a missing redis-server fail the
# tests instead of skipping them, so in CI a missing Redis is a failure, never a silent skip. (The workspace-wide
# `cargo test` before this step runs the same tests when redis-server is already there, and skips them with a note
# when it is not: this step is the one that guarantees they ran.)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-sentinel >/dev/null 2>&1; then
    echo "installing redis-server and redis-sentinel"
    as_root=()
    if [ "$(id -u)" != 0 ]; then
        as_root=(sudo)
    fi
    "${as_root[@]}" apt-get update -qq
    "${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        redis-server redis-sentinel >/dev/null
fi
for binary in redis-server redis-sentinel; do
    if ! command -v "$binary" >/dev/null 2>&1; then
        echo "$binary is still not on PATH after installing it" >&2
        exit 1
    fi
done
redis-server --version

EMITTER_REDIS=1 cargo test -p emitter-redis -p example-cluster-chat
# The conformance contract, unchanged, against node one of two-node clusters; and the cluster's multi-process tests.
CONFORMANCE_REDIS=1 cargo test -p example-conformance --test contract
EMITTER_REDIS=1 cargo test -p example-conformance --test cluster
