#!/usr/bin/env bash
# Runs the whole test suite: installs and builds what is needed
# (scripts/setup.sh: packages, binaries, guest kernel, minimal image), then
# `cargo test` for the workspace against a throwaway PostgreSQL
# (scripts/with-postgres.sh) so the store tests run on SQLite and PostgreSQL.
# Tests that boot VMs use QEMU (TCG here) and clean up after themselves.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
printf '\n==> running the tests\n' >&2
exec ./scripts/with-postgres.sh cargo test --release --workspace --no-fail-fast -- --test-threads "${POLYDEV_TEST_THREADS:-3}"
