#!/usr/bin/env bash
# The main job: the demo exchange of routes.toml, all in one `exhub run` — the hub, the tax
# bureau's CTAIS source (MariaDB binlog, nothing written to the legacy table), the commerce
# bureau's licence source (PostgreSQL logical replication), and the database sinks of the
# commerce bureau (PostgreSQL) and the tax bureau (MariaDB). Legacy rows change;
# documents flow through the hub; the commerce bureau's mirror table and the social security
# bureau's XML feed (`exhub tail`) show them arriving, masked as the routes say. A licence
# published by hand reaches the tax bureau's mirror; a forged document lands in the DLQ. Then
# supervision: the tax mirror's sink stops, a copy waits, the hub raises a yellow then a red
# warning (supervision.alert documents, which the supervision office's feed receives), the sink
# comes back and the warning clears.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
cargo build --locked --quiet --bin exhub
exhub=$PWD/target/debug/exhub
tmp=$(mktemp -d)
run_pid=
tail_pid=
sink_pid=
cleanup() {
  [ -n "$tail_pid" ] && kill "$tail_pid" >/dev/null 2>&1
  [ -n "$sink_pid" ] && kill -TERM "$sink_pid" 2>/dev/null && wait "$sink_pid" >/dev/null 2>&1
  [ -n "$run_pid" ] && kill -TERM "$run_pid" 2>/dev/null && wait "$run_pid" >/dev/null 2>&1
  rm -rf "$tmp"
}
trap cleanup EXIT
ctais() { mysql -uroot ctais -e "$1"; }
mirror() { psql -h 127.0.0.1 -U postgres -d commerce_mirror -XAtq -F ' | ' -c "$1"; }
wait_for() { for _ in $(seq 1 300); do [ "$(eval "$1")" = "$2" ] && return 0; sleep 0.1; done; echo "timed out waiting for: $1 = $2" >&2; return 1; }

echo "== legacy systems: CTAIS (MariaDB, 4 registrations), licences (PostgreSQL, 3), insurance (MariaDB, 3 enrollments); empty mirrors"
bash examples/legacy/setup.sh
rm -rf exhub-state   # the databases are new: so is the source's checkpoint

