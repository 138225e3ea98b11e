#!/usr/bin/env bash
# The main job: the demo exchange of routes.toml with the hub running. Departments publish
# documents (`exhub publish`, as their own RabbitMQ users), the hub authenticates, validates,
# archives and routes them, and the social security bureau's XML feed shows them arriving
# (`exhub tail`), masked as its route says. A forged document lands in the DLQ with its reason.
# (Legacy databases feeding the hub through change data capture join in the next issues.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
cargo build --locked --quiet --bin exhub
exhub=$PWD/target/debug/exhub
tmp=$(mktemp -d)
hub_pid=
cleanup() {
  [ -n "$hub_pid" ] && kill -TERM "$hub_pid" 2>/dev/null && wait "$hub_pid" 2>/dev/null
  rm -rf "$tmp"
}
trap cleanup EXIT

echo; echo "== exhub check (routes.toml: 4 departments, 2 sources, 3 subscribers, 2 routes)"
$exhub check

# Fresh ids, so that each run's documents are new to the archive (it deduplicates on id).
fresh() { sed -E "0,/\"id\": \"[^\"]+\"|<id>[^<]+<\/id>/s//$(printf '"id": "%s"' "$(cat /proc/sys/kernel/random/uuid)")/" "$1"; }
fresh examples/documents/tax.registration.json > "$tmp/tax.json"
sed -E "0,/<id>[^<]+<\/id>/s//<id>$(cat /proc/sys/kernel/random/uuid)<\/id>/" \
  examples/documents/commerce.business_license.xml > "$tmp/licence.xml"

echo; echo "== exhub hub (in the background; log in $tmp/hub.log)"
EXHUB_LOG=info $exhub hub > "$tmp/hub.log" 2>&1 &
hub_pid=$!

echo; echo "== exhub tail social-feed (XML; capital and phone masked on tax registrations)"
$exhub tail social-feed --count 2 --full > "$tmp/tail.out" 2> "$tmp/tail.err" &
tail_pid=$!
for _ in $(seq 1 100); do grep -q tailing "$tmp/tail.err" 2>/dev/null && break; sleep 0.1; done

echo; echo "== exhub publish: the tax bureau and the commerce bureau, each as its own AMQP user"
EXHUB_AMQP_URL='amqp://nanhai.tax:demo-nanhai.tax@127.0.0.1:5672/%2f' \
  $exhub publish --as nanhai.tax "$tmp/tax.json"
EXHUB_AMQP_URL='amqp://nanhai.commerce:demo-nanhai.commerce@127.0.0.1:5672/%2f' \
  $exhub publish --as nanhai.commerce "$tmp/licence.xml"

for _ in $(seq 1 300); do kill -0 "$tail_pid" 2>/dev/null || break; sleep 0.1; done
kill "$tail_pid" 2>/dev/null || true
echo; echo "== what social-feed received:"
cat "$tmp/tail.out"

echo; echo "== a forged document: the commerce bureau's user sends a tax registration"
fresh examples/documents/tax.registration.json > "$tmp/forged.json"
forged_id=$(grep -oE '"id": "[^"]+"' "$tmp/forged.json" | head -1 | cut -d'"' -f4)
EXHUB_AMQP_URL='amqp://nanhai.commerce:demo-nanhai.commerce@127.0.0.1:5672/%2f' \
  $exhub publish --as nanhai.commerce "$tmp/forged.json"
for _ in $(seq 1 100); do $exhub dlq list | grep -q "$forged_id" && break; sleep 0.1; done
echo "== exhub dlq list (the hub refused it, with its reason):"
$exhub dlq list | grep -E "$forged_id|shown"

echo; echo "== exhub archive search --doc-type tax.registration (latest 3, with delivery status)"
$exhub archive search --doc-type tax.registration --limit 1000 2>/dev/null | tail -3

echo; echo "== stopping the hub (SIGTERM: finish in-flight work, exit 0)"
kill -TERM "$hub_pid"; wait "$hub_pid"; hub_pid=
tail -1 "$tmp/hub.log"
