#!/usr/bin/env bash
# Runs every test in the workspace (unit, integration, end-to-end and doc tests) against the real
# PostgreSQL and Apache Kafka, starting them first with scripts/services.sh when they are not up.
#
#   scripts/test.sh                  everything
#   scripts/test.sh -p outbox-core   arguments go to `cargo test`
#
# Set DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS to test against other servers; the local services
# are then not started.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [ -z "${DATABASE_URL:-}" ] && [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  scripts/services.sh up
  eval "$(scripts/services.sh env)"
fi
export DATABASE_URL="${DATABASE_URL:-postgres://outbox:outbox@127.0.0.1:5432/outbox}"
export KAFKA_BOOTSTRAP_SERVERS="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:9092}"

# Private fault-test brokers fetch nothing: make sure the jars are there before tests start them.
scripts/kafka-node.sh fetch

exec cargo test --workspace "$@"
