#!/usr/bin/env bash
# Installs the system packages this project needs on a fresh Debian machine, skipping what is there:
# PostgreSQL 15 (the server the tests and the service use), Java 17 and Maven (to fetch and run the
# Apache Kafka broker), what rdkafka's bundled librdkafka builds with, promtool, and PgBouncer
# (for a test).
set -euo pipefail

need=()
have_pkg() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }

command -v pg_ctlcluster >/dev/null && [ -x /usr/lib/postgresql/15/bin/postgres ] || need+=(postgresql-15 postgresql-client-15)
command -v java >/dev/null || need+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need+=(maven)
command -v cc >/dev/null || need+=(build-essential)
command -v cmake >/dev/null || need+=(cmake)
command -v pkg-config >/dev/null || need+=(pkg-config)
have_pkg libssl-dev || need+=(libssl-dev)
have_pkg zlib1g-dev || need+=(zlib1g-dev)
command -v curl >/dev/null || need+=(curl)
# A connection pooler in transaction mode: the test that the relay refuses to lead behind one.
command -v pgbouncer >/dev/null || [ -x /usr/sbin/pgbouncer ] || need+=(pgbouncer)
# promtool checks the alert rules in ops/prometheus (Debian ships it in the prometheus package).
command -v promtool >/dev/null || need+=(prometheus)

if [ ${#need[@]} -gt 0 ]; then
  echo "bootstrap: installing ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "bootstrap: cargo is missing; install Rust with rustup (https://rustup.rs)" >&2
  exit 1
fi
