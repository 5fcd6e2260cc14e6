#!/usr/bin/env bash
# Runs the whole test suite: installs and builds what is needed
# (scripts/setup.sh: packages, binaries, guest kernel, images; the browser
# tests' npm packages), then
# `cargo test` for the workspace against a throwaway PostgreSQL
# (scripts/with-postgres.sh) so the store tests run on SQLite and PostgreSQL.
# Tests that boot VMs use QEMU (TCG here) and clean up after themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
# The browser tests' driver (playwright-core, pinned by its lock file), before
# any test runs: the tests' stand-in internet may shadow the registry.
browser=crates/polydev/tests/browser
if ! cmp -s "$browser/package-lock.json" "$browser/node_modules/.installed-lock.json" \
  || [ ! -f "$browser/node_modules/playwright-core/package.json" ]; then
  printf '\n==> installing the browser tests'"'"' packages (npm ci in %s)\n' "$browser" >&2
  (cd "$browser" && npm ci --no-audit --no-fund && cp package-lock.json node_modules/.installed-lock.json)
fi
printf '\n==> running the tests\n' >&2
exec ./scripts/with-postgres.sh cargo test --release --workspace --no-fail-fast -- --test-threads "${POLYDEV_TEST_THREADS:-3}"
