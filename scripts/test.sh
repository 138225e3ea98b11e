#!/usr/bin/env bash
# Runs every test against the real services: unit, integration, property and end-to-end tests
# (cargo nextest), then the doc tests (nextest does not run those).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
cargo nextest run --workspace --locked --profile "${NEXTEST_PROFILE:-default}"
cargo test --workspace --locked --doc
