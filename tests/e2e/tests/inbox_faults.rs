//! The inbox under faults made for real: its consumer process killed with SIGKILL after the
//! database commit and before the offset commit, the broker stopped and started again during
//! consumption, PostgreSQL crashed and restarted under the consumer. Each time every message is
//! applied exactly once (the handler's table has no unique key, so a second application would
//! show), in order per key.

use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use outbox::prelude::*;
use outbox::{Inbox, InboxSettings};
use outbox_e2e::wait_until;
use outbox_test_harness::{
    KafkaNode, PostgresNode, TestDatabase, TestTopic, init_tracing, kafka_bootstrap_servers,
    unique_name,
};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sea_orm::{DatabaseConnection, DbBackend, Statement};
use tokio::io::{AsyncBufReadExt, BufReader};

const APPLIED: &str = "CREATE TABLE applied (key text NOT NULL, n bigint NOT NULL, \
                       event_id uuid NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())";

async fn database(db: &TestDatabase) -> DatabaseConnection {
    let conn = db.connect().await;
    outbox::migrate(&conn).await.unwrap();
    conn.execute_unprepared(APPLIED).await.unwrap();
    conn
}

fn producer(bootstrap: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "0")
        .set("partitioner", "murmur2_random")
        .set("log_level", "3")
        .create()
        .unwrap()
}

/// Publishes `{"key", "n"}` (plus `extra`) with an `event_id` header, and waits for the ack.
async fn publish(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    n: i64,
    extra: serde_json::Value,
) {
    let mut body = serde_json::json!({"key": key, "n": n});
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        body.extend(extra.clone());
    }
    let payload = body.to_string();
    let event_id = uuid::Uuid::now_v7().to_string();
    producer
        .send(
            FutureRecord::to(topic)
                .key(key)
                .payload(&payload)
                .headers(OwnedHeaders::new().insert(Header {
                    key: "event_id",
                    value: Some(event_id.as_bytes()),
                })),
            Duration::from_secs(120),
        )
        .await
        .unwrap();
}

async fn count(conn: &DatabaseConnection, sql: &str) -> Option<i64> {
    let row = conn
        .query_one(Statement::from_string(DbBackend::Postgres, sql))
        .await
        .ok()??;
    row.try_get_by_index::<i64>(0).ok()
}

/// Every message applied exactly once, and in order per key.
async fn assert_exactly_once_in_order(conn: &DatabaseConnection, expected: i64) {
    assert_eq!(
        count(conn, "SELECT count(*) FROM applied").await,
        Some(expected)
    );
    assert_eq!(
        count(conn, "SELECT count(DISTINCT event_id) FROM applied").await,
        Some(expected),
        "a message was applied twice"
    );
    let out_of_order = count(
        conn,
        "SELECT count(*) FROM (SELECT n < lag(n) OVER (PARTITION BY key ORDER BY at) AS back \
         FROM applied) t WHERE back",
    )
    .await;
    assert_eq!(out_of_order, Some(0), "a key was applied out of order");
}

struct Apply;

#[async_trait]
impl InboxHandler<OutboxTransaction> for Apply {
    async fn handle(
        &self,
        txn: &OutboxTransaction,
        message: &InboxMessage,
    ) -> Result<Handled, HandlerError> {
        let body: serde_json::Value = message.json()?;
        txn.execute(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO applied (key, n, event_id) VALUES ($1, $2, $3)",
            [
                body["key"].as_str().unwrap_or("none").into(),
                body["n"].as_i64().unwrap_or(-1).into(),
                message.event_id()?.into(),
            ],
        ))
        .await
        .map_err(|e| HandlerError::from(outbox::Error::from(e)))?;
        Ok(Handled::applied())
    }
}

fn in_process(conn: &DatabaseConnection, bootstrap: &str, topic: &str) -> (Outbox, Inbox) {
    let outbox = Outbox::builder(conn.clone()).writer_only().unwrap();
    let inbox = outbox
        .inbox(
            KafkaConsumerConfig::new(bootstrap, unique_name("g"))
                .with_property("session.timeout.ms", "6000"),
        )
        .handler("e2e.apply", [topic], Apply)
        .settings(
            InboxSettings::default()
                .with_max_batch(20)
                .with_transient_backoff_base(Duration::from_millis(50))
                .with_transient_backoff_max(Duration::from_millis(500)),
        )
        .start()
        .unwrap();
    (outbox, inbox)
}

