#!/usr/bin/env bash
# Builds the book (docs/) with mdBook. Installs mdbook first when it is not on PATH. The book's Rust samples are
# written inline in docs/src/*.md, and `cargo test` has compiled and run them already: docs/lib.rs (the crate
# emitter-book) makes every chapter a doctest, and checks that a sample marked `<!-- from: PATH -->` is still in that
# file. This step only checks that the book builds without a warning and that the few remaining `{{#include}}`s
# (whole files: the chat page, the benchmark table) and any anchors they name resolved.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

MDBOOK_VERSION=0.4.52

if ! command -v mdbook >/dev/null 2>&1; then
    echo "installing mdbook $MDBOOK_VERSION"
    cargo install --locked mdbook --version "$MDBOOK_VERSION" --no-default-features --features search
fi
mdbook --version

log="$(mktemp)"
trap 'rm -f "$log"' EXIT
mdbook build docs 2>&1 | tee "$log"

# mdBook only warns about a missing include file or anchor; here that fails the build.
if grep -E '\[(WARN|ERROR)\]' "$log"; then
    echo "the book built with warnings or errors (above)" >&2
    exit 1
fi
if grep -l -e '{{#include' -e 'ANCHOR' docs/book/*.html; then
    echo "unresolved includes or anchor markers in the built book (files above)" >&2
    exit 1
fi
# A missing anchor is not even a warning: it includes nothing. Check that every anchor exists in its file.
missing=0
while IFS= read -r entry; do
    page="${entry%%:\{\{*}"
    spec="${entry#*\{\{#include }"
    spec="${spec%\}\}}"
    file="${spec%%:*}"
    anchor="${spec#"$file"}"
    anchor="${anchor#:}"
    [ -n "$anchor" ] || continue
    case "$anchor" in [0-9]* | :*) continue ;; esac # a line range, not an anchor
    if ! grep -q -E "ANCHOR: *$anchor\b" "$(dirname "$page")/$file"; then
        echo "$page: no anchor '$anchor' in $file" >&2
        missing=1
    fi
done < <(grep -o -H '{{#include [^}]*}}' docs/src/*.md)
[ "$missing" = 0 ] || exit 1

echo "book: $(ls docs/book/*.html | wc -l) pages in docs/book"
