#!/usr/bin/env bash
# Runs the tests with PostgreSQL and Apache Kafka in containers that testcontainers starts
# (OUTBOX_TEST_BACKEND=containers): one pair per test binary, removed when it exits, and private
# containers for the fault tests, which stop and start them.
#
#   scripts/test-containers.sh                         every test of the workspace
#   scripts/test-containers.sh -p outbox-e2e --test relay    arguments go to `cargo test`
#
# With a Docker daemon (`docker info` answers) the official images postgres:15 and
# apache/kafka:4.1.1 are used (override with OUTBOX_POSTGRES_IMAGE and OUTBOX_KAFKA_IMAGE).
# Without one, scripts/containers.sh installs podman, builds local images with the same interface
# and serves the Docker API on a socket of its own. Either way, every container testcontainers
# labelled is removed when this script exits.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

if [ -z "${DOCKER_HOST:-}" ] && command -v docker >/dev/null && docker info >/dev/null 2>&1; then
  echo "test-containers: using the Docker daemon"
  sweep() {
    local ids
    ids="$(docker ps -aq --filter label=org.testcontainers.managed-by=testcontainers)"
    # shellcheck disable=SC2086
    [ -z "$ids" ] || docker rm -f -v $ids >/dev/null
  }
else
  eval "$(scripts/containers.sh up)"
  sweep() { scripts/containers.sh sweep; }
fi
trap sweep EXIT

export OUTBOX_TEST_BACKEND=containers
# Nothing in this run may reach the host's services.
unset DATABASE_URL KAFKA_BOOTSTRAP_SERVERS
# Tests that run the playbook's kafka-node.sh commands use the jars on the host.
scripts/kafka-node.sh fetch

if [ $# -eq 0 ]; then set -- --workspace; fi
cargo test "$@"
