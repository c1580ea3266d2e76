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

# Unit tests only: no services needed.
test:
    cargo test --workspace --lib --bins

# Every test, against the real services (started if needed).
test-integration *args:
    scripts/test.sh {{args}}

# Formatting, lints and docs, as CI checks them.
lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings
    RUSTDOCFLAGS=-Dwarnings cargo doc --workspace --no-deps

# Benchmarks against the real services (release build); writes docs/benchmarks.{json,md}.
bench *args:
    bash scripts/bench.sh {{args}}

# The benchmarks with tiny sizes (well under a minute), written to a temporary folder.
bench-smoke:
    bash scripts/bench.sh --smoke

# What CI runs.
ci:
    .ci/run
