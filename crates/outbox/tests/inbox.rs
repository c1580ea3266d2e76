//! The facade's inbox against the real PostgreSQL and Kafka: every message delivered twice (the
//! same bytes published again) is applied once and causes one outbox event, whose relay
//! publishes it; a poison message is rejected with its bytes and does not block its partition,
//! and an operator replays it once its cause is fixed; a transient handler failure is retried
//! without losing or reordering anything; bad configuration is refused.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use outbox::prelude::*;
use outbox::{Inbox, InboxSettings, Replayed};
use outbox_test_harness::{TestDatabase, TestTopic, consume, unique_name};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sea_orm::{DatabaseConnection, Statement};

/// Applies `{"n": N, "key": K}` by inserting `(key, n)` into `applied` and adding an
/// `Applied` event; refuses `"poison": true` while `refuse_poison` is set, and fails
/// transiently the first `transient_failures` times.
struct Apply {
    refuse_poison: Arc<AtomicBool>,
    transient_failures: Arc<AtomicUsize>,
}

#[async_trait]
impl InboxHandler<OutboxTransaction> for Apply {
    async fn handle(
        &self,
        txn: &OutboxTransaction,
        message: &InboxMessage,
    ) -> Result<Handled, HandlerError> {
        let body: serde_json::Value = message.json()?;
        if body["poison"] == true && self.refuse_poison.load(Ordering::SeqCst) {
            return Err(HandlerError::permanent("poison refused"));
        }
        if self
            .transient_failures
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(HandlerError::transient("database busy (simulated)"));
        }
        let key = body["key"].as_str().unwrap_or("none").to_owned();
        let n = body["n"].as_i64().unwrap_or(-1);
        txn.execute(Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            "INSERT INTO applied (key, n) VALUES ($1, $2)",
            [key.clone().into(), n.into()],
        ))
        .await
        .map_err(|e| HandlerError::transient(e.to_string()))?;
        txn.add(
            NewOutboxEvent::json("thing", &key, "Applied", &serde_json::json!({"n": n}))
                .map_err(|e| HandlerError::permanent(e.to_string()))?,
        )
        .await?;
        Ok(Handled::applied())
    }
}

struct Setup {
    _db: TestDatabase,
    conn: DatabaseConnection,
    input: TestTopic,
    output: TestTopic,
    outbox: Outbox,
    refuse_poison: Arc<AtomicBool>,
    transient_failures: Arc<AtomicUsize>,
}

async fn setup() -> Setup {
    let db = TestDatabase::create().await;
    let conn = db.connect().await;
    outbox::migrate(&conn).await.unwrap();
    conn.execute_unprepared("CREATE TABLE applied (key text NOT NULL, n bigint NOT NULL)")
        .await
        .unwrap();
    let input = TestTopic::create("inbox_in", 2).await;
    let output = TestTopic::create("inbox_out", 1).await;
    let outbox = Outbox::builder(conn.clone())
        .kafka(KafkaConfig::new(output.bootstrap()))
        .topic("Applied", output.name())
        .settings(RelaySettings::default().with_poll_interval(Duration::from_millis(100)))
        .start()
        .unwrap();
    Setup {
        _db: db,
        conn,
        input,
        output,
        outbox,
        refuse_poison: Arc::new(AtomicBool::new(true)),
        transient_failures: Arc::new(AtomicUsize::new(0)),
    }
}

impl Setup {
    fn inbox(&self, group: &str) -> Inbox {
        self.outbox
            .inbox(KafkaConsumerConfig::new(self.input.bootstrap(), group))
            .handler(
                "test.apply",
                [self.input.name()],
                Apply {
                    refuse_poison: self.refuse_poison.clone(),
                    transient_failures: self.transient_failures.clone(),
                },
            )
            .settings(
                InboxSettings::default()
                    .with_transient_backoff_base(Duration::from_millis(20))
                    .with_transient_backoff_max(Duration::from_millis(100)),
            )
            .start()
            .unwrap()
    }

