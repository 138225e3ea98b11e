#!/usr/bin/env bash
# A three-node RabbitMQ cluster on this one machine, beside the machine's own broker
# (rabbit@localhost on 5672/5671/15672, which this script never touches):
#
#   node                AMQP            management (HTTP API)   Erlang distribution
#   exhub-c1@localhost  127.0.0.1:5701  127.0.0.1:15701         127.0.0.1:25701
#   exhub-c2@localhost  127.0.0.1:5702  127.0.0.1:15702         127.0.0.1:25702
#   exhub-c3@localhost  127.0.0.1:5703  127.0.0.1:15703         127.0.0.1:25703
#
# Usage (as root, like scripts/services.sh; the RabbitMQ wrappers switch to the rabbitmq user):
#   scripts/cluster.sh start          start the nodes that are down, cluster c2 and c3 with c1,
#                                     wait until cluster_status shows 3 running nodes
#   scripts/cluster.sh stop           stop all three nodes (their data is kept)
#   scripts/cluster.sh stop-node N    stop node N (1..3); returns once its ports are closed
#   scripts/cluster.sh start-node N   start node N; returns once it runs and is back in the cluster
#   scripts/cluster.sh status         which nodes run, and the cluster status
#   scripts/cluster.sh check          declare a quorum queue through c1, check it has 3 members,
#                                     delete it (start does this after it changed anything)
#   scripts/cluster.sh reset          stop, and delete all the cluster's data
# A command fails with a clear message when its state is not reached within CLUSTER_TIMEOUT
# seconds (default 60; start waits twice that long, it boots three nodes on a shared machine).
#
# Each node has everything of its own under /var/lib/exhub-cluster/exhub-cN/ (owned by
# rabbitmq): rabbitmq.conf, enabled_plugins, mnesia/ (data, quorum queue logs), log/, the pid
# file. The nodes load none of /etc/rabbitmq: RABBITMQ_CONFIG_FILE / RABBITMQ_CONFIG_FILES /
# RABBITMQ_ADVANCED_CONFIG_FILE point at the node's own files (the default
# /etc/rabbitmq/conf.d/*.conf holds the main broker's TLS listener on 5671), and
# RABBITMQ_CONF_ENV_FILE points at /var/lib/exhub-cluster/rabbitmq-env.conf instead of
# /etc/rabbitmq/rabbitmq-env.conf (whose NODENAME=rabbit@localhost is the main broker's; a
# RABBITMQ_NODENAME in the environment would win over it too, but nothing else from that file
# should leak into these nodes either). The cookie is the rabbitmq user's, shared with the main
# broker, so rabbitmqctl reaches these nodes as it reaches rabbit@localhost.
#
# Quorum queues: nothing needs setting for them to survive one node of three being down. A
# quorum queue declared without x-quorum-initial-group-size gets a member on every cluster node
# (3), and a majority (2) keeps it available. `check` proves it on the running cluster.
#
# Restarting from kept data: a clustered node that was not the last one stopped waits (up to
# 10 x 30 s by default) at boot for a peer to sync its tables from. Booting the nodes one after
# another, each waiting until the previous one runs, could therefore deadlock; `start` launches
# every stopped node at once and only then waits. `stop` stops c2 and c3 first and c1 last, so
# c1 alone can also boot by itself. No force_boot: it is for disaster recovery, and a node
# forced to boot alone can diverge from its peers.
set -euo pipefail

BASE=/var/lib/exhub-cluster
TIMEOUT=${CLUSTER_TIMEOUT:-60}
CHECK_QUEUE=exhub-cluster-check

log() { printf 'cluster: %s\n' "$*"; }
die() { printf 'cluster: error: %s\n' "$*" >&2; exit 1; }

