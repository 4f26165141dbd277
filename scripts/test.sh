#!/usr/bin/env bash
# The one gate, for a newcomer and for CI alike: formatting, lints, every
# test (unit, and integration against a private redis-server, and for the
# orders sink a private PostgreSQL, and for several nodes a private haproxy,
# that each test starts itself; promtool checks /metrics, headless
# Chromium renders a bench report), and the docs with warnings denied.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

need redis-server redis-server
need haproxy haproxy
need promtool --no-install-recommends prometheus   # `promtool check metrics` (tests/metrics.rs)
need chromium chromium                             # renders a bench report (tests/report.rs)
need_postgres

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --all-targets --quiet -- -D warnings
echo "== cargo clippy --lib --bins -- -D warnings (the shipped build: no test fixtures)"
cargo clippy --lib --bins --quiet -- -D warnings
echo "== cargo test"
cargo test --all-targets
echo "== cargo doc (warnings denied; private items too: the docs are the map)"
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --document-private-items --quiet
echo "== all checks passed"
