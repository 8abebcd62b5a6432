#!/usr/bin/env bash
# The multicore benchmark in one command, for a machine with many CPUs: for k = 1, 2, 4, 8 the server is pinned to
# CPUs 0..k-1 and the load to the others (one load process per CPU), and emitter, bare axum (tungstenite's default
# buffers) and bare axum with emitter-axum's buffers each serve 1,000 users in an echo and a fan-out run; 3 rounds,
# alternating which target goes first. 16 CPUs measure every k up to 8 (a k that leaves the load fewer CPUs than the
# server is skipped, with a note). About 15 minutes on 16 CPUs.
#
#   crates/emitter-bench/multicore.sh OUT_DIR [more `emitter-bench suite` options, e.g. --cores 1,2,4,8 --rounds 5]
#
# It needs no network, no npm and no toolchain: only the two release binaries and taskset (util-linux). Build them
# anywhere with `cargo build --release -p emitter-bench -p example-bench` and copy target/release/emitter-bench and
# target/release/example-bench over; EMITTER_BENCH_BIN names the folder that holds both (default: this checkout's
# target/release). It writes OUT_DIR/results.md (the tables and goals), OUT_DIR/multicore.svg (throughput against
# server cores), OUT_DIR/results.json (every value of every round), OUT_DIR/run.log and the servers' logs in
# OUT_DIR/logs/. Copy results.md's multicore table and multicore.svg into docs/src/performance/ to publish them.
set -euo pipefail

if [[ $# -lt 1 || $1 == -* ]]; then
    sed -n '2,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    exit 2
fi
out=$1
shift

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
bin=${EMITTER_BENCH_BIN:-$here/../../target/release}
for exe in emitter-bench example-bench; do
    if [[ ! -x $bin/$exe ]]; then
        echo "multicore.sh: $bin/$exe is missing; build it with" \
            "\`cargo build --release -p emitter-bench -p example-bench\` or set EMITTER_BENCH_BIN" >&2
        exit 1
    fi
done
if ! command -v taskset >/dev/null; then
    echo "multicore.sh: taskset is missing (it is in util-linux): the multicore groups pin every process" >&2
    exit 1
fi
cpus=$(nproc)
if ((cpus < 4)); then
    echo "multicore.sh: only $cpus CPU(s) here: at most 1 server core will be measured" >&2
fi

# Every connection is a file descriptor on both sides: 1,000 users and the listener are more than a soft limit of
# 1,024 allows.
ulimit -n 20000 2>/dev/null || ulimit -n "$(ulimit -Hn)"

mkdir -p "$out"
echo "multicore.sh: $cpus CPU(s), load average $(cut -d' ' -f1-3 /proc/loadavg), binaries in $bin, results in $out"
"$bin/emitter-bench" suite --only multicore --rounds 3 --targets emitter,axum,axum-equal \
    --out "$out" --logs "$out/logs" "$@" 2>&1 | tee "$out/run.log"
