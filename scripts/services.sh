#!/usr/bin/env bash
# Makes a machine of kind rust-svc ready for exhub, idempotently, and fast when already ready:
#   - a local CA and a server certificate for 127.0.0.1, ::1 and localhost, made once with
#     openssl in /var/lib/exhub-tls/ (ca.pem is what clients trust)
#   - RabbitMQ running (127.0.0.1:5672, guest/guest) with the management API (127.0.0.1:15672)
#     and a TLS listener (127.0.0.1:5671) that also takes logins by client certificate
#   - PostgreSQL running with wal_level=logical, room for replication slots/senders, and TLS
#   - MariaDB running with the binlog on, ROW format, FULL row image and row metadata, a
#     server_id, and TLS
#   - xmllint (libxml2-utils), used by the XSD tests
# Settings go into drop-in files; a service restarts (or reloads) only when a setting actually
# changes. The clear-text ports stay open beside TLS.
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

# Debian's chromium (headless) and CJK fonts: the console's browser test renders its pages.
if ! command -v chromium >/dev/null || ! [ -d /usr/share/fonts/opentype/noto ]; then
  log "installing chromium and fonts-noto-cjk (the console's browser test)"
  pkgs="chromium fonts-noto-cjk"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $pkgs >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $pkgs >/dev/null; }
fi

# ---- TLS: a local CA and a server certificate -------------------------------------------
# Made once. The CA's key stays here (root only) to sign more certificates; each server reads
# its own copy of the server key, owned by the user it runs as.
TLS_DIR=/var/lib/exhub-tls
if ! [ -s "$TLS_DIR/ca.pem" ] || ! [ -s "$TLS_DIR/server.pem" ] || ! [ -s "$TLS_DIR/server.key" ]; then
  log "making a local CA and a server certificate in $TLS_DIR"
  install -d -m 755 "$TLS_DIR"
  tls_tmp=$(mktemp -d)
  openssl req -x509 -new -newkey rsa:2048 -nodes -sha256 -days 3650 -subj "/CN=exhub local CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -keyout "$tls_tmp/ca.key" -out "$tls_tmp/ca.pem" 2>/dev/null
  openssl req -new -newkey rsa:2048 -nodes -subj "/CN=localhost" \
    -keyout "$tls_tmp/server.key" -out "$tls_tmp/server.csr" 2>/dev/null
  printf '%s\n' "basicConstraints=critical,CA:FALSE" "keyUsage=critical,digitalSignature,keyEncipherment" \
    "extendedKeyUsage=serverAuth" "subjectAltName=DNS:localhost,IP:127.0.0.1,IP:::1" > "$tls_tmp/server.ext"
  openssl x509 -req -sha256 -days 3650 -in "$tls_tmp/server.csr" -CA "$tls_tmp/ca.pem" -CAkey "$tls_tmp/ca.key" \
    -CAcreateserial -extfile "$tls_tmp/server.ext" -out "$tls_tmp/server.pem" 2>/dev/null
  install -m 600 "$tls_tmp/ca.key" "$TLS_DIR/ca.key"
  install -m 600 "$tls_tmp/server.key" "$TLS_DIR/server.key"
  install -m 644 "$tls_tmp/server.pem" "$TLS_DIR/server.pem"
  install -m 644 "$tls_tmp/ca.pem" "$TLS_DIR/ca.pem"   # last: its presence means "all made"
  rm -rf "$tls_tmp"
fi
# To renew: delete $TLS_DIR and run this script again; each server takes the new files.
tls_renewed=" "
tls_copy() { # tls_copy USER: the server certificate and key, readable by USER only
  local dir=$TLS_DIR/$1
  if ! cmp -s "$TLS_DIR/server.pem" "$dir/server.pem" || ! cmp -s "$TLS_DIR/server.key" "$dir/server.key" \
     || [ "$(stat -c %U "$dir/server.key")" != "$1" ]; then
    install -d -m 700 -o "$1" "$dir"
    install -m 644 -o "$1" "$TLS_DIR/server.pem" "$dir/server.pem"
    install -m 600 -o "$1" "$TLS_DIR/server.key" "$dir/server.key"
    tls_renewed="$tls_renewed$1 "
  fi
}
renewed() { [[ "$tls_renewed" == *" $1 "* ]]; }
tls_copy rabbitmq
tls_copy postgres
tls_copy mysql
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---- RabbitMQ ----------------------------------------------------------------------------
# A TLS listener on 5671 beside the plain one. verify_peer without fail_if_no_peer_cert: a
# client certificate is checked when one is presented, and not required. With one, a client may
# log in by it (SASL EXTERNAL, plugin rabbitmq_auth_mechanism_ssl): its CN is the user name.
mkdir -p /etc/rabbitmq/conf.d
cat > /etc/rabbitmq/conf.d/95-exhub.conf.new <<CONF
# exhub: AMQP over TLS, and logins by client certificate (written by scripts/services.sh)
listeners.ssl.default = 127.0.0.1:5671
ssl_options.cacertfile = $TLS_DIR/ca.pem
ssl_options.certfile = $TLS_DIR/rabbitmq/server.pem
ssl_options.keyfile = $TLS_DIR/rabbitmq/server.key
ssl_options.verify = verify_peer
ssl_options.fail_if_no_peer_cert = false
auth_mechanisms.1 = PLAIN
auth_mechanisms.2 = AMQPLAIN
auth_mechanisms.3 = EXTERNAL
ssl_cert_login_from = common_name
# exhub: no client may send what the hub cannot take in: properties (headers) fit one 32 KiB
# frame for everyone (the hub's frame size), and a message is at most 16 MiB (a batch 8 MiB).
frame_max = 32768
max_message_size = 16777216
CONF
rabbit_restart=false
if renewed rabbitmq; then rabbit_restart=true; fi
if ! cmp -s /etc/rabbitmq/conf.d/95-exhub.conf.new /etc/rabbitmq/conf.d/95-exhub.conf; then
  mv /etc/rabbitmq/conf.d/95-exhub.conf.new /etc/rabbitmq/conf.d/95-exhub.conf
  rabbit_restart=true
