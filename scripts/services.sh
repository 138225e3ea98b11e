#!/usr/bin/env bash
# Makes a machine of kind rust-svc ready for exhub, idempotently, and fast when already ready:
#   - RabbitMQ running (127.0.0.1:5672, guest/guest) with the management API (127.0.0.1:15672)
#   - PostgreSQL running with wal_level=logical and room for replication slots/senders
#   - MariaDB running with the binlog on, ROW format, FULL row image and row metadata, a server_id
#   - xmllint (libxml2-utils), used by the XSD tests
# Settings go into drop-in files; a service restarts only when a setting actually changes.
# Ports and credentials stay as they were, so other users of the machine are not disturbed.
set -euo pipefail

log() { printf 'services: %s\n' "$*"; }

wait_for() { # wait_for SECONDS DESCRIPTION COMMAND...
  local secs=$1 what=$2; shift 2
  for _ in $(seq 1 $((secs * 5))); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.2
  done
  log "gave up waiting for $what"; return 1
}

# ---- tools -------------------------------------------------------------------------------
if ! command -v xmllint >/dev/null; then
  log "installing libxml2-utils (xmllint)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q libxml2-utils >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q libxml2-utils >/dev/null; }
fi

# ---- RabbitMQ ----------------------------------------------------------------------------
if ! rabbitmqctl -q status >/dev/null 2>&1; then
  log "starting RabbitMQ"
  rabbitmq-server -detached
fi
rabbitmqctl -q await_startup >/dev/null
# The management API: `exhub provision` creates the exchange's vhost, the hub's user and one
# least-privilege user per org through it (from routes.toml; nothing is created here).
if ! rabbitmq-plugins -q is_enabled rabbitmq_management >/dev/null 2>&1; then
  log "enabling the RabbitMQ management plugin"
  rabbitmq-plugins -q enable rabbitmq_management >/dev/null
fi
wait_for 60 "the RabbitMQ management API" curl -sf -u guest:guest http://127.0.0.1:15672/api/overview
log "RabbitMQ ready"

# ---- PostgreSQL --------------------------------------------------------------------------
PG_VERSION=$(ls /etc/postgresql | sort -V | tail -1)
PG_CONF_DIR=/etc/postgresql/$PG_VERSION/main/conf.d
psql_q() { psql -h 127.0.0.1 -U postgres -d postgres -XAtq -c "$1"; }
pg_start() { pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" main start; }
if ! psql_q "select 1" >/dev/null 2>&1; then
  log "starting PostgreSQL $PG_VERSION"
  pg_start || true
  wait_for 60 PostgreSQL psql_q "select 1"
fi
mkdir -p "$PG_CONF_DIR"
cat > "$PG_CONF_DIR/95-exhub.conf.new" <<'CONF'
# exhub: logical replication for the PostgreSQL source adapter (written by scripts/services.sh)
wal_level = logical
max_replication_slots = 20
max_wal_senders = 20
CONF
if ! cmp -s "$PG_CONF_DIR/95-exhub.conf.new" "$PG_CONF_DIR/95-exhub.conf"; then
  mv "$PG_CONF_DIR/95-exhub.conf.new" "$PG_CONF_DIR/95-exhub.conf"
else
  rm -f "$PG_CONF_DIR/95-exhub.conf.new"
fi
if [ "$(psql_q 'show wal_level')" != logical ] || [ "$(psql_q 'show max_replication_slots')" -lt 20 ]; then
  log "restarting PostgreSQL for wal_level=logical"
  pg_ctlcluster --skip-systemctl-redirect "$PG_VERSION" main restart
  wait_for 60 PostgreSQL psql_q "select 1"
fi
[ "$(psql_q 'show wal_level')" = logical ] || { log "PostgreSQL wal_level is not logical"; exit 1; }
log "PostgreSQL ready (wal_level=logical)"

# ---- MariaDB -----------------------------------------------------------------------------
my_q() { mariadb -uroot -h127.0.0.1 -P3306 -N -B -e "$1"; }
my_start() { start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd; }
if ! my_q "select 1" >/dev/null 2>&1; then
  log "starting MariaDB"
  my_start
  wait_for 60 MariaDB my_q "select 1"
fi
mkdir -p /etc/mysql/conf.d
if ! grep -q '^!includedir /etc/mysql/conf.d' /etc/mysql/my.cnf; then
  printf '\n!includedir /etc/mysql/conf.d/\n' >> /etc/mysql/my.cnf
fi
cat > /etc/mysql/conf.d/95-exhub.cnf.new <<'CONF'
# exhub: binlog for the MySQL/MariaDB source adapter (written by scripts/services.sh)
[mysqld]
server_id = 1
log_bin = mysql-bin
binlog_format = ROW
binlog_row_image = FULL
binlog_row_metadata = FULL
expire_logs_days = 3
CONF
if ! cmp -s /etc/mysql/conf.d/95-exhub.cnf.new /etc/mysql/conf.d/95-exhub.cnf; then
  mv /etc/mysql/conf.d/95-exhub.cnf.new /etc/mysql/conf.d/95-exhub.cnf
else
  rm -f /etc/mysql/conf.d/95-exhub.cnf.new
fi
want="1	ROW	FULL	FULL"
have=$(my_q "select @@log_bin, @@binlog_format, @@binlog_row_image, @@binlog_row_metadata")
if [ "$have" != "$want" ]; then
  log "restarting MariaDB for ROW binlog (had: $have)"
  mariadb-admin -uroot shutdown
  wait_for 60 "MariaDB to stop" bash -c '! pgrep -x mariadbd'
  my_start
  wait_for 60 MariaDB my_q "select 1"
  have=$(my_q "select @@log_bin, @@binlog_format, @@binlog_row_image, @@binlog_row_metadata")
  [ "$have" = "$want" ] || { log "MariaDB binlog settings did not take: $have"; exit 1; }
fi
log "MariaDB ready (binlog ROW, FULL image and metadata)"