    async fn count(&self, sql: &str) -> i64 {
        let row = self
            .conn
            .query_one(Statement::from_string(sea_orm::DbBackend::Postgres, sql))
            .await
            .unwrap()
            .unwrap();
        row.try_get_by_index::<i64>(0).unwrap()
    }

    async fn applied(&self) -> Vec<(String, i64)> {
        let rows = self
            .conn
            .query_all(Statement::from_string(
                sea_orm::DbBackend::Postgres,
                "SELECT key, n FROM applied ORDER BY ctid",
            ))
            .await
            .unwrap();
        rows.iter()
            .map(|r| (r.try_get("", "key").unwrap(), r.try_get("", "n").unwrap()))
            .collect()
    }

    async fn until_applied(&self, count: i64) {
        for _ in 0..600 {
            if self.count("SELECT count(*) FROM applied").await >= count {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "only {} of {count} messages applied",
            self.count("SELECT count(*) FROM applied").await
        );
    }
}

/// Publishes `(key, payload, event_id)` in order, each to the partition of its key.
async fn publish(topic: &TestTopic, messages: &[(String, String, Option<String>)]) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", topic.bootstrap())
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    for (key, payload, event_id) in messages {
        let mut record = FutureRecord::to(topic.name()).key(key).payload(payload);
        if let Some(id) = event_id {
            record = record.headers(OwnedHeaders::new().insert(Header {
                key: "event_id",
                value: Some(id.as_bytes()),
            }));
        }
        producer
            .send(record, Duration::from_secs(10))
            .await
            .unwrap();
    }
}

