#!/usr/bin/env bash
# Each published crate packages as crates.io would take it: `cargo package` checks its manifest (a version on every
# path dependency, the readme and license fields), lists what goes into the .crate, and verifies it by building the
# unpacked .crate on its own, outside the workspace. The crates depend on one another and none is on crates.io yet:
# packaged together, cargo resolves emitter-core and the others from the .crate files it just made (a local overlay
# of crates.io), so the verification builds exactly what would be published, each against the others' packages.
# The unpublished crates (emitter-testing, emitter-bench, the examples, the book: `publish = false`) are not packaged;
# a dev-dependency on one of them has no version and cargo drops it from the package. About 3.5 minutes on 2 busy
# cores (the verification builds each package in debug, sharing target/ with the other steps).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

packages=()
for crate in emitter-listeners emitter-core emitter-axum emitter-client emitter-state emitter-redis; do
    packages+=(-p "$crate")
done
# Cargo unpacks each overlaid .crate into $CARGO_HOME/registry/src/<overlay>/<name>-<version>/ and reuses that folder
# when it finds one: on a machine that packaged these crates before at the same version, the verification would build
# the others against that old source. Nothing of ours comes from crates.io, so those folders only ever hold our own
# earlier packages: remove them first.
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
for crate in emitter-listeners emitter-core emitter-axum emitter-client emitter-state emitter-redis; do
    rm -rf "$cargo_home"/registry/src/*/"$crate"-[0-9]*
done
# --allow-dirty: packages the working tree as it is, so that .ci/run also passes with uncommitted changes.
cargo package --locked --allow-dirty "${packages[@]}"
ls -l "${CARGO_TARGET_DIR:-target}"/package/*.crate
# The MIT license asks for its notice in every copy: each crate carries the workspace's LICENSE (a link in its folder).
for crate in emitter-listeners emitter-core emitter-axum emitter-client emitter-state emitter-redis; do
    # The listing is read whole first: `grep -q` stops early, and tar's broken pipe would fail the pipeline.
    listing="$(tar -tzf "${CARGO_TARGET_DIR:-target}"/package/"$crate"-[0-9]*.crate)"
    if ! grep -q '/LICENSE$' <<<"$listing"; then
        echo "error: the $crate package has no LICENSE" >&2
        exit 1
    fi
done
