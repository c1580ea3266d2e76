#!/usr/bin/env bash
# Starts, stops and reports the project's PostgreSQL and Apache Kafka, without Docker.
#
#   scripts/services.sh up [postgres|kafka]      install what is missing, start, wait until they answer
#   scripts/services.sh down [postgres|kafka]    stop what `up` started
#   scripts/services.sh status                   what runs, and the addresses tests use
#   scripts/services.sh logs [postgres|kafka]    the last lines of their logs
#   scripts/services.sh env                      the environment the tests read, as shell exports
#
# PostgreSQL 15 is Debian's cluster `15/main` (installed if missing, started with pg_ctlcluster) on
# 127.0.0.1:5432, with a login role and database `outbox` that may create test databases. Kafka is a
# pinned Apache Kafka 4.x node (see scripts/kafka/pom.xml) on 127.0.0.1:9092, its jars and data in
# the git-ignored .services/ folder. Running `up` twice is harmless.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="$ROOT/.services"
KAFKA_DIR="$STATE/kafka"
PG_VERSION=15
PG_CLUSTER=main
PG_PORT=5432
PG_ROLE=outbox
# A local development credential for a server bound to loopback; not a secret.
PG_PASSWORD=outbox
KAFKA_PORT=9092
KAFKA_CONTROLLER_PORT=9093

DATABASE_URL_DEFAULT="postgres://$PG_ROLE:$PG_PASSWORD@127.0.0.1:$PG_PORT/$PG_ROLE"
KAFKA_DEFAULT="127.0.0.1:$KAFKA_PORT"

die() { echo "services: $*" >&2; exit 1; }
as_postgres() { if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else sudo -u postgres "$@"; fi; }
pg_ctl_cluster() { if [ "$(id -u)" -eq 0 ]; then pg_ctlcluster "$@"; else sudo pg_ctlcluster "$@"; fi; }
pg_running() { pg_lsclusters -h 2>/dev/null | awk -v v=$PG_VERSION -v c=$PG_CLUSTER '$1==v && $2==c {print $4}' | grep -q online; }
pg_log() { echo "/var/log/postgresql/postgresql-$PG_VERSION-$PG_CLUSTER.log"; }

postgres_up() {
  "$ROOT/scripts/bootstrap.sh"
  pg_lsclusters -h | awk '{print $1" "$2}' | grep -qx "$PG_VERSION $PG_CLUSTER" ||
    { if [ "$(id -u)" -eq 0 ]; then pg_createcluster $PG_VERSION $PG_CLUSTER -p $PG_PORT; else sudo pg_createcluster $PG_VERSION $PG_CLUSTER -p $PG_PORT; fi; }
  if ! pg_running; then
    pg_ctl_cluster $PG_VERSION $PG_CLUSTER start || { tail -n 40 "$(pg_log)" >&2; die "PostgreSQL did not start"; }
    touch "$STATE/postgres.started"
  fi
  local deadline=$((SECONDS + 60))
  until as_postgres psql -p $PG_PORT -qAtc 'select 1' >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || { tail -n 40 "$(pg_log)" >&2; die "PostgreSQL does not answer on port $PG_PORT"; }
    sleep 0.5
  done
  # Settings closer to a production server than Debian's defaults: tests run in parallel, each
  # with its own database and pools (100 connections is tight), and draining a large backlog
  # should not be paced by checkpoints forced by a 1 GB WAL limit and a 128 MB buffer cache.
  # No TLS: the server listens on loopback only, where Debian's default (TLS with its snakeoil
  # certificate, which clients' `sslmode=prefer` picks up) only burns CPU that the relay, Kafka
  # and the writers share on two cores: with it, `outbox-bench --only remote` at 1,000 events/s
  # gave commit-to-ack p50 6.6-7.0 ms from another process (libcrypto 13% of the relay's CPU);
  # without it, 5.0 ms in the same hour. A server reached over a network wants TLS
  # (`sslmode=verify-full`).
  local restart=""
  for setting in "max_connections=300" "shared_buffers=512MB" "max_wal_size=4GB" "ssl=off"; do
    local name="${setting%%=*}" value="${setting#*=}"
    if [ "$(as_postgres psql -p $PG_PORT -qAtc "show $name")" != "$value" ]; then
      as_postgres psql -p $PG_PORT -qc "alter system set $name = '$value'" >/dev/null
      restart=1
    fi
  done
  if [ -n "$restart" ]; then
    pg_ctl_cluster $PG_VERSION $PG_CLUSTER restart
  fi
  as_postgres psql -p $PG_PORT -v ON_ERROR_STOP=1 -q <<SQL >/dev/null
set client_min_messages = warning;
do \$\$ begin
  if not exists (select from pg_roles where rolname = '$PG_ROLE') then
    create role $PG_ROLE login createdb password '$PG_PASSWORD';
  end if;
end \$\$;
select 'create database $PG_ROLE owner $PG_ROLE'
where not exists (select from pg_database where datname = '$PG_ROLE') \gexec
-- The benchmark checkpoints after loading a backlog, so the load is not flushed mid-drain.
grant pg_checkpoint to $PG_ROLE;
SQL
  until PGPASSWORD=$PG_PASSWORD psql -h 127.0.0.1 -p $PG_PORT -U $PG_ROLE -d $PG_ROLE -qAtc 'select 1' >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "PostgreSQL does not accept the $PG_ROLE login on 127.0.0.1:$PG_PORT"
    sleep 0.5
  done
  echo "services: PostgreSQL $PG_VERSION answers at 127.0.0.1:$PG_PORT"
}

