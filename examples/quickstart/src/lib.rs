//! The outbox in one program, on the `outbox` facade: migrate, write a business row and its
//! event in one transaction, relay the event to Kafka, and read back what Kafka received. A
//! second transaction that rolls back shows that its event is never sent.
//!
//! [`run`] is the repository README's usage block plus the read-back; `main` runs it against
//! the services of `scripts/services.sh`, and the crate's test runs it against a database and a
//! topic of its own.

use std::time::Duration;

use futures::StreamExt;
use outbox::EventId;
use outbox::prelude::*;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// Any error of the example.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Where the example runs.
#[derive(Debug, Clone)]
pub struct Quickstart {
    /// The PostgreSQL database (the outbox table and `quickstart_orders` are created there).
    pub database_url: String,
    /// Kafka's bootstrap servers.
    pub bootstrap: String,
    /// The topic of `OrderPlaced` events (it must exist).
    pub topic: String,
}

/// One message Kafka received: key, headers, value.
#[derive(Debug, Clone)]
pub struct Received {
    /// The message key.
    pub key: String,
    /// The message headers.
    pub headers: Vec<(String, String)>,
    /// The message value.
    pub value: String,
}

/// What the run did.
#[derive(Debug)]
pub struct Report {
    /// The id of the committed event.
    pub committed: EventId,
    /// The id of the rolled-back event.
    pub rolled_back: EventId,
    /// What the topic received during the run.
    pub received: Vec<Received>,
}

impl Report {
    /// How often Kafka received the event with this id.
    pub fn count(&self, id: EventId) -> usize {
        let id = id.to_string();
        self.received
            .iter()
            .filter(|m| m.headers.iter().any(|(k, v)| k == "event_id" && *v == id))
            .count()
    }
}

/// Runs the example.
pub async fn run(config: &Quickstart) -> Result<Report, BoxError> {
    // 1. The outbox table comes from the library's migration; the orders table is ours.
    let db = sea_orm::Database::connect(&config.database_url).await?;
    outbox::migrate(&db).await?;
    db.execute_unprepared(
        "CREATE TABLE IF NOT EXISTS quickstart_orders (id text PRIMARY KEY, total int NOT NULL)",
    )
    .await?;
    let start = end_offsets(&config.bootstrap, &config.topic)?;

    // 2. The outbox: store, Kafka publisher and relay, started.
    let outbox = Outbox::builder(db)
        .kafka(KafkaConfig::new(&config.bootstrap))
        .topic("OrderPlaced", &config.topic)
        .start()?;

    // 3. The business row and its event, in one transaction; the commit wakes the relay.
    let order_id = format!("order-{}", EventId::new());
    let txn = outbox.begin().await?;
    txn.execute_unprepared(&format!(
        "INSERT INTO quickstart_orders (id, total) VALUES ('{order_id}', 42)"
    ))
    .await?;
    let placed = EventEnvelope::new(
        "OrderPlaced",
        "quickstart",
        serde_json::json!({"order_id": order_id, "total": 42}),
    );
    let committed = txn.add(placed.to_outbox_event("order", &order_id)?).await?;
    txn.commit().await?;
    println!("committed order {order_id} and its OrderPlaced event {committed}");

    // 4. A transaction that rolls back takes its event with it.
    let txn = outbox.begin().await?;
    let doomed = NewOutboxEvent::json("order", "never", "OrderPlaced", &serde_json::json!({}))?;
    let rolled_back = txn.add(doomed).await?;
    txn.rollback().await?;
    println!("rolled back a second transaction; its event {rolled_back} will never be sent");

    // 5. Read back what Kafka received, then stop the relay.
    let received = read_from(
        &config.bootstrap,
        &config.topic,
        start,
        Duration::from_secs(30),
    )
    .await?;
    outbox.stop().await?;
    Ok(Report {
        committed,
        rolled_back,
        received,
    })
}

fn consumer(bootstrap: &str) -> Result<StreamConsumer, BoxError> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "quickstart-reader")
        .set("enable.auto.commit", "false")
        .create()?)
}

/// The end offset of every partition now, so only this run's messages are read.
fn end_offsets(bootstrap: &str, topic: &str) -> Result<Vec<(i32, i64)>, BoxError> {
    let consumer = consumer(bootstrap)?;
    let metadata = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
    let mut ends = Vec::new();
    for t in metadata.topics() {
        if t.partitions().is_empty() {
            return Err(format!("topic {topic} does not exist").into());
        }
        for partition in t.partitions() {
            let (_, high) =
                consumer.fetch_watermarks(topic, partition.id(), Duration::from_secs(10))?;
            ends.push((partition.id(), high));
        }
    }
    Ok(ends)
}

async fn read_from(
    bootstrap: &str,
    topic: &str,
    start: Vec<(i32, i64)>,
    timeout: Duration,
) -> Result<Vec<Received>, BoxError> {
    let consumer = consumer(bootstrap)?;
    let mut assignment = TopicPartitionList::new();
    for (partition, offset) in start {
        assignment.add_partition_offset(topic, partition, Offset::Offset(offset))?;
    }
    consumer.assign(&assignment)?;
    let mut received = Vec::new();
    let mut stream = consumer.stream();
    // The first message arrives within the timeout; then wait a little for any stray one.
    let mut wait = timeout;
    while let Ok(Some(message)) = tokio::time::timeout(wait, stream.next()).await {
        let message = message?;
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| {
                        let value = String::from_utf8_lossy(h.value.unwrap_or_default());
                        (h.key.to_owned(), value.into_owned())
                    })
                    .collect()
            })
            .unwrap_or_default();
        received.push(Received {
            key: String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
            headers,
            value: String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned(),
        });
        wait = Duration::from_secs(1);
    }
    Ok(received)
}
