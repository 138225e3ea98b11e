#!/usr/bin/env bash
# Creates the demo's legacy and subscriber databases afresh: the tax bureau's CTAIS in MariaDB
# (with a few registrations), the social security bureau's insurance system in MariaDB (with a
# few enrollments), the least-privilege login exhub reads its binlog with, the commerce
# bureau's mirror in PostgreSQL and the tax bureau's mirror in MariaDB; the commerce bureau's
# legacy registration system in PostgreSQL (with a few licences) and the login exhub replicates
# it with (REPLICATION, SELECT; the publication is created by the database owner here).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
mysql -uroot <<SQL
DROP DATABASE IF EXISTS ctais;
CREATE DATABASE ctais DEFAULT CHARSET utf8mb4;
DROP DATABASE IF EXISTS tax_mirror;
DROP DATABASE IF EXISTS si_legacy;
CREATE DATABASE si_legacy DEFAULT CHARSET utf8mb4;
CREATE DATABASE tax_mirror DEFAULT CHARSET utf8mb4;
CREATE USER IF NOT EXISTS 'exhub_cdc'@'%' IDENTIFIED BY 'demo-cdc';
CREATE USER IF NOT EXISTS 'exhub_cdc'@'localhost' IDENTIFIED BY 'demo-cdc';
GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'exhub_cdc'@'%', 'exhub_cdc'@'localhost';
GRANT SELECT ON ctais.* TO 'exhub_cdc'@'%', 'exhub_cdc'@'localhost';
GRANT SELECT ON si_legacy.* TO 'exhub_cdc'@'%', 'exhub_cdc'@'localhost';
SQL
mysql -uroot ctais < "$here/tax_ctais.sql"
mysql -uroot ctais < "$here/tax_ctais_seed.sql"
mysql -uroot tax_mirror < "$here/tax_mirror.sql"
mysql -uroot si_legacy < "$here/social_si.sql"
mysql -uroot si_legacy < "$here/social_si_seed.sql"
psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS commerce_mirror" -c "CREATE DATABASE commerce_mirror"
psql -q -h 127.0.0.1 -U postgres -d commerce_mirror -f "$here/commerce_mirror.sql"
# A replication slot pins its database: drop the demo source's slot (if a previous run left
# one) before the database.
psql -q -h 127.0.0.1 -U postgres -c "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE database = 'scjg'" >/dev/null
psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS scjg" -c "CREATE DATABASE scjg"
psql -q -h 127.0.0.1 -U postgres -c "DO \$\$ BEGIN CREATE ROLE exhub_cdc LOGIN REPLICATION PASSWORD 'demo-cdc'; EXCEPTION WHEN duplicate_object THEN NULL; END \$\$"
psql -q -h 127.0.0.1 -U postgres -d scjg -f "$here/commerce_saic.sql" -f "$here/commerce_saic_seed.sql" \
  -c "GRANT SELECT ON scjg_yyzz TO exhub_cdc" -c "CREATE PUBLICATION exhub_commerce_scjg FOR TABLE scjg_yyzz"
