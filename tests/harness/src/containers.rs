//! PostgreSQL and Apache Kafka in containers started through testcontainers, when
//! `OUTBOX_TEST_BACKEND=containers`.
//!
//! - One pair (PostgreSQL, Kafka) is shared by every test of a test binary: started on first use,
//!   removed when the process exits (by a small watcher process, since statics are never dropped).
//! - Fault tests get private containers ([`ContainerKafka`], [`ContainerPostgres`]) that they stop
//!   and start; those are removed when dropped.
//! - Every published port is bound to 127.0.0.1 explicitly: podman 4.3 reports ports published
//!   without a host address with an empty `HostIp`, which testcontainers skips; and nothing should
//!   listen on other interfaces anyway.
//! - Image names come from `OUTBOX_POSTGRES_IMAGE` and `OUTBOX_KAFKA_IMAGE` (defaults: the official
//!   [`DEFAULT_POSTGRES_IMAGE`] and [`DEFAULT_KAFKA_IMAGE`]); `scripts/containers.sh` builds local
//!   images with the same interface and names them in those variables.
//! - When containers were asked for and cannot start, the tests fail with the reason: there is no
//!   fallback to the host's services.

use std::collections::HashMap;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use sea_orm::{ConnectionTrait, Database};
use testcontainers::bollard::models::{HostConfig, PortBinding};
use testcontainers::core::{IntoContainerPort, WaitFor};
use testcontainers::runners::AsyncRunner;
use testcontainers::{ContainerAsync, ContainerRequest, GenericImage, ImageExt};
use tokio::sync::OnceCell;

use crate::kafka::wait_for_broker;

/// The PostgreSQL image used when `OUTBOX_POSTGRES_IMAGE` is unset.
pub const DEFAULT_POSTGRES_IMAGE: &str = "postgres:15";
/// The Kafka image used when `OUTBOX_KAFKA_IMAGE` is unset.
pub const DEFAULT_KAFKA_IMAGE: &str = "apache/kafka:4.1.1";

/// The label every container of this process carries, so the exit watcher (and
/// `scripts/containers.sh sweep`, through testcontainers' own label) can find it.
const SESSION_LABEL: &str = "dev.outbox.test-session";

/// How long a container may take to report itself ready, and then to answer a client.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// The addresses of the pair of containers this test binary shares.
#[derive(Debug)]
pub(crate) struct Services {
    pub(crate) database_url: String,
    pub(crate) kafka_bootstrap_servers: String,
}

/// The shared pair's addresses, or why it could not start (reported to every test that asks).
static SERVICES: OnceCell<Result<Services, String>> = OnceCell::const_new();

/// The shared pair, started on first use. Panics with the reason when it cannot start.
pub(crate) async fn services() -> &'static Services {
    let started = SERVICES
        .get_or_init(|| async {
            // The containers outlive the test (and the Tokio runtime) that happened to start them:
            // start them on a thread with a runtime of its own, and keep them there until exit.
            let (tx, rx) = tokio::sync::oneshot::channel();
            std::thread::spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = tx.send(Err(format!("cannot build a Tokio runtime: {e}")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    match start_shared().await {
                        Ok((services, containers)) => {
                            let _ = tx.send(Ok(services));
                            // Hold the containers (never dropped: the exit watcher removes them).
                            let _keep = containers;
                            std::future::pending::<()>().await;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                });
            });
            rx.await
                .unwrap_or_else(|_| Err("the container start-up thread died".to_owned()))
        })
        .await;
    match started {
        Ok(services) => services,
        Err(e) => panic!(
            "OUTBOX_TEST_BACKEND=containers, but the test containers did not start: {e}\n\
             (on a machine without Docker: `eval \"$(scripts/containers.sh up)\"`; or unset \
             OUTBOX_TEST_BACKEND to use the services of scripts/services.sh)"
        ),
    }
}

type SharedContainers = (ContainerAsync<GenericImage>, ContainerAsync<GenericImage>);

