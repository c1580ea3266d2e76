//! Behind a connection pooler in transaction mode (a real PgBouncer), session advisory locks
//! cannot elect one relay: the relay must notice and refuse to lead, while writers still work.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use outbox_core::{NewOutboxEvent, OutboxError, OutboxWriter, RelayStore};
use outbox_seaorm::{OutboxMigrator, PostgresOutbox};
use outbox_test_harness::TestDatabase;
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, TransactionTrait};
use sea_orm_migration::MigratorTrait;

/// A PgBouncer in transaction mode in front of the test server, stopped when dropped.
struct Bouncer {
    child: Child,
    port: u16,
    _dir: PathBuf,
}

impl Drop for Bouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self._dir);
    }
}

fn pgbouncer_binary() -> PathBuf {
    for candidate in ["/usr/sbin/pgbouncer", "/usr/bin/pgbouncer"] {
        if Path::new(candidate).exists() {
            return candidate.into();
        }
    }
    panic!("pgbouncer is not installed: run scripts/bootstrap.sh");
}

fn free_port() -> u16 {
    outbox_test_harness::free_port()
}

/// Parses `postgres://user:password@host:port/db`.
fn parts(url: &str) -> (String, String, String, String) {
    let rest = url.split("://").nth(1).unwrap();
    let (auth, rest) = rest.split_once('@').unwrap();
    let (user, password) = auth.split_once(':').unwrap();
    let (host_port, _db) = rest.split_once('/').unwrap();
    let (host, port) = host_port.split_once(':').unwrap_or((host_port, "5432"));
    (user.into(), password.into(), host.into(), port.into())
}

async fn start_bouncer(server_url: &str, round_robin: bool) -> Bouncer {
    let (user, password, host, port) = parts(server_url);
    let dir = std::env::temp_dir().join(format!("pgbouncer-{}", uuid_like()));
    std::fs::create_dir_all(&dir).unwrap();
    let listen = free_port();
    let ini = dir.join("pgbouncer.ini");
    std::fs::write(
        &ini,
        format!(
            "[databases]\n\
             * = host={host} port={port} user={user} password={password}\n\
             [pgbouncer]\n\
             listen_addr = 127.0.0.1\n\
             listen_port = {listen}\n\
             unix_socket_dir =\n\
             auth_type = any\n\
             pool_mode = transaction\n\
             default_pool_size = 4\n\
             server_round_robin = {rr}\n\
             ignore_startup_parameters = extra_float_digits,search_path,options\n\
             logfile = {log}\n\
             pidfile = {pid}\n",
            log = dir.join("pgbouncer.log").display(),
            pid = dir.join("pgbouncer.pid").display(),
            rr = u8::from(round_robin),
        ),
    )
    .unwrap();
    let mut command = Command::new(pgbouncer_binary());
    // PgBouncer refuses to run as root; as root, it switches to the server's user.
    if nix_is_root() {
        Command::new("chmod")
            .args(["-R", "a+rwX"])
            .arg(&dir)
            .status()
            .unwrap();
        command.args(["-u", "postgres"]);
    }
    let child = command
        .arg(&ini)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start pgbouncer");
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", listen)).is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Bouncer {
        child,
        port: listen,
        _dir: dir,
    }
}

fn nix_is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn uuid_like() -> String {
    format!(
        "{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos()
    )
}

async fn connect_through(bouncer: &Bouncer, db: &TestDatabase) -> DatabaseConnection {
    let (user, password, _, _) = parts(db.url());
    let pooled_url = format!(
        "postgres://{user}:{password}@127.0.0.1:{}/{}?statement-cache-capacity=0",
        bouncer.port,
        db.name()
    );
    let mut options = sea_orm::ConnectOptions::new(pooled_url);
    options.max_connections(3).sqlx_logging(false);
    Database::connect(options).await.unwrap()
}

/// Opens three transactions through the pooler at once, so it keeps three server connections
/// and (round robin) hands consecutive statements of one client to different ones.
async fn warm(pooled: &DatabaseConnection) {
    let mut open = Vec::new();
    for _ in 0..3 {
        let txn = pooled.begin().await.unwrap();
        txn.execute_unprepared("SELECT 1").await.unwrap();
        open.push(txn);
    }
    for txn in open {
        txn.commit().await.unwrap();
    }
}

#[tokio::test]
async fn a_relay_behind_a_transaction_mode_pooler_refuses_to_lead() {
    let db = TestDatabase::create().await;
    let direct = db.connect().await;
    OutboxMigrator::up(&direct, None).await.unwrap();
    let bouncer = start_bouncer(db.url(), true).await;
    let pooled = connect_through(&bouncer, &db).await;
    warm(&pooled).await;

    let relay = PostgresOutbox::new(pooled.clone()).unwrap();
    let mut refusals = 0;
    for _ in 0..5 {
        match relay.acquire_leadership().await {
            Err(OutboxError::Config(message)) => {
                assert!(message.contains("pooler"), "{message}");
                assert!(message.contains("directly"), "says what to do: {message}");
                refusals += 1;
            }
            other => panic!("the relay must refuse to lead behind the pooler: {other:?}"),
        }
    }
    assert_eq!(refusals, 5);

    // Nothing is left locked: a relay connected directly leads at once.
    let direct_relay = PostgresOutbox::new(direct.clone()).unwrap();
    assert!(direct_relay.acquire_leadership().await.unwrap());

    // Writers may go through the pooler.
    let event = NewOutboxEvent::new("order", "o-1", "OrderPlaced", b"{}".to_vec()).with_topic("t");
    let txn = pooled.begin().await.unwrap();
    relay.add_event(&txn, event).await.unwrap();
    txn.commit().await.unwrap();
    assert_eq!(direct_relay.stats().await.unwrap().pending, 1);
}

/// A pooler that happens to hand one client the same backend again and again (last in, first
/// out) lets the relay take the lock; the relay's periodic check notices once another client
/// takes that backend, gives the lock back and refuses to lead.
#[tokio::test]
async fn a_leader_whose_statements_move_to_another_backend_gives_up() {
    let db = TestDatabase::create().await;
    let direct = db.connect().await;
    OutboxMigrator::up(&direct, None).await.unwrap();
    let bouncer = start_bouncer(db.url(), false).await;
    let pooled = connect_through(&bouncer, &db).await;
    warm(&pooled).await;

    let relay = PostgresOutbox::new(pooled.clone())
        .unwrap()
        .with_session_checks(Duration::from_millis(100), Duration::from_secs(30));
    match relay.acquire_leadership().await {
        Ok(true) => {}
        other => panic!("the same backend twice in a row looks like a session: {other:?}"),
    }
    // Another client takes the backend the relay's statements went to, and keeps it.
    let other = connect_through(&bouncer, &db).await;
    let held = other.begin().await.unwrap();
    held.execute_unprepared("SELECT 1").await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    // The other client's transaction ends a moment later, freeing that backend again.
    let ending = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        held.commit().await.unwrap();
    });
    match relay.acquire_leadership().await {
        Err(OutboxError::Config(message)) => assert!(message.contains("pooler"), "{message}"),
        other => panic!("the relay must notice and give up: {other:?}"),
    }
    ending.await.unwrap();
    // It gave the lock back on the backend that held it: a direct relay leads.
    let direct_relay = PostgresOutbox::new(direct.clone()).unwrap();
    assert!(direct_relay.acquire_leadership().await.unwrap());
}
