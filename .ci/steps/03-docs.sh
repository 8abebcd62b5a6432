#!/usr/bin/env bash
# The API documentation builds without a warning (a broken intra-doc link, an unclosed HTML tag, a bare URL, …):
#   1. `cargo doc --workspace --no-deps`, every crate, as `cargo doc` builds it;
#   2. each published crate as docs.rs builds it ([package.metadata.docs.rs] in its Cargo.toml: all features, and
#      `--cfg docsrs`).
# RUSTDOCFLAGS applies to rustdoc only: the dependencies are not documented (--no-deps) and their build is shared
# with the other steps.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

export RUSTDOCFLAGS="-D warnings"
cargo doc --workspace --no-deps

export RUSTDOCFLAGS="-D warnings --cfg docsrs"
for crate in emitter-listeners emitter-core emitter-axum emitter-client emitter-state emitter-redis; do
    echo "--- docs.rs build of $crate"
    cargo doc --no-deps --all-features -p "$crate"
done
