# Development recipes. CI runs `.ci/run`; `just ci` runs the same thing.
# A fresh machine has no `just`: `pip install rust-just` or `cargo install just`.

set shell := ["bash", "-euo", "pipefail", "-c"]

# List the recipes.
default:
    @just --list

# Start PostgreSQL and Apache Kafka (installs what is missing).
services-up:
    scripts/services.sh up

# Stop what services-up started.
services-down:
    scripts/services.sh down

# Say what runs, and the addresses tests use.
services-status:
    scripts/services.sh status

# The essay chain demo: services, Batch Orchestrator and File Service, a batch registered, sample uploads, events and statuses read back.
demo:
    scripts/demo.sh

# Unit tests only: no services needed.
test:
    cargo test --workspace --lib --bins

# Every test, against the real services (started if needed).
test-integration *args:
    scripts/test.sh {{args}}

# Every test with PostgreSQL and Kafka in containers started by testcontainers (Docker when a
# daemon answers, else podman and locally built images: scripts/containers.sh).
test-containers *args:
    scripts/test-containers.sh {{args}}

# The compose stack (PostgreSQL, Kafka, File Service) on podman-compose with local images; with
# Docker, `docker compose up -d --build --wait` instead.
compose-up:
    scripts/containers.sh compose-up

# Stop and remove the compose stack.
compose-down:
    scripts/containers.sh compose-down

# Formatting, lints, docs and alert rules, as CI checks them.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    RUSTDOCFLAGS=-Dwarnings cargo doc --workspace --no-deps
    promtool check rules ops/prometheus/outbox-alerts.yml
    cd ops/prometheus && promtool test rules outbox-alerts.test.yml

# Refresh the implementation guide's code blocks from the code they quote.
docs-sync:
    python3 scripts/docs_sync.py docs/implementation_guide.md

# Line coverage of the library (cargo-tarpaulin), per file; the repository and the relay worker
# are held to 100%.
coverage:
    scripts/coverage.sh

# Benchmarks against the real services (release build); writes docs/benchmarks.{json,md}.
bench *args:
    bash scripts/bench.sh {{args}}

# The benchmarks with tiny sizes (well under a minute), written to a temporary folder.
bench-smoke:
    bash scripts/bench.sh --smoke

# What CI runs.
ci:
    .ci/run
