#!/usr/bin/env bash
# The MSRV, checked with the oldest compiler itself: every library crate whose rust-version is the workspace's (1.85)
# is built (`cargo check --locked`, its library, with Cargo.lock as it is) by Rust 1.85's own cargo and rustc.
#
# Where the compiler comes from: `rustup toolchain install 1.85` needs static.rust-lang.org, which CI here cannot
# reach. When rustup already has a 1.85 toolchain, that one is used. Otherwise this takes Debian 12's rustc-web and
# cargo-web 1.85.x packages (bookworm main) with `apt-get download` and unpacks them, with the four libraries they
# load (LLVM 19, libpcre3, libhttp-parser), into a cache directory: nothing is installed system-wide (rustc-web
# conflicts with rustup), and a second run reuses the cache (EMITTER_MSRV_CACHE, default ~/.cache/emitter/rust-1.85).
# Debian builds rustc from the same source release; it is the real 1.85 language and standard library.
#
# What this verifies: those crates and the dependency versions in Cargo.lock compile with Rust 1.85 (a dependency
# whose own rust-version is newer fails it). What it does not: their tests, benches and examples (dev-dependencies
# such as emitter-testing need 1.88), a fresh resolution without our Cargo.lock (a user's `cargo add` may pick newer
# dependency releases; cargo 1.84+ prefers versions that fit the rust-version when resolving with
# `incompatible-rust-versions = "fallback"`), and emitter-redis's rust-version 1.88 with a 1.88 compiler: Debian has
# no 1.88 (1.85, then 1.96); for it this step only checks, from `cargo metadata`, that no dependency in its build
# declares a rust-version newer than 1.88.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

MSRV=1.85
crates=(emitter-listeners emitter-core emitter-axum emitter-client emitter-state)

declared="$(sed -n 's/^rust-version = "\(.*\)"/\1/p' Cargo.toml)"
if [ "$declared" != "$MSRV" ]; then
    echo "Cargo.toml's workspace rust-version is $declared, this step checks $MSRV: change both" >&2
    exit 1
fi

if rustup run "$MSRV" cargo --version >/dev/null 2>&1; then
    cargo_bin="$(rustup which --toolchain "$MSRV" cargo)"
    rustc_bin="$(rustup which --toolchain "$MSRV" rustc)"
else
    cache="${EMITTER_MSRV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/emitter/rust-$MSRV}"
    if [ ! -x "$cache/usr/bin/cargo" ]; then
        if ! command -v apt-get >/dev/null 2>&1; then
            echo "no Rust $MSRV: rustup has none and this is not a Debian system (apt-get)" >&2
            exit 1
        fi
        as_root=()
        [ "$(id -u)" = 0 ] || as_root=(sudo)
        find_version() {
            apt-cache madison rustc-web 2>/dev/null | awk -F'|' '{ gsub(/ /, "", $2); print $2 }' | grep "^$MSRV\." | head -n 1 || true
        }
        version="$(find_version)"
        if [ -z "$version" ]; then
            "${as_root[@]}" apt-get update -qq
            version="$(find_version)"
        fi
        if [ -z "$version" ]; then
            echo "apt offers no rustc-web $MSRV.x (Debian 12 bookworm has one); cannot check the MSRV" >&2
            exit 1
        fi
        echo "unpacking Debian's rustc-web and cargo-web $version into $cache"
        download="$(mktemp -d)"
        trap 'rm -rf "$download"' EXIT
        chmod 755 "$download" # apt's download sandbox user (_apt) must be able to write there
        (cd "$download" && apt-get download -qq "rustc-web=$version" "cargo-web=$version" \
            "libstd-rust-web-dev=$version" "libstd-rust-web-$MSRV=$version" libllvm19 libpcre3 libhttp-parser2.9 2>&1 |
            grep -v '^W: Download is performed unsandboxed' || true)
        rm -rf "$cache.partial"
        mkdir -p "$cache.partial"
        for deb in "$download"/*.deb; do
            dpkg-deb -x "$deb" "$cache.partial"
        done
        rm -rf "$cache"
        mv "$cache.partial" "$cache"
    fi
    cargo_bin="$cache/usr/bin/cargo"
    rustc_bin="$cache/usr/bin/rustc"
    export RUSTDOC="$cache/usr/bin/rustdoc"
    export LD_LIBRARY_PATH="$cache/usr/lib/x86_64-linux-gnu:$cache/lib/x86_64-linux-gnu${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
export RUSTC="$rustc_bin"
"$cargo_bin" --version
compiler="$("$rustc_bin" --version)"
echo "$compiler"
case "$compiler" in
    "rustc $MSRV."*) ;;
    *)
        echo "expected rustc $MSRV.x" >&2
        exit 1
        ;;
esac

# Its own target directory: the 1.85 build shares nothing with stable's.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-target}/msrv"
packages=()
for crate in "${crates[@]}"; do
    packages+=(-p "$crate")
done
"$cargo_bin" check --locked "${packages[@]}"

# emitter-redis (rust-version 1.88): no dependency of its build may need a newer Rust.
unset RUSTC RUSTDOC LD_LIBRARY_PATH CARGO_TARGET_DIR
if command -v python3 >/dev/null 2>&1; then
    cargo metadata --locked --format-version 1 | python3 -c '
import json, sys
meta = json.load(sys.stdin)
packages = {p["id"]: p for p in meta["packages"]}
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
def parse(v):
    parts = [int(x) for x in (v or "0").split(".")]
    return tuple(parts + [0] * (3 - len(parts)))
root = next(p["id"] for p in meta["packages"] if p["name"] == "emitter-redis")
limit = parse(packages[root]["rust_version"])
seen, todo, bad = set(), [root], []
while todo:
    node = nodes[todo.pop()]
    for dep in node["deps"]:
        if any(k["kind"] in (None, "build") for k in dep["dep_kinds"]) and dep["pkg"] not in seen:
            seen.add(dep["pkg"])
            todo.append(dep["pkg"])
for id in seen:
    p = packages[id]
    if parse(p.get("rust_version")) > limit:
        bad.append("%s %s needs Rust %s" % (p["name"], p["version"], p["rust_version"]))
if bad:
    print("\n".join(bad))
else:
    print("emitter-redis: %d dependencies, none needs more than Rust %s" % (len(seen), packages[root]["rust_version"]))
sys.exit(1 if bad else 0)
'
else
    echo "python3 is not installed: the rust-version of emitter-redis's dependencies is not checked"
fi
