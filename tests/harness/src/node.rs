//! Private Kafka brokers and PostgreSQL servers for fault tests.
//!
//! With `OUTBOX_TEST_BACKEND=containers` they are containers of their own instead, stopped and
//! started through the container engine (see `containers.rs`).
//!
//! A test that stops the broker or restarts the database must not take the shared services away
//! from the tests running beside it, so it starts processes of its own: the same Apache Kafka jars
//! that `scripts/services.sh` runs (through `scripts/kafka-node.sh`), and the same PostgreSQL
//! binaries, on free ports in a temporary folder.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tempfile::TempDir;

use crate::repo_root;

/// A local port that is free now, for a server a test starts in another process. Chosen below
/// Linux's ephemeral range (32768-60999), so an outgoing connection of a busy test run cannot
/// take it between this check and the server's bind, as one taken with `bind(0)` can.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    // Spread test processes apart, then walk up from there.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = 20_000 + (std::process::id() % 400) as u16 * 30;
    for _ in 0..12_000 {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % 12_000;
        let port = 20_000 + (start - 20_000 + offset) % 12_000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

fn run(what: &str, command: &mut Command) {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot run {command:?}: {e}"));
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

async fn run_async(what: &'static str, mut command: Command) {
    tokio::task::spawn_blocking(move || run(what, &mut command))
        .await
        .expect("command task");
}

/// A single-node Apache Kafka broker of one test's own, on free ports: a process run by
/// `scripts/kafka-node.sh`, or with `OUTBOX_TEST_BACKEND=containers` a container of its own.
///
/// Dropping it kills the broker and deletes its data.
#[derive(Debug)]
pub struct KafkaNode {
    inner: KafkaInner,
}

#[derive(Debug)]
enum KafkaInner {
    Process(ProcessKafka),
    #[cfg(feature = "testcontainers")]
    Container(Box<crate::containers::ContainerKafka>),
}

impl KafkaNode {
    /// Formats storage and starts the broker; returns once it answers a metadata request.
    pub async fn start() -> Self {
        #[cfg(feature = "testcontainers")]
        if crate::containers_requested() {
            return Self {
                inner: KafkaInner::Container(Box::new(
                    crate::containers::ContainerKafka::start().await,
                )),
            };
        }
        #[cfg(not(feature = "testcontainers"))]
        if crate::containers_requested() {
            panic!(
                "OUTBOX_TEST_BACKEND=containers, but outbox-test-harness was built without its \
                 `testcontainers` feature"
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("outbox-kafka-")
            .tempdir()
            .expect("temporary folder");
        let node = ProcessKafka {
            dir,
            port: free_port(),
            controller_port: free_port(),
        };
        node.start_again().await;
        Self {
            inner: KafkaInner::Process(node),
        }
    }

    /// The address to bootstrap from.
    pub fn bootstrap(&self) -> String {
        match &self.inner {
            KafkaInner::Process(node) => format!("127.0.0.1:{}", node.port),
            #[cfg(feature = "testcontainers")]
            KafkaInner::Container(node) => node.bootstrap(),
        }
    }

    /// Starts the broker again after [`stop`](Self::stop) or [`kill`](Self::kill), on the same
    /// ports and data; returns once it answers.
    pub async fn start_again(&self) {
        match &self.inner {
            KafkaInner::Process(node) => node.start_again().await,
            #[cfg(feature = "testcontainers")]
            KafkaInner::Container(node) => node.start_again().await,
        }
    }

    /// Stops the broker gracefully (SIGTERM) and waits until it is gone.
    pub async fn stop(&self) {
        match &self.inner {
            KafkaInner::Process(node) => node.stop().await,
            #[cfg(feature = "testcontainers")]
            KafkaInner::Container(node) => node.stop(None).await,
        }
    }

    /// Kills the broker (SIGKILL) and waits until it is gone.
    pub async fn kill(&self) {
        match &self.inner {
            KafkaInner::Process(node) => node.kill().await,
            #[cfg(feature = "testcontainers")]
            KafkaInner::Container(node) => node.stop(Some(0)).await,
        }
    }
}

/// A broker process run by `scripts/kafka-node.sh`.
#[derive(Debug)]
struct ProcessKafka {
    dir: TempDir,
    port: u16,
    controller_port: u16,
}

impl ProcessKafka {
    fn script(&self) -> Command {
        let mut command = Command::new("bash");
        command
            .arg(repo_root().join("scripts/kafka-node.sh"))
            .env("OUTBOX_KAFKA_HEAP", "384m");
        command
    }

    async fn start_again(&self) {
        let mut command = self.script();
        command
            .arg("start")
            .arg(self.dir.path())
            .arg(self.port.to_string())
            .arg(self.controller_port.to_string());
        run_async("starting a private Kafka broker", command).await;
    }

    async fn stop(&self) {
        let mut command = self.script();
        command.arg("stop").arg(self.dir.path());
        run_async("stopping a private Kafka broker", command).await;
    }

    async fn kill(&self) {
        let mut command = self.script();
        command.arg("stop").arg(self.dir.path()).arg("--kill");
        run_async("killing a private Kafka broker", command).await;
    }
}

impl Drop for ProcessKafka {
    fn drop(&mut self) {
        let _ = self
            .script()
            .arg("stop")
            .arg(self.dir.path())
            .arg("--kill")
            .output();
    }
}

/// A PostgreSQL server of one test's own: the machine's PostgreSQL binaries (a fresh cluster in a
/// temporary folder, trust authentication on 127.0.0.1, a free port), or with
/// `OUTBOX_TEST_BACKEND=containers` a container of its own.
///
/// Dropping it stops the server and deletes its data.
#[derive(Debug)]
pub struct PostgresNode {
    inner: PostgresInner,
}

#[derive(Debug)]
enum PostgresInner {
    Process(ProcessPostgres),
    #[cfg(feature = "testcontainers")]
    Container(Box<crate::containers::ContainerPostgres>),
}

impl PostgresNode {
    /// Initialises a cluster and starts it; returns once it accepts connections.
    pub async fn start() -> Self {
        #[cfg(feature = "testcontainers")]
        if crate::containers_requested() {
            return Self {
                inner: PostgresInner::Container(Box::new(
                    crate::containers::ContainerPostgres::start().await,
                )),
            };
        }
        #[cfg(not(feature = "testcontainers"))]
        if crate::containers_requested() {
            panic!(
                "OUTBOX_TEST_BACKEND=containers, but outbox-test-harness was built without its \
                 `testcontainers` feature"
            );
        }
        Self {
            inner: PostgresInner::Process(ProcessPostgres::start().await),
        }
    }

    /// The URL of a database on the server as a superuser (`postgres` on a process, `outbox` in
    /// a container).
    pub fn url(&self) -> String {
        match &self.inner {
            PostgresInner::Process(node) => node.url(),
            #[cfg(feature = "testcontainers")]
            PostgresInner::Container(node) => node.url(),
        }
    }

    /// Starts the server (again); returns once it accepts connections.
    pub async fn start_again(&self) {
        match &self.inner {
            PostgresInner::Process(node) => node.start_again().await,
            #[cfg(feature = "testcontainers")]
            PostgresInner::Container(node) => node.start_again().await,
        }
    }

    /// Stops the server. `immediate` is a crash (no checkpoint, clients cut off at once); otherwise
    /// a fast shutdown (clients disconnected, clean checkpoint).
    pub async fn stop(&self, immediate: bool) {
        match &self.inner {
            PostgresInner::Process(node) => node.stop(immediate).await,
            #[cfg(feature = "testcontainers")]
            PostgresInner::Container(node) => node.stop(immediate).await,
        }
    }

    /// Stops the server with a crash, waits `down_for`, and starts it again.
    pub async fn restart(&self, down_for: Duration) {
        self.stop(true).await;
        tokio::time::sleep(down_for).await;
        self.start_again().await;
    }
}

/// A server process on the machine's PostgreSQL binaries.
#[derive(Debug)]
struct ProcessPostgres {
    dir: TempDir,
    bindir: PathBuf,
    port: u16,
}

impl ProcessPostgres {
    async fn start() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("outbox-pg-")
            .tempdir()
            .expect("temporary folder");
        let node = Self {
            bindir: pg_bindir(),
            port: free_port(),
            dir,
        };
        if is_root() {
            run(
                "chown",
                Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(node.dir.path()),
            );
        }
        let mut initdb = node.pg("initdb");
        initdb.arg("-D").arg(node.data()).args([
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--no-sync",
        ]);
        run_async("initdb for a private PostgreSQL", initdb).await;
        node.start_again().await;
        node
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A command for one of the server binaries, run as the `postgres` user when we are root
    /// (PostgreSQL refuses to run as root).
    fn pg(&self, binary: &str) -> Command {
        let path = self.bindir.join(binary);
        if is_root() {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(path);
            command
        } else {
            Command::new(path)
        }
    }

    async fn start_again(&self) {
        let mut command = self.pg("pg_ctl");
        command
            .arg("-D")
            .arg(self.data())
            .arg("-l")
            .arg(self.dir.path().join("server.log"))
            .arg("-o")
            .arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=50",
                self.port,
                self.dir.path().display()
            ))
            .args(["-w", "-t", "60", "start"]);
        run_async("starting a private PostgreSQL", command).await;
    }

    async fn stop(&self, immediate: bool) {
        let mut command = self.pg("pg_ctl");
        command
            .arg("-D")
            .arg(self.data())
            .args(["-m", if immediate { "immediate" } else { "fast" }])
            .args(["-w", "-t", "60", "stop"]);
        run_async("stopping a private PostgreSQL", command).await;
    }
}

impl Drop for ProcessPostgres {
    fn drop(&mut self) {
        let _ = self
            .pg("pg_ctl")
            .arg("-D")
            .arg(self.data())
            .args(["-m", "immediate", "-w", "stop"])
            .output();
    }
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Where `initdb` and `pg_ctl` live: `OUTBOX_PG_BINDIR`, else Debian's
/// `/usr/lib/postgresql/<newest>/bin`, else `pg_config --bindir`.
fn pg_bindir() -> PathBuf {
    if let Ok(dir) = std::env::var("OUTBOX_PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let debian = Path::new("/usr/lib/postgresql");
    if let Ok(entries) = std::fs::read_dir(debian) {
        let mut versions: Vec<(u32, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|e| {
                let version = e.file_name().to_str()?.parse::<u32>().ok()?;
                let bin = e.path().join("bin");
                bin.join("initdb").exists().then_some((version, bin))
            })
            .collect();
        versions.sort();
        if let Some((_, bin)) = versions.pop() {
            return bin;
        }
    }
    let output = Command::new("pg_config")
        .arg("--bindir")
        .output()
        .expect("PostgreSQL server binaries (set OUTBOX_PG_BINDIR)");
    PathBuf::from(String::from_utf8_lossy(&output.stdout).trim())
}
