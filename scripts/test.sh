#!/usr/bin/env bash
# Runs every test against the real services: the doc tests (nextest does not run those), then
# unit, integration, property and end-to-end tests (cargo nextest), and last, alone, the tests
# that restart a shared service (names starting `restart_`), so nothing runs beside them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
# The end-to-end tests run the real `exhub` binary, which `cargo test` alone does not build.
cargo build --workspace --bins --locked --quiet
cargo test --workspace --locked --doc --quiet
profile="${NEXTEST_PROFILE:-default}"
cargo nextest run --workspace --locked --profile "$profile" -E 'not test(/restart_/)'
cargo nextest run --workspace --locked --profile "$profile" -E 'test(/restart_/)' --test-threads 1
