#!/usr/bin/env bash
# The main job, as far as it exists today (issue 3, the foundation): check the demo exchange,
# validate the sample documents of each department, and convert one JSON → XML → JSON.
# Later issues grow this into the full demo: legacy tables change → hub → subscribers.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
cargo build --locked --quiet --bin exhub
exhub=target/debug/exhub

echo; echo "== exhub check (routes.toml)"
$exhub check
echo; echo "== exhub check on a config with mistakes (every problem, with its place)"
$exhub check --config examples/config/broken-routes.toml || true
echo; echo "== exhub validate (each department's sample document)"
for f in examples/documents/*; do $exhub validate "$f"; done
echo; echo "== exhub convert: JSON → XML"
tmp=$(mktemp -d)
$exhub convert --to xml examples/documents/tax.registration.json | tee "$tmp/tax.xml"
echo "== … and XML → JSON gives back the identical document:"
$exhub convert --to json "$tmp/tax.xml" > "$tmp/back.json"
$exhub convert --to json examples/documents/tax.registration.json > "$tmp/direct.json"
cmp "$tmp/back.json" "$tmp/direct.json" && echo "identical ($(wc -c < "$tmp/back.json") bytes)"
echo; echo "== exhub schema export --xsd tax.registration (first lines)"
$exhub schema export --xsd tax.registration | head -12
rm -rf "$tmp"
