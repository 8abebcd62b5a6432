#!/usr/bin/env bash
# cargo-deny over the whole dependency graph (deny.toml): every dependency's license is on the allowed list, no banned
# crate (aws-lc-rs, OpenSSL, native-tls: TLS is rustls on ring), no `*` requirement, and every crate comes from
# crates.io. The advisories check is not run: it needs the RustSec advisory database from github.com, which CI here
# cannot reach (deny.toml configures it for a machine that can).
# Installs cargo-deny from crates.io when it is missing (`cargo install --locked cargo-deny`, 0.20.2: 3 CPU-minutes,
# 21 minutes of wall time on a 2-core machine shared with five other builds; once, then ~/.cargo/bin has it). The
# check itself takes seconds. Duplicate versions are warnings (listed without their inclusion trees).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."

if ! cargo deny --version >/dev/null 2>&1; then
    echo "installing cargo-deny"
    cargo install --locked cargo-deny
fi
cargo deny --version

cargo deny --locked check --hide-inclusion-graph licenses bans sources
