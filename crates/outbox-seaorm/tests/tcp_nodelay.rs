//! Every kind of database connection `PostgresOutbox` uses has `TCP_NODELAY` on.
//!
//! Without it, a statement larger than about 16 KiB leaves in two segments and the second waits
//! for the server's delayed ACK (Nagle's algorithm): about 40 ms per statement (issue 10). sqlx
//! 0.8 sets the option on every TCP socket it opens; these tests read it back from the kernel for
//! the socket each connection really uses, so they fail if a dependency change drops it.

use std::str::FromStr;

use outbox_core::{NewOutboxEvent, OutboxWriter, RelayStore};
use outbox_seaorm::{OutboxMigrator, PostgresOutbox};
use outbox_test_harness::{TestDatabase, session_tcp_nodelay, tcp_nodelay_of_local_port};
use sea_orm::sqlx::postgres::PgConnectOptions;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait};
use sea_orm_migration::MigratorTrait;

async fn migrated() -> (TestDatabase, DatabaseConnection) {
    let db = TestDatabase::create().await;
    let conn = db.connect().await;
    OutboxMigrator::up(&conn, None).await.unwrap();
    (db, conn)
}

/// An event whose statement is far larger than one TCP segment's worth of Nagle's patience.
fn large_event(key: &str) -> NewOutboxEvent {
    let padding = "x".repeat(64 * 1024);
    NewOutboxEvent::json(
        "order",
        key,
        "OrderPlaced",
        &serde_json::json!({"id": key, "padding": padding}),
    )
    .unwrap()
    .with_topic("orders")
}

#[test]
fn the_probe_tells_a_socket_with_tcp_nodelay_from_one_without() {
    // A plain socket to the same server, where the test itself sets the option: the probe must
    // see both states, or the tests below would prove nothing.
    let url = outbox_test_harness::DEFAULT_DATABASE_URL;
    let url = std::env::var("DATABASE_URL").unwrap_or_else(|_| url.to_owned());
    let options = PgConnectOptions::from_str(&url).unwrap();
    let stream = std::net::TcpStream::connect((options.get_host(), options.get_port())).unwrap();
    let port = stream.local_addr().unwrap().port();
    stream.set_nodelay(false).unwrap();
    assert!(!tcp_nodelay_of_local_port(port).unwrap());
    stream.set_nodelay(true).unwrap();
    assert!(tcp_nodelay_of_local_port(port).unwrap());
}

#[tokio::test]
async fn add_event_on_a_pooled_transaction_runs_on_a_socket_with_tcp_nodelay() {
    let (_db, conn) = migrated().await;
    let outbox = PostgresOutbox::new(conn.clone()).unwrap();
    let txn = conn.begin().await.unwrap();
    outbox.add_event(&txn, large_event("o-1")).await.unwrap();
    assert!(
        session_tcp_nodelay(&txn).await,
        "the pooled connection add_event wrote through has TCP_NODELAY off"
    );
    txn.commit().await.unwrap();
}

#[tokio::test]
async fn the_relays_leadership_session_runs_on_a_socket_with_tcp_nodelay() {
    let (_db, conn) = migrated().await;
    let outbox = PostgresOutbox::new(conn.clone()).unwrap();
    outbox.add_event(&conn, large_event("o-1")).await.unwrap();
    assert!(outbox.acquire_leadership().await.unwrap());
    // Other sessions' open transactions may hold the commit horizon for a moment.
    let mut batch = outbox.claim_batch(10, None).await.unwrap().events;
    for _ in 0..500 {
        if !batch.is_empty() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        batch = outbox.claim_batch(10, None).await.unwrap().events;
    }
    assert_eq!(batch.len(), 1);
    let ids: Vec<i64> = batch.iter().map(|e| e.id).collect();
    assert_eq!(outbox.acknowledge(&ids, false).await.unwrap(), 1);

    // The leadership session is the one holding the advisory lock in this database.
    let row = conn
        .query_one(Statement::from_string(
            DbBackend::Postgres,
            "SELECT a.client_port AS port FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
             WHERE l.locktype = 'advisory' AND l.granted
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        ))
        .await
        .unwrap()
        .expect("a session holds the leadership lock");
    let port: i32 = row.try_get("", "port").unwrap();
    assert!(
        tcp_nodelay_of_local_port(u16::try_from(port).unwrap()).unwrap(),
        "the relay's leadership session has TCP_NODELAY off"
    );
    outbox.release_leadership().await.unwrap();
}