else
  rm -f /etc/rabbitmq/conf.d/95-exhub.conf.new
fi
rabbit_start() {
  rabbitmq-server -detached
  wait_for 60 "the RabbitMQ node" rabbitmqctl -q ping
  rabbitmqctl -q await_startup >/dev/null
}
if ! rabbitmqctl -q status >/dev/null 2>&1; then
  log "starting RabbitMQ"
  rabbit_start
  rabbit_restart=false
fi
rabbitmqctl -q await_startup >/dev/null
if $rabbit_restart || ! port_open 5671; then
  # The configuration is read when the node boots: stop_app/start_app would not do.
  log "restarting RabbitMQ for its TLS listener and certificate"
  rabbitmqctl -q shutdown >/dev/null
  wait_for 60 "RabbitMQ to stop" bash -c '! pgrep -u rabbitmq -x beam.smp'
  rabbit_start
  wait_for 60 "RabbitMQ's TLS listener" port_open 5671
fi
# The management API: `exhub provision` creates the exchange's vhost, the hub's user and one
# least-privilege user per org through it (from routes.toml; nothing is created here).
# rabbitmq_auth_mechanism_ssl: logins by client certificate (EXTERNAL), see above.
if ! rabbitmq-plugins -q is_enabled rabbitmq_management rabbitmq_auth_mechanism_ssl >/dev/null 2>&1; then
  log "enabling the RabbitMQ plugins: management, auth_mechanism_ssl"
  rabbitmq-plugins -q enable rabbitmq_management rabbitmq_auth_mechanism_ssl >/dev/null
fi
wait_for 60 "the RabbitMQ management API" curl -sf -u guest:guest http://127.0.0.1:15672/api/overview
log "RabbitMQ ready (TLS on 5671)"

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
cat > "$PG_CONF_DIR/95-exhub.conf.new" <<CONF
# exhub: logical replication for the PostgreSQL source adapter (written by scripts/services.sh)
wal_level = logical
max_replication_slots = 20
max_wal_senders = 20
# exhub: TLS with the local CA's server certificate (scripts/services.sh makes it)
ssl = on
ssl_cert_file = '$TLS_DIR/postgres/server.pem'
ssl_key_file = '$TLS_DIR/postgres/server.key'
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
# TLS settings need a reload only; the proof is a connection that verifies the certificate.
pg_tls() { psql "host=127.0.0.1 user=postgres dbname=postgres sslmode=verify-full sslrootcert=$TLS_DIR/ca.pem" -XAtq -c "select 1"; }
if renewed postgres || ! pg_tls >/dev/null 2>&1; then
  log "reloading PostgreSQL for TLS"
  psql_q "select pg_reload_conf()" >/dev/null
  wait_for 30 "PostgreSQL to serve TLS with the local CA's certificate" pg_tls
fi
log "PostgreSQL ready (wal_level=logical, TLS)"

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
cat > /etc/mysql/conf.d/95-exhub.cnf.new <<CONF
# exhub: binlog for the MySQL/MariaDB source adapter (written by scripts/services.sh)
[mysqld]
server_id = 1
log_bin = mysql-bin
binlog_format = ROW
binlog_row_image = FULL
binlog_row_metadata = FULL
expire_logs_days = 3
# TLS with the local CA's server certificate (scripts/services.sh makes it)
ssl_ca = $TLS_DIR/ca.pem
ssl_cert = $TLS_DIR/mysql/server.pem
ssl_key = $TLS_DIR/mysql/server.key
CONF
if ! cmp -s /etc/mysql/conf.d/95-exhub.cnf.new /etc/mysql/conf.d/95-exhub.cnf; then
  mv /etc/mysql/conf.d/95-exhub.cnf.new /etc/mysql/conf.d/95-exhub.cnf
else
  rm -f /etc/mysql/conf.d/95-exhub.cnf.new
fi
want="1	ROW	FULL	FULL	YES	$TLS_DIR/mysql/server.pem"
my_settings="select @@log_bin, @@binlog_format, @@binlog_row_image, @@binlog_row_metadata, @@have_ssl, @@ssl_cert"
have=$(my_q "$my_settings")
if [ "$have" != "$want" ] || renewed mysql; then
  log "restarting MariaDB for ROW binlog and TLS (had: $have)"
  mariadb-admin -uroot shutdown
  wait_for 60 "MariaDB to stop" bash -c '! pgrep -x mariadbd'
  my_start
  wait_for 60 MariaDB my_q "select 1"
  have=$(my_q "$my_settings")
  [ "$have" = "$want" ] || { log "MariaDB binlog and TLS settings did not take: $have"; exit 1; }
fi
log "MariaDB ready (binlog ROW, FULL image and metadata, TLS)"
