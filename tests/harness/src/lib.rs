//! Test harness for integration tests against the real PostgreSQL and Apache Kafka.
//!
//! Every integration test in the workspace gets its services from here:
//!
//! - [`TestDatabase`]: a fresh PostgreSQL database of its own on the server named by `DATABASE_URL`,
//!   dropped when the value is dropped;
//! - [`TestTopic`]: a uniquely named Kafka topic on the brokers named by `KAFKA_BOOTSTRAP_SERVERS`,
//!   created through the admin API and deleted when dropped;
//! - [`consume`]: reads a topic back with keys, headers and order;
//! - [`KafkaNode`] and [`PostgresNode`]: private broker and server processes that a fault test may
//!   stop, kill and restart without disturbing the tests that run beside it.
//!
//! `scripts/services.sh up` starts the shared services at the default addresses
//! ([`DEFAULT_DATABASE_URL`], [`DEFAULT_KAFKA_BOOTSTRAP_SERVERS`]).
//!
//! With `OUTBOX_TEST_BACKEND=containers` (and the default `testcontainers` feature), testcontainers
//! starts a PostgreSQL and a Kafka container instead, shared by the tests of one test binary and
//! removed when it exits; the private nodes of fault tests are then containers too, stopped and
//! started through the container engine. Images: `OUTBOX_POSTGRES_IMAGE` and `OUTBOX_KAFKA_IMAGE`
//! (defaults `postgres:15` and `apache/kafka:4.1.1`). Containers that were asked for and cannot
//! start fail the test; nothing falls back to the host's services.
//!
//! ```no_run
//! # async fn demo() {
//! use outbox_test_harness::{TestDatabase, TestTopic, consume};
//! use std::time::Duration;
//!
//! let db = TestDatabase::create().await;
//! let conn = db.connect().await;
//! let topic = TestTopic::create("orders", 3).await;
//! // ... write through `conn`, publish to `topic.name()` ...
//! let messages = consume(&topic.bootstrap(), topic.name(), 10, Duration::from_secs(30)).await;
//! # }
//! ```

mod kafka;
mod node;
mod postgres;
mod socket;

#[cfg(feature = "testcontainers")]
mod containers;

use std::path::PathBuf;

pub use kafka::{Received, TestTopic, consume, consume_until_quiet, create_topic, wait_for_broker};
pub use node::{KafkaNode, PostgresNode, free_port};
pub use postgres::TestDatabase;
pub use socket::{
    session_client_port, session_tcp_nodelay, set_tcp_nodelay_of_local_port,
    tcp_nodelay_of_local_port,
};

#[cfg(feature = "testcontainers")]
pub use containers::{DEFAULT_KAFKA_IMAGE, DEFAULT_POSTGRES_IMAGE};

/// The database URL used when `DATABASE_URL` is unset: the server `scripts/services.sh` starts.
pub const DEFAULT_DATABASE_URL: &str = "postgres://outbox:outbox@127.0.0.1:5432/outbox";

/// The Kafka address used when `KAFKA_BOOTSTRAP_SERVERS` is unset: the broker `scripts/services.sh`
/// starts.
pub const DEFAULT_KAFKA_BOOTSTRAP_SERVERS: &str = "127.0.0.1:9092";

/// The PostgreSQL server tests create their databases on: with `OUTBOX_TEST_BACKEND=containers`,
/// a container shared by the test binary (see the `testcontainers` feature); else `DATABASE_URL`,
/// else [`DEFAULT_DATABASE_URL`].
///
/// # Panics
///
/// When containers were asked for and cannot start (there is no fallback to the host's services).
pub async fn database_url() -> String {
    if containers_requested() {
        return shared_containers().await.database_url.clone();
    }
    if let Ok(url) = std::env::var("DATABASE_URL") {
        return url;
    }
    DEFAULT_DATABASE_URL.to_owned()
}

/// The Kafka brokers tests use: with `OUTBOX_TEST_BACKEND=containers`, a container shared by the
/// test binary; else `KAFKA_BOOTSTRAP_SERVERS`, else [`DEFAULT_KAFKA_BOOTSTRAP_SERVERS`].
///
/// # Panics
///
/// When containers were asked for and cannot start.
pub async fn kafka_bootstrap_servers() -> String {
    if containers_requested() {
        return shared_containers().await.kafka_bootstrap_servers.clone();
    }
    if let Ok(servers) = std::env::var("KAFKA_BOOTSTRAP_SERVERS") {
        return servers;
    }
    DEFAULT_KAFKA_BOOTSTRAP_SERVERS.to_owned()
}

/// Whether the tests run against containers: `OUTBOX_TEST_BACKEND=containers` (the other value is
/// `services`, the default: the servers of `scripts/services.sh`, or `DATABASE_URL` and
/// `KAFKA_BOOTSTRAP_SERVERS`).
///
/// # Panics
///
/// On any other value of `OUTBOX_TEST_BACKEND`.
pub fn containers_requested() -> bool {
    match std::env::var("OUTBOX_TEST_BACKEND").as_deref() {
        Ok("containers") => true,
        Ok("services") | Ok("") | Err(_) => false,
        Ok(other) => panic!("OUTBOX_TEST_BACKEND={other:?}: expected `containers` or `services`"),
    }
}

#[cfg(feature = "testcontainers")]
async fn shared_containers() -> &'static containers::Services {
    containers::services().await
}

#[cfg(not(feature = "testcontainers"))]
async fn shared_containers() -> &'static NoContainers {
    panic!(
        "OUTBOX_TEST_BACKEND=containers, but outbox-test-harness was built without its \
         `testcontainers` feature"
    )
}

/// Stands in for the containers' addresses when the `testcontainers` feature is off.
#[cfg(not(feature = "testcontainers"))]
struct NoContainers {
    database_url: String,
    kafka_bootstrap_servers: String,
}

/// The repository's root folder (where `scripts/` lives): `OUTBOX_REPO_ROOT`, else two levels above
/// this crate.
pub fn repo_root() -> PathBuf {
    if let Ok(root) = std::env::var("OUTBOX_REPO_ROOT") {
        return PathBuf::from(root);
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A name no other test run uses: `prefix`, the seconds since the epoch (so leftovers of crashed
/// runs can be recognised by age) and a random suffix. Lowercase ASCII, digits and `_`.
pub fn unique_name(prefix: &str) -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}_{secs}_{}", &random[..12])
}

/// Installs a `tracing` subscriber that writes to the test's captured output, once per process.
/// Honors `RUST_LOG` (default `warn`), so a failing test can be rerun with `RUST_LOG=debug`.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
