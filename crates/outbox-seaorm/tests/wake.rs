//! Wake-ups through PostgreSQL when things go wrong: the leader's `LISTEN` connection cut off, a
//! database that refuses connections, a notification that cannot be sent, a wake from a thread
//! without a runtime. None of them ends a wait early (the relay keeps polling) and each recovers
//! by itself. In a test binary of its own, as it reads the repository's log lines: `tracing`
//! caches per-callsite interest process-wide.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use outbox_core::RelayStore;
use outbox_seaorm::PostgresOutbox;
use outbox_test_harness::{TestDatabase, database_url};
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, Statement};
use tokio::task::JoinHandle;

/// Collects formatted log lines.
#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Lines {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// Every log line of the process, at every level.
fn logs() -> Lines {
    static LINES: OnceLock<Lines> = OnceLock::new();
    LINES
        .get_or_init(|| {
            let lines = Lines::default();
            let writer = lines.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_ansi(false)
                .with_writer(move || writer.clone())
                .finish();
            tracing::subscriber::set_global_default(subscriber).unwrap();
            lines
        })
        .clone()
}

/// A repository on a pool of its own that gives up on a connection after 2 s.
async fn store_on(db: &TestDatabase) -> Arc<PostgresOutbox> {
    let mut options = ConnectOptions::new(db.url());
    options
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(2))
        .sqlx_logging(false);
    let pool = Database::connect(options).await.unwrap();
    Arc::new(PostgresOutbox::new(pool).unwrap())
}

/// Waits for a wake-up in the background, as the leader does between polls.
fn waiting(store: &Arc<PostgresOutbox>) -> JoinHandle<()> {
    let store = store.clone();
    tokio::spawn(async move { store.wait_for_wake_up().await })
}

/// Calls `wake` every 20 ms until `waiter` returns; panics after 10 s.
async fn wake_until_woken(waiter: JoinHandle<()>, wake: impl Fn()) {
    for _ in 0..500 {
        if waiter.is_finished() {
            return waiter.await.unwrap();
        }
        wake();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the waiter was never woken");
}

async fn until_logged(lines: &Lines, message: &str) {
    for _ in 0..500 {
        if lines.text().lines().any(|l| l.contains(message)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no log line {message:?} in:\n{}", lines.text());
}

async fn execute(conn: &DatabaseConnection, sql: String) -> i64 {
    conn.query_one(Statement::from_string(sea_orm::DbBackend::Postgres, sql))
        .await
        .unwrap()
        .map_or(0, |row| row.try_get_by_index(0).unwrap_or_default())
}

#[tokio::test]
async fn a_listener_cut_off_and_refused_keeps_waiting_and_listens_again_when_the_database_is_back()
{
    let lines = logs();
    let db = TestDatabase::create().await;
    let store = store_on(&db).await;
    let wake = store.remote_wake().expect("PostgreSQL carries wake-ups");
    wake_until_woken(waiting(&store), || wake.wake()).await;

    // The listener from the first wait is kept; cut it off, and every other connection to the
    // database, and refuse new ones (from another database: PostgreSQL refuses it on its own).
    // Wake-ups sent after the first wait ended may still be buffered: wait them off, until a
    // wait stays blocked.
    let waiter = loop {
        let waiter = waiting(&store);
        tokio::time::sleep(Duration::from_millis(300)).await;
        if !waiter.is_finished() {
            break waiter;
        }
    };
    let server = Database::connect(database_url().await).await.unwrap();
    let name = db.name();
    execute(
        &server,
        format!("ALTER DATABASE \"{name}\" WITH ALLOW_CONNECTIONS false"),
    )
    .await;
    let cut = execute(
        &server,
        format!(
            "SELECT count(pg_terminate_backend(pid, 10000)) FROM pg_stat_activity \
             WHERE datname = '{name}'"
        ),
    )
    .await;
    assert!(cut >= 1, "the listener's connection was cut");
    wake.wake();
    until_logged(&lines, "outbox relay lost its wake-up listener; it polls").await;
    until_logged(&lines, "outbox relay cannot listen for wake-ups; it polls").await;
    until_logged(
        &lines,
        "outbox wake-up notification not sent; the relay polls",
    )
    .await;
    assert!(
        lines
            .text()
            .lines()
            .filter(|l| l.contains("it polls") || l.contains("the relay polls"))
            .all(|l| l.contains("error=")),
        "each line says why"
    );
    assert!(
        !waiter.is_finished(),
        "a lost listener is no wake-up: the wait goes on (the relay's poll timer ends it)"
    );

    execute(
        &server,
        format!("ALTER DATABASE \"{name}\" WITH ALLOW_CONNECTIONS true"),
    )
    .await;
    // The sender that failed sends again, and the waiter listens again and hears it.
    wake_until_woken(waiter, || wake.wake()).await;
    server.close().await.unwrap();
}

#[test]
fn a_wake_from_a_thread_without_a_runtime_is_skipped_and_later_wakes_still_go_out() {
    let _lines = logs();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let (db, store) = runtime.block_on(async {
        let db = TestDatabase::create().await;
        let store = store_on(&db).await;
        (db, store)
    });
    let wake = store.remote_wake().expect("PostgreSQL carries wake-ups");
    // No runtime on this thread to send it with: nothing is sent, and nothing is left running.
    wake.wake();
    runtime.block_on(async { wake_until_woken(waiting(&store), || wake.wake()).await });
    // The listener and the pool close on the runtime.
    runtime.block_on(async move { drop((store, wake)) });
    drop(db);
}

#[tokio::test]
async fn a_steady_stream_of_commits_shares_notifications_in_windows_growing_to_4_ms() {
    let db = TestDatabase::create().await;
    let store = store_on(&db).await;
    let wake = store.remote_wake().expect("PostgreSQL carries wake-ups");
    let mut listener = sea_orm::sqlx::postgres::PgListener::connect(db.url())
        .await
        .unwrap();
    listener.listen("outbox_wake").await.unwrap();

    // A commit every 0.5 ms for 200 ms: with windows growing from 1 to 4 ms, at most
    // 200 / 4 + the first windows' few notifications; fixed 1 ms windows would send ~100.
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_millis(200) {
        wake.wake();
        tokio::time::sleep(Duration::from_micros(500)).await;
    }
    let burst = started.elapsed();
    // The last window closes, then nothing more is sent.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut received = 0u32;
    while tokio::time::timeout(Duration::from_millis(200), listener.recv())
        .await
        .is_ok()
    {
        received += 1;
    }
    let most = (burst.as_millis() / 4) as u32 + 4;
    assert!(received >= 1, "the burst woke the relay");
    assert!(
        received <= most,
        "{received} notifications for a {burst:?} burst (at most {most} with 4 ms windows)"
    );
}