async fn start_shared() -> Result<(Services, SharedContainers), String> {
    let (postgres, database_url) = start_postgres(None, 300).await?;
    let (kafka, kafka_bootstrap_servers) = start_kafka(free_port()?, "768m").await?;
    Ok((
        Services {
            database_url,
            kafka_bootstrap_servers,
        },
        (postgres, kafka),
    ))
}

fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("no free local port: {e}"))
}

/// `name:tag` split at the last `:` after the last `/` (a registry may carry a port).
fn image_name(variable: &str, default: &str) -> (String, String) {
    let full = std::env::var(variable)
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| default.to_owned());
    let slash = full.rfind('/').map_or(0, |i| i + 1);
    match full[slash..].rfind(':') {
        Some(colon) => (
            full[..slash + colon].to_owned(),
            full[slash + colon + 1..].to_owned(),
        ),
        None => (full, "latest".to_owned()),
    }
}

/// Publishes `container_port` on 127.0.0.1 only: on `host_port`, or on one the engine picks.
/// Replaces testcontainers' own bindings, which leave the host address empty.
fn bind_to_loopback(container_port: u16, host_port: Option<u16>) -> impl Fn(&mut HostConfig) {
    move |host_config: &mut HostConfig| {
        host_config.publish_all_ports = Some(false);
        host_config.port_bindings = Some(HashMap::from([(
            format!("{container_port}/tcp"),
            Some(vec![PortBinding {
                host_ip: Some("127.0.0.1".to_owned()),
                host_port: Some(host_port.map(|p| p.to_string()).unwrap_or_default()),
            }]),
        )]));
    }
}

/// Labels the request with this process's session, and makes sure the exit watcher runs.
fn in_session(request: ContainerRequest<GenericImage>) -> ContainerRequest<GenericImage> {
    request.with_label(SESSION_LABEL, session())
}