fn message(key: &str, n: i64) -> (String, String, Option<String>) {
    (
        key.to_owned(),
        serde_json::json!({"key": key, "n": n}).to_string(),
        Some(uuid::Uuid::now_v7().to_string()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_message_delivered_twice_is_applied_once_with_one_outbox_event() {
    let s = setup().await;
    let messages: Vec<_> = (0..40)
        .map(|n| message(&format!("k{}", n % 4), n))
        .collect();
    publish(&s.input, &messages).await;
    // The same bytes again: what a relay that crashed before acknowledging would send.
    publish(&s.input, &messages).await;

    let group = unique_name("g");
    let inbox = s.inbox(&group);
    s.until_applied(40).await;
    // Let the duplicates (the second copies) be read and skipped.
    for _ in 0..600 {
        if inbox.status().duplicates >= 40 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(inbox.status().duplicates, 40, "{:?}", inbox.status());
    inbox.stop().await.unwrap();

    let applied = s.applied().await;
    assert_eq!(applied.len(), 40, "each message applied once");
    for key in ["k0", "k1", "k2", "k3"] {
        let ns: Vec<i64> = applied
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, n)| *n)
            .collect();
        assert!(
            ns.windows(2).all(|w| w[0] < w[1]),
            "{key} out of order: {ns:?}"
        );
    }
    assert_eq!(s.count("SELECT count(*) FROM event_inbox").await, 40);
    // One event per applied message, published by the relay.
    let out = consume(
        &s.output.bootstrap(),
        s.output.name(),
        40,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(out.len(), 40);

    // A new consumer of the group starts after the committed offsets: nothing more to apply.
    let again = s.inbox(&group);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(again.status().consumed, 0, "{:?}", again.status());
    again.stop().await.unwrap();
    assert_eq!(s.count("SELECT count(*) FROM applied").await, 40);
    s.outbox.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_is_rejected_without_blocking_its_partition_and_replayed_once_fixed() {
    let s = setup().await;
    let poison_id = uuid::Uuid::now_v7();
    let messages = vec![
        message("k", 1),
        (
            "k".to_owned(),
            serde_json::json!({"key": "k", "n": 2, "poison": true}).to_string(),
            Some(poison_id.to_string()),
        ),
        // Not JSON, and no event id at all: rejected under an id made from its position.
        ("k".to_owned(), "\u{0}garbage".to_owned(), None),
        message("k", 3),
    ];
    publish(&s.input, &messages).await;
    let inbox = s.inbox(&unique_name("g"));
    s.until_applied(2).await;
    for _ in 0..200 {
        if inbox.status().rejected >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        s.applied().await,
        vec![("k".to_owned(), 1), ("k".to_owned(), 3)],
        "the messages after the poison were applied"
    );
    let rejected = inbox.rejected(None, 10).await.unwrap();
    assert_eq!(rejected.len(), 2, "{rejected:?}");
    let poison = rejected
        .iter()
        .find(|r| r.entry.event_id == poison_id)
        .expect("the refused message is listed");
    assert!(poison.error.contains("poison refused"), "{}", poison.error);
    assert_eq!(
        poison.message.payload.as_deref(),
        Some(messages[1].1.as_bytes()),
        "the bytes are kept for a replay"
    );
    let garbage = rejected
        .iter()
        .find(|r| r.entry.event_id != poison_id)
        .unwrap();
    assert!(garbage.error.contains("JSON"), "{}", garbage.error);
    assert_eq!(
        garbage.message.payload.as_deref(),
        Some(messages[2].1.as_bytes())
    );

    // Still refused: stays rejected, nothing applied.
    assert!(matches!(
        inbox.replay("test.apply", poison_id).await.unwrap(),
        Replayed::Failed(_)
    ));
    assert_eq!(s.count("SELECT count(*) FROM applied").await, 2);
    // The cause is fixed: the replay applies it once, and a second replay finds nothing.
    s.refuse_poison.store(false, Ordering::SeqCst);
    assert!(matches!(
        inbox.replay("test.apply", poison_id).await.unwrap(),
        Replayed::Applied(_)
    ));
    assert!(matches!(
        inbox.replay("test.apply", poison_id).await.unwrap(),
        Replayed::NotRejected
    ));
    assert_eq!(s.count("SELECT count(*) FROM applied").await, 3);
    assert_eq!(inbox.rejected(None, 10).await.unwrap().len(), 1);
    inbox.stop().await.unwrap();
    s.outbox.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transient_failures_are_retried_without_loss_or_reordering() {
    let s = setup().await;
    s.transient_failures.store(5, Ordering::SeqCst);
    let messages: Vec<_> = (0..30)
        .map(|n| message(&format!("k{}", n % 3), n))
        .collect();
    publish(&s.input, &messages).await;
    let inbox = s.inbox(&unique_name("g"));
    s.until_applied(30).await;
    inbox.stop().await.unwrap();
    assert_eq!(s.transient_failures.load(Ordering::SeqCst), 0);
    let applied = s.applied().await;
    assert_eq!(applied.len(), 30, "nothing lost, nothing twice");
    for key in ["k0", "k1", "k2"] {
        let ns: Vec<i64> = applied
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, n)| *n)
            .collect();
        assert!(
            ns.windows(2).all(|w| w[0] < w[1]),
            "{key} out of order: {ns:?}"
        );
    }
    assert_eq!(inbox.status().rejected, 0);
    s.outbox.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inbox_configuration_is_refused() {
    let s = setup().await;
    let kafka = || KafkaConsumerConfig::new(s.input.bootstrap(), "g");
    let apply = || Apply {
        refuse_poison: s.refuse_poison.clone(),
        transient_failures: s.transient_failures.clone(),
    };
    let err = s.outbox.inbox(kafka()).build().unwrap_err();
    assert!(err.to_string().contains("no handler"), "{err}");
    let err = s
        .outbox
        .inbox(kafka())
        .handler("a", [s.input.name()], apply())
        .handler("b", [s.input.name()], apply())
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("already has a handler"), "{err}");
    let err = s
        .outbox
        .inbox(kafka().with_property("enable.auto.commit", "true"))
        .handler("a", [s.input.name()], apply())
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("enable.auto.commit"), "{err}");
    let err = s
        .outbox
        .inbox(kafka())
        .handler("a", [s.input.name()], apply())
        .settings(InboxSettings::default().with_max_batch(0))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("max_batch"), "{err}");
    s.outbox.stop().await.unwrap();
}

/// Misbehaves on purpose: `swallow` ignores a failed statement and answers `applied`;
/// `fixed` adds an event whose id is always the same (a unique violation the second time).
struct Sloppy {
    fixed: outbox::EventId,
}

#[async_trait]
impl InboxHandler<OutboxTransaction> for Sloppy {
    async fn handle(
        &self,
        txn: &OutboxTransaction,
        message: &InboxMessage,
    ) -> Result<Handled, HandlerError> {
        let body: serde_json::Value = message.json()?;
        let n = body["n"].as_i64().unwrap_or(-1);
        match body["mode"].as_str() {
            Some("swallow") => {
                let _ = txn.execute_unprepared("SELECT 1 / 0").await;
            }
            Some("fixed") => {
                let event = NewOutboxEvent::json("thing", "k", "Applied", &serde_json::json!({}))
                    .unwrap()
                    .with_event_id(self.fixed);
                txn.add(event).await?;
            }
            _ => {}
        }
        txn.execute(Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            "INSERT INTO applied (key, n) VALUES ('k', $1)",
            [n.into()],
        ))
        .await
        .ok();
        Ok(Handled::applied())
    }
}

