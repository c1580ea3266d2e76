//! PostgreSQL and Apache Kafka in Docker containers, for developers with a Docker daemon.
//!
//! Used only with the `testcontainers` feature, when neither `DATABASE_URL` nor
//! `KAFKA_BOOTSTRAP_SERVERS` is set and a Docker daemon is reachable. The containers start once per
//! test process and live until it exits. This path is not exercised on machines without Docker
//! (the project's CI machine among them).

use std::net::TcpListener;
use std::path::Path;

use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, GenericImage, ImageExt};
use tokio::sync::OnceCell;

/// The addresses of the containers started for this process.
#[derive(Debug)]
pub(crate) struct Services {
    pub(crate) database_url: String,
    pub(crate) kafka_bootstrap_servers: String,
    _postgres: ContainerAsync<GenericImage>,
    _kafka: ContainerAsync<GenericImage>,
}

static SERVICES: OnceCell<Option<Services>> = OnceCell::const_new();

fn docker_reachable() -> bool {
    std::env::var_os("DOCKER_HOST").is_some() || Path::new("/var/run/docker.sock").exists()
}

/// The containers, started on first use; `None` when either variable is set or Docker is absent.
pub(crate) async fn services() -> Option<&'static Services> {
    if std::env::var_os("DATABASE_URL").is_some()
        || std::env::var_os("KAFKA_BOOTSTRAP_SERVERS").is_some()
        || !docker_reachable()
    {
        return None;
    }
    SERVICES.get_or_init(start).await.as_ref()
}

async fn start() -> Option<Services> {
    let postgres = GenericImage::new("postgres", "15")
        .with_exposed_port(5432.tcp())
        .with_wait_for(WaitFor::message_on_stderr(
            "database system is ready to accept connections",
        ))
        .with_env_var("POSTGRES_USER", "outbox")
        .with_env_var("POSTGRES_PASSWORD", "outbox")
        .with_env_var("POSTGRES_DB", "outbox")
        .with_cmd(["postgres", "-c", "max_connections=300"])
        .start()
        .await
        .ok()?;
    let pg_port = postgres.get_host_port_ipv4(5432.tcp()).await.ok()?;

    // Kafka advertises the address clients must use, so the host port is chosen up front.
    let kafka_port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .ok()?
        .port();
    let kafka = GenericImage::new("apache/kafka", "4.1.1")
        .with_wait_for(WaitFor::message_on_stdout("Kafka Server started"))
        .with_mapped_port(kafka_port, 9092.tcp())
        .with_env_var("KAFKA_NODE_ID", "1")
        .with_env_var("KAFKA_PROCESS_ROLES", "broker,controller")
        .with_env_var("KAFKA_LISTENERS", "PLAINTEXT://:9092,CONTROLLER://:9093")
        .with_env_var(
            "KAFKA_ADVERTISED_LISTENERS",
            format!("PLAINTEXT://127.0.0.1:{kafka_port}"),
        )
        .with_env_var("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
        .with_env_var(
            "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
            "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
        )
        .with_env_var("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9093")
        .with_env_var("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
        .with_env_var("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
        .with_env_var("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
        .with_env_var("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
        .with_env_var(
            "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR",
            "1",
        )
        .with_env_var("KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR", "1")
        .with_env_var("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
        .start()
        .await
        .ok()?;

    Some(Services {
        database_url: format!("postgres://outbox:outbox@127.0.0.1:{pg_port}/outbox"),
        kafka_bootstrap_servers: format!("127.0.0.1:{kafka_port}"),
        _postgres: postgres,
        _kafka: kafka,
    })
}
