#!/usr/bin/env bash
# The web examples in headless Chromium (tests/browser/): the chat (two pages chat, come and go, one reloads and relinks),
# tic-tac-toe (two players and a spectator, a player reloads mid-game) and the card game (hidden hands on emitter-state's
# Projection, table talk, moods, a refused card, a reload mid-game).
# A fourth test plays the card game with its two players on two nodes of a cluster and kills the table's owner node
# mid-game (tests/browser/cards-cluster.test.mjs).
# Installs Debian's chromium when /usr/bin/chromium is absent and the npm packages from tests/browser/package-lock.json, builds
# and starts the three examples on free loopback ports, and runs the tests with Node's built-in test runner.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

if [ ! -x /usr/bin/chromium ]; then
    echo "installing chromium"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
fi
/usr/bin/chromium --version 2>/dev/null

(cd tests/browser && npm ci --no-audit --no-fund)

# `cargo test` builds the examples' binaries too (they have integration tests), with the features it unifies across
# the workspace: after .ci/run's test step this is a no-op, where `cargo build -p …` would recompile the dependencies
# for a different feature set.
cargo test --workspace --no-run --quiet
bin="${CARGO_TARGET_DIR:-target}/debug"

workdir="$(mktemp -d)"
pids=()
cleanup() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    rm -rf "$workdir"
}
trap cleanup EXIT

# start NAME [VAR=VALUE...]: runs target/debug/NAME on a free port (PORT=0), with the variables given, and prints the
# port once it listens. Each example prints "<what> on http://localhost:PORT/ ..." when it does.
start() {
    local name="$1" log="$workdir/$1-$#-${#pids[@]}.log" port=""
    env PORT=0 RUST_LOG=warn "${@:2}" "$bin/$name" >"$log" 2>&1 &
    pids+=("$!")
    for _ in $(seq 1 100); do
        port="$(sed -n 's|^.* on http://localhost:\([0-9]*\)/.*|\1|p' "$log")"
        if [ -n "$port" ]; then
            echo "$port"
            return 0
        fi
        if ! kill -0 "${pids[-1]}" 2>/dev/null; then
            cat "$log" >&2
            echo "$name exited before listening" >&2
            return 1
        fi
        sleep 0.1
    done
    cat "$log" >&2
    echo "$name did not start listening within 10 s" >&2
    return 1
}

# Not in $(...): start must add to pids in this shell.
start example-chat >"$workdir/chat.port"
start example-tic-tac-toe >"$workdir/ttt.port"
start example-cards >"$workdir/cards.port"

# The card game on a cluster: a throwaway redis-server (05-redis.sh installed it) and two nodes with a lease of 2 s.
# Node one starts first: it claims the table as it attaches it, so it is the owner the test kills.
free_port() {
    node -e 'const s = require("net").createServer().listen(0, "127.0.0.1", () => { console.log(s.address().port); s.close(); })'
}
redis_port="$(free_port)"
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no >"$workdir/redis.log" 2>&1 &
pids+=("$!")
for _ in $(seq 1 100); do
    redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break
    sleep 0.1
done
cluster=(REDIS_URL="redis://127.0.0.1:$redis_port/" KRMX_CLUSTER=cards-browser KRMX_LEASE_MS=2000)
start example-cards "${cluster[@]}" NODE_ID=one >"$workdir/cards-one.port"
owner_pid="${pids[-1]}"
start example-cards "${cluster[@]}" NODE_ID=two >"$workdir/cards-two.port"

cd tests/browser
CARDS_CLUSTER_NODES="http://127.0.0.1:$(cat "$workdir/cards-one.port")/,http://127.0.0.1:$(cat "$workdir/cards-two.port")/" \
    CARDS_OWNER_PID="$owner_pid" \
    CHAT_URL="http://127.0.0.1:$(cat "$workdir/chat.port")/" \
    TTT_URL="http://127.0.0.1:$(cat "$workdir/ttt.port")/" \
    CARDS_URL="http://127.0.0.1:$(cat "$workdir/cards.port")/" \
    node --test