echo; echo "== signing keys (made once, in exhub-secrets/): the tax bureau SM2, the others Ed25519; the hub's own"
[ -f exhub-secrets/hub.signing-key ] || $exhub keys generate --hub >/dev/null 2>&1
[ -f exhub-secrets/nanhai.tax.signing-key ] || $exhub keys generate --org nanhai.tax --alg sm2 >/dev/null 2>&1
[ -f exhub-secrets/nanhai.commerce.signing-key ] || $exhub keys generate --org nanhai.commerce >/dev/null 2>&1
[ -f exhub-secrets/nanhai.social.signing-key ] || $exhub keys generate --org nanhai.social >/dev/null 2>&1
cut -c1-60 exhub-secrets/*.pub | sed 's/$/…/'

echo; echo "== exhub check (routes.toml: 4 departments and the supervision office, 3 sources, 4 subscribers, 4 routes)"
$exhub check

echo; echo "== exhub provision: vhost exhub, the hub's user, one least-privilege user per department"
$exhub provision | tail -1


# Fresh ids, so that each run's documents are new to the archive (it deduplicates on id).
fresh() { sed -E "0,/\"id\": \"[^\"]+\"|<id>[^<]+<\/id>/s//$(printf '"id": "%s"' "$(cat /proc/sys/kernel/random/uuid)")/" "$1"; }
sed -E "0,/<id>[^<]+<\/id>/s//<id>$(cat /proc/sys/kernel/random/uuid)<\/id>/" \
  examples/documents/commerce.business_license.xml > "$tmp/licence.xml"

echo; echo "== exhub tail social-feed (XML; capital and phone masked on tax registrations)"
$exhub tail social-feed > "$tmp/tail.out" 2> "$tmp/tail.err" &
tail_pid=$!
for _ in $(seq 1 100); do grep -q tailing "$tmp/tail.err" 2>/dev/null && break; sleep 0.1; done

echo; echo "== exhub run: hub + CTAIS, licence and insurance sources + both database sinks (log in $tmp/run.log)"
EXHUB_LOG=info $exhub run > "$tmp/run.log" 2>&1 &
run_pid=$!
# The snapshot: the three Nanhai registrations (the route's filter keeps 禅城's out).
wait_for 'mirror "SELECT count(*) FROM tax_registration"' 3
echo "commerce_mirror.tax_registration after the snapshot:"
mirror "SELECT taxpayer_id, name, registration_type, taxpayer_status, capital FROM tax_registration ORDER BY taxpayer_id"

echo; echo "== the tax bureau works in CTAIS: a new taxpayer, a rename, a deregistration deleted, a two-row transaction"
ctais "INSERT INTO nsr_djxx VALUES ('91440605MA4UJ7KX2M', '佛山市南海区云帆信息技术有限公司', '赵敏', CURDATE(), '173', '03', '南海', '佛山市南海区桂城街道融和路23号', 3000000.00, 'I6510', '国家税务总局佛山市南海区税务局桂城税务分局', '0757-86660001', NOW())"
ctais "UPDATE nsr_djxx SET nsrmc = '佛山市南海区恒达智能五金有限公司', xgsj = NOW() WHERE nsrsbh = '91440605MA4UJ7KX1J'"
ctais "DELETE FROM nsr_djxx WHERE nsrsbh = '92440605MA52LM8R4G'"
ctais "START TRANSACTION; UPDATE nsr_djxx SET zczb = 6000000.00, xgsj = NOW() WHERE nsrsbh = '91440605MA51XQ2P35'; INSERT INTO nsr_djxx VALUES ('91440605MA4UJ7KX3Q', '佛山市南海区里水镇和顺食品厂', '何伟', CURDATE(), '171', '03', '南海', NULL, NULL, 'C1469', NULL, NULL, NOW()); COMMIT"
wait_for 'mirror "SELECT count(*) FROM tax_registration WHERE taxpayer_id = '"'"'91440605MA4UJ7KX3Q'"'"'"' 1
echo "commerce_mirror.tax_registration now:"
mirror "SELECT taxpayer_id, name, registration_type, capital, updated_at FROM tax_registration ORDER BY taxpayer_id"

taxm() { mysql -uroot -N tax_mirror -e "$1"; }
echo; echo "== the commerce bureau's licences (PostgreSQL scjg) reached the tax mirror (MariaDB) through the snapshot:"
wait_for 'taxm "SELECT count(*) FROM business_license"' 3
mysql -uroot tax_mirror -e "SELECT credit_code, company_name, company_type, status FROM business_license ORDER BY credit_code"

echo; echo "== the commerce bureau works in its PostgreSQL system: a new licence with a long business scope (TOASTed), a cancellation"
psql -h 127.0.0.1 -U postgres -d scjg -XAtq -c "INSERT INTO scjg_yyzz (tyshxydm, qymc, qylx, fddbr, zczb, clrq, jyfw, zs, ssq, djzt, djjg, fzrq) VALUES ('91440605MA4UJ7KX2M', '佛山市南海区云帆信息技术有限公司', '1100', '赵敏', 3000000.00, CURRENT_DATE, repeat('软件开发；信息技术咨询服务；', 120), '佛山市南海区桂城街道融和路23号', '南海', '1', '佛山市南海区市场监督管理局', CURRENT_DATE)" \
  -c "UPDATE scjg_yyzz SET djzt = '3' WHERE tyshxydm = '92440605MA52LM8R4G'"
wait_for 'taxm "SELECT count(*) FROM business_license WHERE status = '"'"'cancelled'"'"' OR CHAR_LENGTH(business_scope) > 1000"' 2
mysql -uroot tax_mirror -e "SELECT credit_code, company_name, status, CHAR_LENGTH(business_scope) AS scope_chars FROM business_license ORDER BY credit_code"

echo; echo "== the social security bureau's enrollments (MariaDB si_legacy, several insurance codes in one column) reached the tax mirror, gender and birth date masked:"
wait_for 'taxm "SELECT count(*) FROM social_security_enrollment"' 3
mysql -uroot tax_mirror -e "SELECT enrollment_id, person_name, employer_credit_code, insurance_types, contribution_base, status FROM social_security_enrollment ORDER BY enrollment_id"
echo "== a new enrollment and a contribution base change:"
mysql -uroot si_legacy -e "INSERT INTO si_cbdj VALUES ('SI4406052026000904', '440605199511304565', '赵敏', '2', '1995-11-30', '91440605MA4UJ7KX2M', '佛山市南海区云帆信息技术有限公司', '110,310,210', 9800.00, CURDATE(), NULL, '1', '南海'); UPDATE si_cbdj SET jfjs = 6100.00 WHERE cbdjh = 'SI4406052020000702'"
wait_for 'taxm "SELECT count(*) FROM social_security_enrollment WHERE contribution_base = 6100.00 OR enrollment_id = '"'"'SI4406052026000904'"'"'"' 2
mysql -uroot tax_mirror -e "SELECT enrollment_id, person_name, insurance_types, contribution_base FROM social_security_enrollment ORDER BY enrollment_id"

echo; echo "== exhub publish: the commerce bureau publishes a licence by hand, as its own AMQP user (password file from exhub provision)"
$exhub publish --as nanhai.commerce "$tmp/licence.xml"
wait_for 'taxm "SELECT count(*) FROM business_license WHERE credit_code = '"'"'91440605MA51RD2K7Y'"'"'"' 1
echo "it reached the tax mirror too."

kill "$tail_pid" 2>/dev/null || true; tail_pid=
echo; echo "== what social-feed received (one line per document):"
cat "$tmp/tail.out"

echo; echo "== a forged document: the commerce bureau's user sends a tax registration"
fresh examples/documents/tax.registration.json > "$tmp/forged.json"
forged_id=$(grep -oE '"id": "[^"]+"' "$tmp/forged.json" | head -1 | cut -d'"' -f4)
$exhub publish --as nanhai.commerce "$tmp/forged.json"
for _ in $(seq 1 100); do $exhub dlq list | grep -q "$forged_id" && break; sleep 0.1; done
echo "== exhub dlq list (the hub refused it, with its reason):"
$exhub dlq list | grep -E "$forged_id|shown"

echo; echo "== exhub archive search --doc-type tax.registration (latest 3, with delivery status)"
$exhub archive search --doc-type tax.registration --limit 1000 2>/dev/null | tail -3

licence_id=$(grep -oE '<id>[^<]+</id>' "$tmp/licence.xml" | head -1 | sed -E 's/<\/?id>//g')
echo; echo "== exhub archive show: the hand-published licence's chain — received, archived, published, applied (the tax mirror's receipt)"
wait_for '$exhub archive show "$licence_id" | grep -c "applied    tax-mirror"' 1
$exhub archive show "$licence_id"

echo; echo "== exhub audit verify: the archive's hash-chained audit log"
$exhub audit verify
$exhub audit list --limit 4 | cut -c1-150

echo; echo "== what the hub counted: GET http://127.0.0.1:8480/metrics ([hub] admin; Prometheus text)"
curl -sf http://127.0.0.1:8480/metrics | grep -E '^exhub_(documents_received|documents_refused|copies_published)' || true

echo; echo "== supervision (电子监察): every source and sink reports to the hub (GET /metrics, exhub_part_up)"
echo "   the console, while the demo runs: http://127.0.0.1:8480/console (login supervisor / demo-supervisor;"
echo "   the tax bureau's operator: tax / demo-tax); the API: curl -u supervisor:demo-supervisor http://127.0.0.1:8480/api/v1/overview"
wait_for 'curl -sf http://127.0.0.1:8480/metrics | grep -cE "^exhub_part_up.* 1$"' 5
wait_for 'curl -sf http://127.0.0.1:8480/metrics | grep -cE "^exhub_sink_documents.subscriber=.commerce-mirror.,outcome=.applied.. [1-9]"' 1
curl -sf http://127.0.0.1:8480/metrics | grep -E '^exhub_(part_up|source_lag_seconds|sink_documents)' || true

echo; echo "== the tax mirror's sink stops (exhub run --except tax-mirror); the supervision office tails its alert feed"
kill -TERM "$run_pid"; wait "$run_pid"; run_pid=
$exhub tail supervision-office > "$tmp/office.out" 2> "$tmp/office.err" &
tail_pid=$!
for _ in $(seq 1 100); do grep -q tailing "$tmp/office.err" 2>/dev/null && break; sleep 0.1; done
EXHUB_LOG=info $exhub run --except tax-mirror > "$tmp/run2.log" 2>&1 &
run_pid=$!
wait_for 'grep -c "this hub process watches the alerts" "$tmp/run2.log"' 1
echo "the commerce bureau publishes another licence; it waits for the tax mirror, which the routes.toml rule"
echo "expects within seconds (yellow 预警 after 5 s, red 告警 after 15 s; checked every 10 s):"
sed -E "0,/<id>[^<]+<\/id>/s//<id>$(cat /proc/sys/kernel/random/uuid)<\/id>/" "$tmp/licence.xml" > "$tmp/licence2.xml"
$exhub publish --as nanhai.commerce "$tmp/licence2.xml"
alerts() { grep -E '预警 alert|告警 alert|alert cleared' "$tmp/run2.log" | grep -c "$1" || true; }
for _ in $(seq 1 600); do [ "$(alerts '告警 alert')" -ge 1 ] && break; sleep 0.1; done
curl -sf http://127.0.0.1:8480/metrics | grep -E '^exhub_(alert_level|unapplied_copies|part_up)' || true
echo; echo "== the tax mirror's sink starts again (exhub sink tax-mirror): the copy is applied and the alert clears"
EXHUB_LOG=info $exhub sink tax-mirror > "$tmp/sink.log" 2>&1 &
sink_pid=$!
for _ in $(seq 1 600); do [ "$(alerts 'alert cleared')" -ge 1 ] && break; sleep 0.1; done
echo "the hub's log:"
grep -E '预警 alert|告警 alert|alert cleared' "$tmp/run2.log" | sed -E 's/^[^ ]+ +//' | cut -c1-200
echo "the console's open alerts (GET /api/v1/overview as the hub's operator):"
curl -sf -u supervisor:demo-supervisor http://127.0.0.1:8480/api/v1/overview \
  | grep -oE '"alert":"[^"]+","metric":"[^"]+","scope":"[^"]+","level":"[^"]+"' || echo "(none open)"
kill "$tail_pid" 2>/dev/null || true; tail_pid=
echo "what the supervision office received (supervision.alert documents, archived and routed like any other):"
cat "$tmp/office.out"
kill -TERM "$sink_pid"; wait "$sink_pid"; sink_pid=

echo; echo "== exhub stats: today's statistics per department, then per subscriber (also --format csv|json, --by doc_type|day)"
$exhub stats
$exhub stats --by subscriber

echo; echo "== stopping the exchange (SIGTERM: finish in-flight work, exit 0)"
kill -TERM "$run_pid"; wait "$run_pid"; run_pid=
tail -1 "$tmp/run2.log"