node() { printf 'exhub-c%s@localhost' "$1"; }
dir_of() { printf '%s/exhub-c%s' "$BASE" "$1"; }
amqp_port() { printf '%s' $((5700 + $1)); }
mgmt_port() { printf '%s' $((15700 + $1)); }
dist_port() { printf '%s' $((25700 + $1)); }
pid_file() { printf '%s/exhub-c%s.pid' "$(dir_of "$1")" "$1"; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
vm_alive() { port_open "$(dist_port "$1")"; }    # the node's Erlang VM is up
app_up() { port_open "$(amqp_port "$1")"; }      # RabbitMQ on it has booted (AMQP listener open)

ctl() { # ctl N ARGS...: rabbitmqctl against node N, bounded in time
  local n=$1; shift
  timeout $((TIMEOUT + 30)) rabbitmqctl -n "$(node "$n")" "$@"
}

# What node N's `cluster_status --formatter json` says, in one call: DISK and RUNNING get the
# disc nodes and the running nodes, sorted and space separated ("" when N does not answer)
DISK="" RUNNING=""
cluster_view() { # cluster_view N
  local json out
  DISK="" RUNNING=""
  json=$(ctl "$1" -q cluster_status --formatter json 2>/dev/null) || return 0
  out=$(printf '%s' "$json" | python3 -c '
import json, sys
try:
    d = json.load(sys.stdin)
except ValueError:
    sys.exit(0)
print(" ".join(sorted(d.get("disk_nodes") or [])))
print(" ".join(sorted(d.get("running_nodes") or [])))') || return 0
  DISK=$(printf '%s\n' "$out" | sed -n 1p)
  RUNNING=$(printf '%s\n' "$out" | sed -n 2p)
}
has_word() { [[ " $1 " == *" $2 "* ]]; }
all_nodes() { printf '%s %s %s' "$(node 1)" "$(node 2)" "$(node 3)"; }

die_with_log() { # die_with_log N MESSAGE: fail, showing the end of node N's log
  local f
  f="$(dir_of "$1")/log/$(node "$1").log"
  printf 'cluster: error: %s\n' "$2" >&2
  if [ -s "$f" ]; then
    printf 'cluster: last lines of %s:\n' "$f" >&2
    tail -n 12 "$f" | sed 's/^/    /' >&2
  fi
  exit 1
}

# ---- per-node files ------------------------------------------------------------------------
write_if_changed() { # write_if_changed FILE (content on stdin): 0 if the file changed
  local f=$1 tmp
  tmp=$(mktemp)
  cat > "$tmp"
  if cmp -s "$tmp" "$f"; then rm -f "$tmp"; return 1; fi
  install -m 644 -o rabbitmq -g rabbitmq "$tmp" "$f"
  rm -f "$tmp"
}

prepare_base() {
  install -d -m 755 -o rabbitmq -g rabbitmq "$BASE"
  # Like /etc/rabbitmq/rabbitmq-env.conf, without its NODENAME: epmd and the distribution on
  # 127.0.0.1 only. (epmd itself is normally the one the main broker started already.)
  write_if_changed "$BASE/rabbitmq-env.conf" <<'ENV' || true
# exhub cluster nodes (written by scripts/cluster.sh): used instead of /etc/rabbitmq/rabbitmq-env.conf
ERL_EPMD_ADDRESS=127.0.0.1
export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"
ENV
}

prepare_node() { # prepare_node N: directories and configuration of node N
  local n=$1 d
  d=$(dir_of "$n")
  install -d -m 750 -o rabbitmq -g rabbitmq "$d" "$d/mnesia" "$d/log" "$d/conf.d"
  if write_if_changed "$d/rabbitmq.conf" <<CONF && vm_alive "$n"; then
# exhub cluster node $(node "$n") (written by scripts/cluster.sh)
listeners.tcp.default = 127.0.0.1:$(amqp_port "$n")
listeners.ssl = none
management.tcp.ip = 127.0.0.1
management.tcp.port = $(mgmt_port "$n")
cluster_name = exhub-cluster
# guest/guest may log in, from 127.0.0.1 only (the default)
loopback_users.guest = true
# modest: 10% of RAM before publishers are blocked; stop taking messages under 200 MB of free disk
vm_memory_high_watermark.relative = 0.1
disk_free_limit.absolute = 200MB
# as the main broker (scripts/services.sh): what the hub can take in
frame_max = 32768
max_message_size = 16777216
log.file.level = info
log.console = false
CONF
    log "$(node "$n")'s configuration changed: it takes effect when the node restarts (stop-node $n, start-node $n)"
  fi
  write_if_changed "$d/enabled_plugins" <<'PLUGINS' || true
[rabbitmq_management].
PLUGINS
}

launch() { # launch N: boot node N in the background (returns at once)
  local n=$1 d
  d=$(dir_of "$n")
  prepare_node "$n"
  rm -f "$(pid_file "$n")"   # the node writes its own; a stale one would pass for it
  touch "$d/log/launch.log" && chown rabbitmq:rabbitmq "$d/log/launch.log"   # the launcher's own output
  log "starting $(node "$n") (AMQP 127.0.0.1:$(amqp_port "$n"), management 127.0.0.1:$(mgmt_port "$n"))"
  # Explicit RABBITMQ_* variables win over anything from a rabbitmq-env.conf (rabbit_env only
  # takes a file's variable when neither it nor its RABBITMQ_ twin is set), and the env file is
  # our own anyway. The wrapper (run as root) passes the environment on through `su rabbitmq`.
  (
    cd "$d"
    export RABBITMQ_CONF_ENV_FILE="$BASE/rabbitmq-env.conf"
    export RABBITMQ_NODENAME
    RABBITMQ_NODENAME=$(node "$n")
    export RABBITMQ_NODE_IP_ADDRESS=127.0.0.1
    export RABBITMQ_NODE_PORT
    RABBITMQ_NODE_PORT=$(amqp_port "$n")
    export RABBITMQ_DIST_PORT
    RABBITMQ_DIST_PORT=$(dist_port "$n")
    export RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf"
    export RABBITMQ_CONFIG_FILES="$d/conf.d/*.conf"
    export RABBITMQ_ADVANCED_CONFIG_FILE="$d/advanced.config"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins"
    export RABBITMQ_MNESIA_BASE="$d/mnesia"
    export RABBITMQ_MNESIA_DIR="$d/mnesia/$RABBITMQ_NODENAME"
    export RABBITMQ_LOG_BASE="$d/log"
    export RABBITMQ_PID_FILE
    RABBITMQ_PID_FILE=$(pid_file "$n")
    exec rabbitmq-server -detached
  ) >> "$d/log/launch.log" 2>&1 9>&- || { tail -n 20 "$d/log/launch.log" >&2; die "could not launch $(node "$n")"; }
}

node_pid_alive() { # the process in node N's pid file runs
  local p
  p=$(cat "$(pid_file "$1")" 2>/dev/null) || return 1
  [ -n "$p" ] && kill -0 "$p" 2>/dev/null
}

# wait_booted SECONDS N...: until RabbitMQ has booted on every node N. A node whose VM exits
# while booting is launched again (twice at most): with 3.10, a node booting beside a peer that
# is itself still booting can fail its feature flag sync with that peer
# ({incompatible_feature_flags,{badrpc,...{badmap,undefined}...}} in its log) and halt; booted
# again once the peer runs, it comes up.
wait_booted() {
  local secs=$1; shift
  local deadline=$((SECONDS + secs)) pending="$*" still n
  local -A tries=() since=()
  for n in $pending; do tries[$n]=0; since[$n]=$SECONDS; done
  while [ -n "$pending" ]; do
    still=""
    for n in $pending; do
      if app_up "$n"; then
        # the AMQP listener opens near the end of the boot; await_startup waits out the rest
        if timeout 60 rabbitmqctl -n "$(node "$n")" -q await_startup --timeout 50 >/dev/null 2>&1; then continue; fi
      elif ! vm_alive "$n" && { [ -s "$(pid_file "$n")" ] && ! node_pid_alive "$n" \
                                || [ $((SECONDS - since[$n])) -ge 20 ]; }; then
        if [ "${tries[$n]}" -ge 2 ]; then
          die_with_log "$n" "$(node "$n") failed to boot, $((tries[$n] + 1)) times"
        fi
        tries[$n]=$((tries[$n] + 1))
        log "$(node "$n") stopped while booting (see its log): starting it again"
        launch "$n"
        since[$n]=$SECONDS
      fi
      still="$still $n"
    done
    pending=${still# }
    [ -n "$pending" ] || break
    if [ $SECONDS -ge $deadline ]; then
      n=${pending%% *}
      die_with_log "$n" "$(node "$n") did not finish booting within ${secs}s (a node that was not the last one stopped waits for a peer to come up: are the others stopped? 'scripts/cluster.sh start' starts them all)"
    fi
    sleep 1
  done
}

is_booting() { ctl "$1" -q eval 'rabbit:is_booting().' 2>/dev/null | grep -qx true; }

# ---- clustering ----------------------------------------------------------------------------
join() { # join N: node N (2 or 3, its VM up) is a member of c1's cluster, with RabbitMQ running
  local n=$1 mine theirs forgot=false
  if ! app_up "$n" && ! is_booting "$n"; then
    # its VM runs without RabbitMQ (an interrupted join?): cluster_status needs RabbitMQ running
    log "starting RabbitMQ on $(node "$n") again"
    ctl "$n" -q start_app >/dev/null 2>&1 || log "RabbitMQ on $(node "$n") does not start as it is"
  fi
  cluster_view 1; theirs=$DISK
  [ -n "$theirs" ] || die "$(node 1) does not answer; start it first"
  cluster_view "$n"; mine=$DISK
  if has_word "$mine" "$(node 1)" && has_word "$theirs" "$(node "$n")"; then return 0; fi
  log "$(node "$n") joins $(node 1)'s cluster"
  ctl "$n" -q stop_app >/dev/null
  if [ -n "$mine" ] && has_word "$theirs" "$(node "$n")"; then
    # c1 counts a former incarnation of this node, which runs on its own now (its data was
    # deleted): c1 forgets that one (which also drops it from the quorum queues), then it joins
    log "$(node 1) still lists a former $(node "$n"): forgetting it first"
    ctl 1 -q forget_cluster_node "$(node "$n")" >/dev/null
    forgot=true
  fi
  # join_cluster resets the node itself when it has to; a plain reset only if it still refuses
  # (e.g. the node is the last disc node of a cluster of its own)
  if ! ctl "$n" -q join_cluster "$(node 1)" >/dev/null 2>&1; then
    log "$(node "$n") could not join as it is: resetting it and joining again"
    ctl "$n" -q reset >/dev/null
    ctl "$n" -q join_cluster "$(node 1)" >/dev/null || die "$(node "$n") could not join $(node 1)'s cluster"
  fi
  ctl "$n" -q start_app >/dev/null || die "RabbitMQ on $(node "$n") did not start again after joining"
  if $forgot; then
    # give the quorum queues their member on this node back
    timeout $((TIMEOUT + 30)) rabbitmq-queues -n "$(node 1)" -q grow "$(node "$n")" all >/dev/null \
      || log "warning: could not add $(node "$n") back to the quorum queues (rabbitmq-queues grow $(node "$n") all)"
  fi
}

wait_clustered() { # wait_clustered N SECONDS: N's cluster_status lists every node whose app is up
  local n=$1 secs=$2 want running deadline
  deadline=$((SECONDS + secs))
  while :; do
    want="$(node "$n")"
    for m in 1 2 3; do if [ "$m" != "$n" ] && app_up "$m"; then want="$want $(node "$m")"; fi; done
    cluster_view "$n"; running=$RUNNING
    local ok=true
    for w in $want; do has_word "$running" "$w" || ok=false; done
    $ok && return 0
    [ $SECONDS -lt $deadline ] || die "$(node "$n") is not back in the cluster after ${secs}s: it sees running nodes [$running], expected [$want]"
    sleep 1
  done
}

clustered() { # all three run and c1's cluster_status lists all three, running, as disc nodes
  app_up 1 && app_up 2 && app_up 3 || return 1
  cluster_view 1
  [ "$DISK" = "$(all_nodes)" ] && [ "$RUNNING" = "$(all_nodes)" ]
}

report() { # one line per node, from the last cluster_view of c1
  local n
  for n in 1 2 3; do
    if has_word "$RUNNING" "$(node "$n")"; then
      log "$(node "$n") running: amqp://127.0.0.1:$(amqp_port "$n") management http://127.0.0.1:$(mgmt_port "$n") (distribution $(dist_port "$n"))"
    elif app_up "$n"; then
      log "$(node "$n") running, but not in $(node 1)'s cluster"
    else
      log "$(node "$n") stopped"
    fi
  done
}

# ---- the quorum queue check ----------------------------------------------------------------
api() { # api METHOD PATH [JSON]: the management HTTP API of c1, as guest
  curl -sS -f -u guest:guest -X "$1" -H 'content-type: application/json' \
    ${3:+--data "$3"} "http://127.0.0.1:$(mgmt_port 1)/api$2"
}

check_quorum() {
  local deadline members
  deadline=$((SECONDS + TIMEOUT))
  until api GET /overview >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "the management API of $(node 1) on $(mgmt_port 1) does not answer"
    sleep 0.5
  done
  api PUT "/queues/%2F/$CHECK_QUEUE" '{"durable":true,"auto_delete":false,"arguments":{"x-queue-type":"quorum"}}' >/dev/null \
    || die "could not declare the quorum queue $CHECK_QUEUE through $(node 1)"
  members=$(timeout $((TIMEOUT + 30)) rabbitmq-queues -n "$(node 1)" -q quorum_status "$CHECK_QUEUE" --formatter json 2>/dev/null \
            | python3 -c 'import json,sys; print(" ".join(sorted(m["Node Name"] for m in json.load(sys.stdin))))' \
            2>/dev/null) || members=""
  api DELETE "/queues/%2F/$CHECK_QUEUE" >/dev/null || log "warning: could not delete the queue $CHECK_QUEUE"
  if [ "$members" != "$(all_nodes)" ]; then
    die "the quorum queue $CHECK_QUEUE had members [$members], expected [$(all_nodes)]"
  fi
  log "quorum queues get a member on each node: $CHECK_QUEUE had 3 members ($members), deleted again"
}

# ---- commands ------------------------------------------------------------------------------
cmd_start() {
  if clustered; then
    report
    log "cluster already running (3 of 3 nodes)"
    return 0
  fi
  prepare_base
  local n launched=""
  for n in 1 2 3; do prepare_node "$n"; done
  # Launch every stopped node before waiting for any (see the top of this file)
  for n in 1 2 3; do
    if ! vm_alive "$n"; then launch "$n"; launched="$launched $n"; fi
  done
  for n in 1 2 3; do
    if has_word "$launched" "$n" || app_up "$n"; then
      :
    elif is_booting "$n"; then
      launched="$launched $n"
    elif [ "$n" = 1 ]; then   # VM up, app stopped (c2 and c3: join below starts theirs)
      log "starting RabbitMQ on $(node 1) again"
      ctl 1 -q start_app >/dev/null
    fi
  done
  # shellcheck disable=SC2086
  [ -z "$launched" ] || wait_booted $((TIMEOUT * 2)) $launched
  join 2
  join 3
  wait_clustered 1 "$TIMEOUT"
  [ "$DISK" = "$(all_nodes)" ] && [ "$RUNNING" = "$(all_nodes)" ] \
    || die "cluster_status of $(node 1) lists disc nodes [$DISK], running [$RUNNING]: expected all three"
  check_quorum
  report
  log "cluster running (3 of 3 nodes)"
}

stop_node() { # stop_node N: stop node N, return once its ports are closed
  local n=$1 deadline
  if ! vm_alive "$n" && ! app_up "$n"; then
    log "$(node "$n") already stopped"
    return 0
  fi
  log "stopping $(node "$n")"
  deadline=$((SECONDS + TIMEOUT))
  if [ -s "$(pid_file "$n")" ]; then
    ctl "$n" -q stop "$(pid_file "$n")" >/dev/null 2>&1 || true
  else
    ctl "$n" -q shutdown >/dev/null 2>&1 || true
  fi
  while app_up "$n" || vm_alive "$n"; do
    [ $SECONDS -lt $deadline ] || die "$(node "$n") still has port $(amqp_port "$n") or $(dist_port "$n") open after ${TIMEOUT}s"
    sleep 0.5
  done
  log "$(node "$n") stopped"
}

cmd_stop() {
  # c2 and c3 together, c1 last: the last one stopped can boot alone
  local pids=() rc=0 p
  for n in 3 2; do stop_node "$n" & pids+=($!); done
  for p in "${pids[@]}"; do wait "$p" || rc=1; done
  stop_node 1 || rc=1
  [ $rc = 0 ] || die "not every node stopped"
  if [ "${1:-}" != reset ]; then log "cluster stopped (data kept in $BASE)"; fi
}

cmd_start_node() {
  local n=$1 other running=false
  for other in 1 2 3; do [ "$other" = "$n" ] || ! app_up "$other" || running=true; done
  if app_up "$n" && ! is_booting "$n"; then
    log "$(node "$n") already running"
  else
    prepare_base
    if vm_alive "$n"; then
      if ! is_booting "$n"; then log "starting RabbitMQ on $(node "$n") again"; ctl "$n" -q start_app >/dev/null; fi
    else
      $running || log "warning: no other node runs; $(node "$n") boots alone only if it was the last one stopped"
      launch "$n"
    fi
    wait_booted "$TIMEOUT" "$n"
  fi
  if [ "$n" != 1 ] && app_up 1; then join "$n"; fi
  wait_clustered "$n" "$TIMEOUT"
  log "$(node "$n") running and in the cluster (running nodes: $RUNNING)"
}

cmd_status() {
  local n first=""
  for n in 1 2 3; do
    if app_up "$n"; then
      log "$(node "$n") running: amqp://127.0.0.1:$(amqp_port "$n") management http://127.0.0.1:$(mgmt_port "$n")"
      [ -n "$first" ] || first=$n
    elif vm_alive "$n"; then
      log "$(node "$n") booting, or its RabbitMQ application is stopped (VM up on $(dist_port "$n"))"
    else
      log "$(node "$n") stopped"
    fi
  done
  if [ -z "$first" ]; then
    log "no node runs"
    return 0
  fi
  log "cluster_status on $(node "$first"):"
  ctl "$first" -q cluster_status | sed -e 's/\x1b\[[0-9;]*m//g' -e 's/^/    /'
}

cmd_reset() {
  cmd_stop reset
  rm -rf "$BASE"
  log "deleted $BASE"
}

node_arg() {
  [[ "${1:-}" =~ ^[123]$ ]] || die "expected a node number 1, 2 or 3, got '${1:-}'"
}

[ "$(id -u)" = 0 ] || die "run as root (the RabbitMQ wrappers switch to the rabbitmq user)"
command -v rabbitmqctl >/dev/null || die "rabbitmqctl not found: is RabbitMQ installed?"

# One command at a time changes the cluster (a second one waits for the first)
case "${1:-}" in
  start|stop|stop-node|start-node|reset|check)
    exec 9>/run/lock/exhub-cluster.lock 2>/dev/null || exec 9>/tmp/exhub-cluster.lock
    flock -w $((TIMEOUT * 5)) 9 || die "another scripts/cluster.sh command still runs" ;;
esac
case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  stop-node) node_arg "${2:-}"; stop_node "$2" ;;
  start-node) node_arg "${2:-}"; cmd_start_node "$2" ;;
  status) cmd_status ;;
  check) clustered || die "the cluster is not running with 3 nodes"; check_quorum ;;
  reset) cmd_reset ;;
  *) printf 'usage: %s start|stop|stop-node N|start-node N|status|check|reset\n' "$0" >&2; exit 2 ;;
esac