/// This process's session id, and on first use a watcher process that removes the session's
/// containers once this process has exited, however it exits.
fn session() -> &'static str {
    static SESSION: OnceLock<String> = OnceLock::new();
    SESSION.get_or_init(|| {
        let session = crate::unique_name("session");
        let cli = ["docker", "podman"].into_iter().find(|cli| {
            Command::new(cli)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        match cli {
            Some(cli) => {
                let script = format!(
                    "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
                     ids=$({cli} ps -aq --filter label={SESSION_LABEL}={session}); \
                     [ -z \"$ids\" ] || {cli} rm -f -v $ids >/dev/null",
                    pid = std::process::id(),
                );
                let watcher = Command::new("sh")
                    .arg("-c")
                    .arg(script)
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .spawn();
                if let Err(e) = watcher {
                    eprintln!(
                        "outbox-test-harness: cannot start the container watcher ({e}); \
                         remove leftovers with `scripts/containers.sh sweep`"
                    );
                }
            }
            None => eprintln!(
                "outbox-test-harness: neither `docker` nor `podman` is on PATH, so containers \
                 left by this test process are not removed at exit; use \
                 `scripts/containers.sh sweep`"
            ),
        }
        session
    })
}

/// Starts a PostgreSQL container (user, password and database `outbox`, a superuser); returns it
/// and the URL of its `outbox` database once that accepts a query. `host_port` fixes the published
/// port, so that it stays the same across a stop and start.
async fn start_postgres(
    host_port: Option<u16>,
    max_connections: u32,
) -> Result<(ContainerAsync<GenericImage>, String), String> {
    let (name, tag) = image_name("OUTBOX_POSTGRES_IMAGE", DEFAULT_POSTGRES_IMAGE);
    let image = GenericImage::new(&name, &tag)
        .with_exposed_port(5432.tcp())
        .with_wait_for(WaitFor::message_on_stderr(
            "database system is ready to accept connections",
        ));
    let container = in_session(
        image
            .with_env_var("POSTGRES_USER", "outbox")
            .with_env_var("POSTGRES_PASSWORD", "outbox")
            .with_env_var("POSTGRES_DB", "outbox")
            .with_cmd([
                "postgres".to_owned(),
                "-c".to_owned(),
                format!("max_connections={max_connections}"),
                "-c".to_owned(),
                "fsync=off".to_owned(),
            ])
            .with_host_config_modifier(bind_to_loopback(5432, host_port))
            .with_startup_timeout(START_TIMEOUT),
    )
    .start()
    .await
    .map_err(|e| format!("cannot start PostgreSQL ({name}:{tag}): {e}"))?;
    let port = container
        .get_host_port_ipv4(5432.tcp())
        .await
        .map_err(|e| format!("PostgreSQL ({name}:{tag}) publishes no port: {e}"))?;
    let url = format!("postgres://outbox:outbox@127.0.0.1:{port}/outbox");
    wait_for_postgres(&url).await?;
    Ok((container, url))
}

/// Waits until `url` accepts a query (the official image starts a temporary server first, so the
/// log line alone does not mean the real one is up).
async fn wait_for_postgres(url: &str) -> Result<(), String> {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let error = match Database::connect(url).await {
            Ok(conn) => {
                let result = conn.execute_unprepared("SELECT 1").await;
                conn.close().await.ok();
                match result {
                    Ok(_) => return Ok(()),
                    Err(e) => e.to_string(),
                }
            }
            Err(e) => e.to_string(),
        };
        if Instant::now() >= deadline {
            return Err(format!("PostgreSQL at {url} does not answer: {error}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts a Kafka container (one KRaft node) published on `host_port`, which it also advertises;
/// returns it and its bootstrap address once it answers a metadata request.
async fn start_kafka(
    host_port: u16,
    heap: &str,
) -> Result<(ContainerAsync<GenericImage>, String), String> {
    let (name, tag) = image_name("OUTBOX_KAFKA_IMAGE", DEFAULT_KAFKA_IMAGE);
    let image = GenericImage::new(&name, &tag)
        .with_exposed_port(9092.tcp())
        .with_wait_for(WaitFor::message_on_stdout("Kafka Server started"));
    let container = in_session(
        image
            .with_env_var("KAFKA_NODE_ID", "1")
            .with_env_var("KAFKA_PROCESS_ROLES", "broker,controller")
            .with_env_var("KAFKA_LISTENERS", "PLAINTEXT://:9092,CONTROLLER://:9093")
            .with_env_var(
                "KAFKA_ADVERTISED_LISTENERS",
                format!("PLAINTEXT://127.0.0.1:{host_port}"),
            )
            .with_env_var("KAFKA_CONTROLLER_LISTENER_NAMES", "CONTROLLER")
            .with_env_var(
                "KAFKA_LISTENER_SECURITY_PROTOCOL_MAP",
                "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            )
            .with_env_var("KAFKA_CONTROLLER_QUORUM_VOTERS", "1@localhost:9093")
            .with_env_var("KAFKA_AUTO_CREATE_TOPICS_ENABLE", "false")
            .with_env_var("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR", "1")
            .with_env_var("KAFKA_OFFSETS_TOPIC_NUM_PARTITIONS", "4")
            .with_env_var("KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR", "1")
            .with_env_var("KAFKA_TRANSACTION_STATE_LOG_MIN_ISR", "1")
            .with_env_var(
                "KAFKA_SHARE_COORDINATOR_STATE_TOPIC_REPLICATION_FACTOR",
                "1",
            )
            .with_env_var("KAFKA_SHARE_COORDINATOR_STATE_TOPIC_MIN_ISR", "1")
            .with_env_var("KAFKA_GROUP_INITIAL_REBALANCE_DELAY_MS", "0")
            .with_env_var("KAFKA_HEAP_OPTS", format!("-Xms{heap} -Xmx{heap}"))
            .with_host_config_modifier(bind_to_loopback(9092, Some(host_port)))
            .with_startup_timeout(START_TIMEOUT),
    )
    .start()
    .await
    .map_err(|e| format!("cannot start Kafka ({name}:{tag}): {e}"))?;
    let bootstrap = format!("127.0.0.1:{host_port}");
    if !wait_for_broker(&bootstrap, START_TIMEOUT).await {
        return Err(format!(
            "Kafka ({name}:{tag}) at {bootstrap} does not answer a metadata request"
        ));
    }
    Ok((container, bootstrap))
}

/// A Kafka container of one fault test's own, the container counterpart of
/// [`KafkaNode`](crate::KafkaNode): stopping it stops the container, starting it again starts the
/// same container (same port, same data).
#[derive(Debug)]
pub(crate) struct ContainerKafka {
    container: ContainerAsync<GenericImage>,
    bootstrap: String,
}

impl ContainerKafka {
    pub(crate) async fn start() -> Self {
        let port = free_port().unwrap_or_else(|e| panic!("{e}"));
        match start_kafka(port, "384m").await {
            Ok((container, bootstrap)) => Self {
                container,
                bootstrap,
            },
            Err(e) => panic!("OUTBOX_TEST_BACKEND=containers: a private Kafka container: {e}"),
        }
    }

    pub(crate) fn bootstrap(&self) -> String {
        self.bootstrap.clone()
    }

    pub(crate) async fn start_again(&self) {
        self.container
            .start()
            .await
            .unwrap_or_else(|e| panic!("starting the Kafka container again: {e}"));
        assert!(
            wait_for_broker(&self.bootstrap, START_TIMEOUT).await,
            "the Kafka container at {} does not answer after a restart",
            self.bootstrap
        );
    }

    /// `None`: SIGTERM, then SIGKILL after the engine's grace period; `Some(0)`: SIGKILL at once.
    pub(crate) async fn stop(&self, timeout_seconds: Option<i32>) {
        self.container
            .stop_with_timeout(timeout_seconds.or(Some(60)))
            .await
            .unwrap_or_else(|e| panic!("stopping the Kafka container: {e}"));
    }
}

/// A PostgreSQL container of one fault test's own, the container counterpart of
/// [`PostgresNode`](crate::PostgresNode).
#[derive(Debug)]
pub(crate) struct ContainerPostgres {
    container: ContainerAsync<GenericImage>,
    url: String,
}

impl ContainerPostgres {
    pub(crate) async fn start() -> Self {
        let port = free_port().unwrap_or_else(|e| panic!("{e}"));
        match start_postgres(Some(port), 50).await {
            Ok((container, url)) => Self { container, url },
            Err(e) => panic!("OUTBOX_TEST_BACKEND=containers: a private PostgreSQL container: {e}"),
        }
    }

    pub(crate) fn url(&self) -> String {
        self.url.clone()
    }

    pub(crate) async fn start_again(&self) {
        self.container
            .start()
            .await
            .unwrap_or_else(|e| panic!("starting the PostgreSQL container again: {e}"));
        wait_for_postgres(&self.url)
            .await
            .unwrap_or_else(|e| panic!("after a restart: {e}"));
    }

    /// `immediate`: SIGKILL (a crash); otherwise the image's stop signal (SIGINT, a fast
    /// shutdown) with time to finish.
    pub(crate) async fn stop(&self, immediate: bool) {
        self.container
            .stop_with_timeout(Some(if immediate { 0 } else { 60 }))
            .await
            .unwrap_or_else(|e| panic!("stopping the PostgreSQL container: {e}"));
    }
}

#[cfg(test)]
mod tests {
    use super::image_name;

    #[test]
    fn image_names_split_at_the_tag_not_at_a_registry_port() {
        assert_eq!(
            image_name("OUTBOX_TEST_UNSET_IMAGE_VARIABLE", "apache/kafka:4.1.1"),
            ("apache/kafka".to_owned(), "4.1.1".to_owned())
        );
        assert_eq!(
            image_name("OUTBOX_TEST_UNSET_IMAGE_VARIABLE", "localhost:5000/pg"),
            ("localhost:5000/pg".to_owned(), "latest".to_owned())
        );
        assert_eq!(
            image_name(
                "OUTBOX_TEST_UNSET_IMAGE_VARIABLE",
                "localhost/outbox-postgres:15"
            ),
            ("localhost/outbox-postgres".to_owned(), "15".to_owned())
        );
    }
}