/// A handler that ignores a failed statement cannot make its message count as applied (the
/// aborted transaction's commit would roll back silently), and a unique violation raised by the
/// outbox's own insert is permanent: both messages are rejected, nothing retries forever, and
/// the messages around them are applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_that_retrying_cannot_fix_are_rejected_not_retried_forever() {
    let db = TestDatabase::create().await;
    let conn = db.connect().await;
    outbox::migrate(&conn).await.unwrap();
    conn.execute_unprepared("CREATE TABLE applied (key text NOT NULL, n bigint NOT NULL)")
        .await
        .unwrap();
    let input = TestTopic::create("inbox_sloppy", 1).await;
    // No relay: the first event with the fixed id stays in the outbox.
    let outbox = Outbox::builder(conn.clone())
        .topic("Applied", "unused.topic")
        .writer_only()
        .unwrap();
    let body = |n: i64, mode: &str| {
        (
            "k".to_owned(),
            serde_json::json!({"n": n, "mode": mode}).to_string(),
            Some(uuid::Uuid::now_v7().to_string()),
        )
    };
    publish(
        &input,
        &[
            body(0, "fixed"),
            body(1, "swallow"),
            body(2, "fixed"),
            body(3, "plain"),
        ],
    )
    .await;
    let inbox = outbox
        .inbox(KafkaConsumerConfig::new(
            input.bootstrap(),
            unique_name("g"),
        ))
        .handler(
            "test.sloppy",
            [input.name()],
            Sloppy {
                fixed: outbox::EventId::new(),
            },
        )
        .settings(
            InboxSettings::default()
                .with_transient_backoff_base(Duration::from_millis(20))
                .with_transient_backoff_max(Duration::from_millis(100)),
        )
        .start()
        .unwrap();
    for _ in 0..600 {
        let status = inbox.status();
        if status.consumed + status.rejected >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = inbox.status();
    inbox.stop().await.unwrap();
    assert_eq!((status.consumed, status.rejected), (2, 2), "{status:?}");
    let rejected = inbox.rejected(None, 10).await.unwrap();
    let errors: Vec<&str> = rejected.iter().map(|r| r.error.as_str()).collect();
    assert!(errors.iter().any(|e| e.contains("aborted")), "{errors:?}");
    assert!(
        errors
            .iter()
            .any(|e| e.contains("event_outbox_event_id_key")),
        "{errors:?}"
    );
    let row = conn
        .query_one(Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT string_agg(n::text, ',' ORDER BY n) FROM applied",
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.try_get_by_index::<String>(0).unwrap(), "0,3");
}
