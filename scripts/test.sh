#!/usr/bin/env bash
# The test command (README): every Rust test through cargo-nextest, then the
# standard-library Python client against the real server binary, and the
# conformance test (every error code docs/PROTOCOL.md lists) through it.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo nextest run --workspace --no-fail-fast "$@"
cargo build --quiet -p ferry-cli
target="${CARGO_TARGET_DIR:-target}"
python3 clients/python/test_ferry_client.py --ferry "$target/debug/ferry"
python3 clients/python/test_conformance.py --ferry "$target/debug/ferry"
