#!/usr/bin/env bash
# Runs every test against the real services: the doc tests (nextest does not run those), then
# unit, integration, property and end-to-end tests (cargo nextest).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
# The end-to-end tests run the real `exhub` binary, which `cargo test` alone does not build.
cargo build --workspace --bins --locked --quiet
cargo test --workspace --locked --doc --quiet
cargo nextest run --workspace --locked --profile "${NEXTEST_PROFILE:-default}"
