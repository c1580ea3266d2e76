#!/usr/bin/env bash
# Builds the benchmark program (crates/outbox-bench) in release and runs it against the real
# PostgreSQL and Apache Kafka. It measures its own baselines in the same run and writes
# docs/benchmarks.json and docs/benchmarks.md.
#
#   bash scripts/bench.sh              default sizes (under 10 minutes after the build)
#   bash scripts/bench.sh --smoke      tiny sizes, well under a minute; writes to a temporary folder
#   bash scripts/bench.sh --large      1,000,000-event backlogs everywhere (much longer)
#   bash scripts/bench.sh --help       every option
#
# Set DATABASE_URL and KAFKA_BOOTSTRAP_SERVERS to measure other servers; otherwise the local
# services are started with scripts/services.sh unless something already answers on their ports.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if [ -z "${DATABASE_URL:-}" ] && [ -z "${KAFKA_BOOTSTRAP_SERVERS:-}" ]; then
  # The services may run from another checkout of the repository: start only what is missing.
  answers 5432 || scripts/services.sh up postgres
  answers 9092 || scripts/services.sh up kafka
  eval "$(scripts/services.sh env)"
fi
export DATABASE_URL="${DATABASE_URL:-postgres://outbox:outbox@127.0.0.1:5432/outbox}"
export KAFKA_BOOTSTRAP_SERVERS="${KAFKA_BOOTSTRAP_SERVERS:-127.0.0.1:9092}"

# The upload phase starts the release File Service binary built here, beside the benchmark's.
cargo build --release -p outbox-bench -p file-service
# The report records the command that produced it.
export OUTBOX_BENCH_COMMAND="bash scripts/bench.sh${*:+ $*}"
exec cargo run --release --quiet -p outbox-bench -- "$@"