postgres_down() {
  if [ -f "$STATE/postgres.started" ] && pg_running; then
    pg_ctl_cluster $PG_VERSION $PG_CLUSTER stop -m fast
    echo "services: PostgreSQL stopped"
  fi
  rm -f "$STATE/postgres.started"
}

kafka_up() {
  "$ROOT/scripts/bootstrap.sh"
  "$ROOT/scripts/kafka-node.sh" start "$KAFKA_DIR" $KAFKA_PORT $KAFKA_CONTROLLER_PORT
  echo "services: Apache Kafka answers at 127.0.0.1:$KAFKA_PORT"
}

kafka_down() {
  if "$ROOT/scripts/kafka-node.sh" status "$KAFKA_DIR"; then
    "$ROOT/scripts/kafka-node.sh" stop "$KAFKA_DIR"
    echo "services: Apache Kafka stopped"
  fi
}

status() {
  local rc=0
  if pg_running; then echo "postgres: running (127.0.0.1:$PG_PORT)"; else echo "postgres: stopped"; rc=1; fi
  if "$ROOT/scripts/kafka-node.sh" status "$KAFKA_DIR"; then
    echo "kafka: running (127.0.0.1:$KAFKA_PORT, pid $(cat "$KAFKA_DIR/kafka.pid"))"
  else
    echo "kafka: stopped"; rc=1
  fi
  echo "DATABASE_URL=${DATABASE_URL:-$DATABASE_URL_DEFAULT}"
  echo "KAFKA_BOOTSTRAP_SERVERS=${KAFKA_BOOTSTRAP_SERVERS:-$KAFKA_DEFAULT}"
  return $rc
}

logs() {
  case "${1:-}" in
    postgres) tail -n 60 "$(pg_log)" ;;
    kafka) tail -n 60 "$KAFKA_DIR/logs/server.log" ;;
    "") logs postgres || true; logs kafka || true ;;
    *) die "unknown service '$1' (postgres or kafka)" ;;
  esac
}

mkdir -p "$STATE"
cmd="${1:-}"; what="${2:-}"
case "$cmd:$what" in
  up:) postgres_up; kafka_up ;;
  up:postgres) postgres_up ;;
  up:kafka) kafka_up ;;
  down:) kafka_down; postgres_down ;;
  down:postgres) postgres_down ;;
  down:kafka) kafka_down ;;
  status:) status ;;
  logs:*) logs "$what" ;;
  env:) echo "export DATABASE_URL=${DATABASE_URL:-$DATABASE_URL_DEFAULT}"
        echo "export KAFKA_BOOTSTRAP_SERVERS=${KAFKA_BOOTSTRAP_SERVERS:-$KAFKA_DEFAULT}" ;;
  *) die "usage: services.sh up|down [postgres|kafka] | status | logs [postgres|kafka] | env" ;;
esac