/// The consumer process (`src/bin/inbox-consumer.rs`), its stdout read line by line.
struct Child {
    process: tokio::process::Child,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Child {
    fn spawn(database_url: &str, bootstrap: &str, topic: &str, group: &str) -> Self {
        let mut process = tokio::process::Command::new(env!("CARGO_BIN_EXE_inbox-consumer"))
            .env("DATABASE_URL", database_url)
            .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
            .env("INBOX_TOPIC", topic)
            .env("INBOX_GROUP", group)
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = process.stdout.take().unwrap();
        Self {
            process,
            lines: BufReader::new(stdout).lines(),
        }
    }

    async fn line_starting(&mut self, prefix: &str) -> String {
        let found = tokio::time::timeout(Duration::from_secs(120), async {
            while let Some(line) = self.lines.next_line().await.unwrap() {
                if line.starts_with(prefix) {
                    return line;
                }
            }
            panic!("the consumer process ended before printing `{prefix}`");
        })
        .await;
        found.unwrap_or_else(|_| panic!("no `{prefix}` line within 120 s"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_between_the_database_commit_and_the_offset_commit_applies_nothing_twice()
{
    init_tracing();
    let node = KafkaNode::start().await;
    let topic = TestTopic::create_on(&node.bootstrap(), "inbox_sigkill", 1).await;
    let db = TestDatabase::create().await;
    let conn = database(&db).await;
    let producer = producer(&node.bootstrap());
    for n in 0..10 {
        // The handler of message 5 pauses inside its transaction: the test's cue.
        let extra = if n == 5 {
            serde_json::json!({"pause_ms": 4000})
        } else {
            serde_json::json!({})
        };
        publish(&producer, topic.name(), "k", n, extra).await;
    }
    drop(producer);
    let group = unique_name("g");

    let mut first = Child::spawn(db.url(), &node.bootstrap(), topic.name(), &group);
    first.line_starting("pausing 5").await;
    // The broker dies while message 5's transaction is open: its database commit succeeds
    // after the pause, and its offset commit cannot.
    node.kill().await;
    wait_until(
        "the paused batch committed in the database",
        Duration::from_secs(60),
        || async { count(&conn, "SELECT count(*) FROM applied").await == Some(10) },
    )
    .await;
    first.process.start_kill().unwrap();
    first.process.wait().await.unwrap();

    node.start_again().await;
    let producer = self::producer(&node.bootstrap());
    for n in 10..13 {
        publish(&producer, topic.name(), "k", n, serde_json::json!({})).await;
    }
    let mut second = Child::spawn(db.url(), &node.bootstrap(), topic.name(), &group);
    second.line_starting("started").await;
    wait_until(
        "the new messages applied",
        Duration::from_secs(120),
        || async { count(&conn, "SELECT count(*) FROM applied").await == Some(13) },
    )
    .await;
    let pid = second.process.id().unwrap();
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let last = second.line_starting("final").await;
    second.process.wait().await.unwrap();

    // The second process read again what the first applied without committing its offset,
    // and skipped it: the window between the two commits was really hit.
    let duplicates: u64 = last
        .split_whitespace()
        .find_map(|field| field.strip_prefix("duplicates="))
        .and_then(|d| d.parse().ok())
        .unwrap();
    assert!(duplicates >= 1, "{last}");
    assert_exactly_once_in_order(&conn, 13).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_stopped_and_started_again_during_consumption_loses_nothing() {
    init_tracing();
    let node = KafkaNode::start().await;
    let topic = TestTopic::create_on(&node.bootstrap(), "inbox_outage", 3).await;
    let db = TestDatabase::create().await;
    let conn = database(&db).await;
    let (_outbox, inbox) = in_process(&conn, &node.bootstrap(), topic.name());

    let producer = producer(&node.bootstrap());
    let keys = ["a", "b", "c", "d", "e", "f"];
    for n in 0..60 {
        publish(
            &producer,
            topic.name(),
            keys[n as usize % 6],
            n,
            serde_json::json!({}),
        )
        .await;
    }
    wait_until("some applied", Duration::from_secs(60), || async {
        count(&conn, "SELECT count(*) FROM applied").await >= Some(1)
    })
    .await;

    node.stop().await;
    // Messages sent during the outage wait in the producer (it never gives up on them).
    let sending = {
        let producer = producer.clone();
        let topic = topic.name().to_owned();
        tokio::spawn(async move {
            for n in 60..120 {
                publish(
                    &producer,
                    &topic,
                    keys[n as usize % 6],
                    n,
                    serde_json::json!({}),
                )
                .await;
            }
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    node.start_again().await;
    sending.await.unwrap();

    wait_until("all applied", Duration::from_secs(120), || async {
        count(&conn, "SELECT count(*) FROM applied").await == Some(120)
    })
    .await;
    // Anything redelivered after the outage is dropped as a duplicate, not applied again.
    tokio::time::sleep(Duration::from_secs(2)).await;
    inbox.stop().await.unwrap();
    assert!(!inbox.status().running);
    assert_exactly_once_in_order(&conn, 120).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_under_the_consumer_recovers_without_a_restart() {
    init_tracing();
    let server = PostgresNode::start().await;
    let db = TestDatabase::create_on(&server.url()).await;
    let conn = database(&db).await;
    let bootstrap = kafka_bootstrap_servers().await;
    let topic = TestTopic::create_on(&bootstrap, "inbox_pg_restart", 2).await;
    let (_outbox, inbox) = in_process(&conn, &bootstrap, topic.name());

    let producer = producer(&bootstrap);
    let keys = ["a", "b", "c", "d"];
    for n in 0..50 {
        publish(
            &producer,
            topic.name(),
            keys[n as usize % 4],
            n,
            serde_json::json!({}),
        )
        .await;
    }
    wait_until(
        "the first half applied",
        Duration::from_secs(60),
        || async { count(&conn, "SELECT count(*) FROM applied").await == Some(50) },
    )
    .await;

    // A crash: every connection cut, the server away for two seconds, while messages arrive.
    let restart = tokio::spawn(async move {
        server.restart(Duration::from_secs(2)).await;
        server
    });
    for n in 50..100 {
        publish(
            &producer,
            topic.name(),
            keys[n as usize % 4],
            n,
            serde_json::json!({}),
        )
        .await;
    }
    let _server = restart.await.unwrap();

    wait_until(
        "the second half applied",
        Duration::from_secs(120),
        || async { count(&conn, "SELECT count(*) FROM applied").await == Some(100) },
    )
    .await;
    assert!(inbox.status().running, "the same worker recovered");
    inbox.stop().await.unwrap();
    assert_exactly_once_in_order(&conn, 100).await;
}
