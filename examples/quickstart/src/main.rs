//! Run with: `cargo run -p example-quickstart` (after `scripts/services.sh up`)
//!
//! The outbox in one program: migrate, write a business row and its event in one transaction,
//! relay the event to Kafka, and print what Kafka received. A second transaction that rolls
//! back shows that its event is never sent. Reads `DATABASE_URL` and `KAFKA_BOOTSTRAP_SERVERS`
//! (defaults: the services of `scripts/services.sh`).

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use outbox_core::{EventEnvelope, EventRelayWorker, OutboxWriter, RelaySettings, TopicMap};
use outbox_kafka::{KafkaConfig, KafkaPublisher};
use outbox_seaorm::{OutboxMigrator, PostgresOutbox};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use sea_orm::{ConnectionTrait, Database, Statement, TransactionTrait};
use sea_orm_migration::MigratorTrait;

const TOPIC: &str = "quickstart.orders.v1";

type Error = Box<dyn std::error::Error + Send + Sync>;

#[tokio::main]
async fn main() -> Result<(), Error> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "warn,outbox_core=info".into()),
        )
        .init();
    let database_url = std::env::var("DATABASE_URL")
        .unwrap_or_else(|_| "postgres://outbox:outbox@127.0.0.1:5432/outbox".into());
    let bootstrap =
        std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".into());

    // 1. The outbox table comes from the library's migration; the orders table is ours.
    let db = Database::connect(&database_url).await?;
    OutboxMigrator::up(&db, None).await?;
    db.execute_unprepared(
        "CREATE TABLE IF NOT EXISTS quickstart_orders (id text PRIMARY KEY, total int NOT NULL)",
    )
    .await?;
    ensure_topic(&bootstrap).await?;
    let start_offset = end_offset(&bootstrap)?;

    // 2. The repository, the Kafka publisher and the relay worker.
    let topics = TopicMap::new().with("OrderPlaced", TOPIC)?;
    let outbox = Arc::new(PostgresOutbox::new(db.clone())?.with_mapper(Arc::new(topics)));
    let publisher = KafkaPublisher::new(KafkaConfig::new(&bootstrap))?;
    let worker = EventRelayWorker::new(
        outbox.clone(),
        Arc::new(publisher),
        RelaySettings::default(),
    )?;
    worker.start()?;

    // 3. The business row and its event, in one transaction.
    let order_id = format!("order-{}", std::process::id());
    let envelope = EventEnvelope::new(
        "OrderPlaced",
        "quickstart",
        serde_json::json!({"order_id": order_id, "total": 42}),
    );
    let txn = db.begin().await?;
    txn.execute(Statement::from_sql_and_values(
        sea_orm::DbBackend::Postgres,
        "INSERT INTO quickstart_orders (id, total) VALUES ($1, $2)",
        [order_id.clone().into(), 42.into()],
    ))
    .await?;
    outbox
        .add_event(&txn, envelope.to_outbox_event("order", &order_id)?)
        .await?;
    txn.commit().await?;
    worker.notifier().notify();
    println!(
        "committed order {order_id} and its OrderPlaced event {}",
        envelope.event_id
    );

    // 4. A transaction that rolls back takes its event with it.
    let txn = db.begin().await?;
    let doomed = EventEnvelope::new(
        "OrderPlaced",
        "quickstart",
        serde_json::json!({"doomed": true}),
    );
    outbox
        .add_event(&txn, doomed.to_outbox_event("order", "never")?)
        .await?;
    txn.rollback().await?;
    println!(
        "rolled back a second transaction; its event {} will never be sent",
        doomed.event_id
    );

    // 5. Read back what Kafka received.
    let received = read_from(&bootstrap, start_offset, Duration::from_secs(30)).await?;
    worker.stop().await?;
    for (key, headers, value) in &received {
        println!("\nKafka received on {TOPIC}:");
        println!("  key:     {key}");
        for (name, value) in headers {
            println!("  header:  {name} = {value}");
        }
        println!("  value:   {value}");
    }
    let delivered = received.iter().any(|(_, headers, _)| {
        headers.contains(&("event_id".into(), envelope.event_id.to_string()))
    });
    let leaked = received
        .iter()
        .any(|(_, headers, _)| headers.contains(&("event_id".into(), doomed.event_id.to_string())));
    if !delivered || leaked {
        return Err("the committed event should arrive and the rolled-back one should not".into());
    }
    println!("\nok: the committed event arrived once; the rolled-back one did not");
    Ok(())
}

async fn ensure_topic(bootstrap: &str) -> Result<(), Error> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let results = admin
        .create_topics(
            &[NewTopic::new(TOPIC, 3, TopicReplication::Fixed(1))],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        )
        .await?;
    for result in results {
        match result {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => return Err(format!("cannot create {topic}: {code}").into()),
        }
    }
    Ok(())
}

fn consumer(bootstrap: &str) -> Result<StreamConsumer, Error> {
    Ok(ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", "quickstart-reader")
        .set("enable.auto.commit", "false")
        .create()?)
}

/// The end offset of every partition now, so only this run's messages are printed.
fn end_offset(bootstrap: &str) -> Result<Vec<(i32, i64)>, Error> {
    let consumer = consumer(bootstrap)?;
    let metadata = consumer.fetch_metadata(Some(TOPIC), Duration::from_secs(10))?;
    let mut ends = Vec::new();
    for topic in metadata.topics() {
        for partition in topic.partitions() {
            let (_, high) =
                consumer.fetch_watermarks(TOPIC, partition.id(), Duration::from_secs(10))?;
            ends.push((partition.id(), high));
        }
    }
    Ok(ends)
}

type Received = (String, Vec<(String, String)>, String);

async fn read_from(
    bootstrap: &str,
    start: Vec<(i32, i64)>,
    timeout: Duration,
) -> Result<Vec<Received>, Error> {
    let consumer = consumer(bootstrap)?;
    let mut assignment = TopicPartitionList::new();
    for (partition, offset) in start {
        assignment.add_partition_offset(TOPIC, partition, Offset::Offset(offset))?;
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
        received.push((
            String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned(),
            headers,
            String::from_utf8_lossy(message.payload().unwrap_or_default()).into_owned(),
        ));
        wait = Duration::from_secs(1);
    }
    Ok(received)
}
