//! 5. The inbox (issue 14): events/s consumed through it with a trivial handler (one
//!    transaction per batch that records the event ids in `event_inbox`, then the offset commit),
//!    beside a raw rdkafka consumer reading the same messages in the same run.
//!
//! Both read a topic loaded beforehand, each with a consumer group of its own. Each rate counts
//! from its first message to its last, so joining the group (Kafka's initial rebalance delay)
//! is left out of both. Rounds alternate raw and inbox.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use outbox::{Handled, HandlerError, InboxHandler, InboxMessage, Outbox, OutboxTransaction};
use outbox_kafka::KafkaConsumerConfig;
use outbox_test_harness::{TestTopic, unique_name};
use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};

use crate::env::Env;
use crate::stats::median;
use crate::{Context, Result, Sizes};

/// What the inbox phase measured.
#[derive(Debug, Clone)]
pub(crate) struct InboxResults {
    /// Messages in the topic, read by each run.
    pub(crate) events: u64,
    pub(crate) partitions: i32,
    /// Events/s of each round, raw consumer and inbox.
    pub(crate) raw: Vec<f64>,
    pub(crate) inbox: Vec<f64>,
}

impl InboxResults {
    pub(crate) fn raw_median(&self) -> f64 {
        median(&self.raw)
    }

    pub(crate) fn inbox_median(&self) -> f64 {
        median(&self.inbox)
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "events": self.events,
            "partitions": self.partitions,
            "raw_consumer_per_sec": self.raw,
            "inbox_per_sec": self.inbox,
            "raw_consumer_median_per_sec": self.raw_median(),
            "inbox_median_per_sec": self.inbox_median(),
            "ratio_inbox_to_raw": self.inbox_median() / self.raw_median(),
        })
    }
}

/// Applies nothing: what the inbox itself costs.
struct Trivial;

#[async_trait]
impl InboxHandler<OutboxTransaction> for Trivial {
    async fn handle(
        &self,
        _txn: &OutboxTransaction,
        _message: &InboxMessage,
    ) -> Result<Handled, HandlerError> {
        Ok(Handled::applied())
    }
}

pub(crate) async fn run(env: &Env, sizes: &Sizes) -> Result<InboxResults> {
    let events = sizes.inbox_events;
    println!(
        "\n== 5. inbox: {events} events consumed with a trivial handler vs a raw consumer, \
         {} rounds; load {}",
        sizes.inbox_rounds,
        crate::env::load_average()
    );
    let topic = TestTopic::create_on(&env.bootstrap, "bench_inbox", env.partitions).await;
    load(&env.bootstrap, topic.name(), events, env.keys).await?;
    let outbox = Outbox::builder(env.conn.clone())
        .writer_only()
        .context("building the outbox")?;
    let mut results = InboxResults {
        events,
        partitions: env.partitions,
        raw: Vec::new(),
        inbox: Vec::new(),
    };
    for round in 1..=sizes.inbox_rounds {
        let raw = raw_consumer(&env.bootstrap, topic.name(), events).await?;
        env.sql("TRUNCATE event_inbox").await?;
        let inbox = through_inbox(&outbox, &env.bootstrap, topic.name(), events).await?;
        println!(
            "  round {round}: raw consumer {raw:.0} events/s, inbox {inbox:.0} events/s \
             (ratio {:.2})",
            inbox / raw
        );
        results.raw.push(raw);
        results.inbox.push(inbox);
    }
    println!(
        "  median: raw consumer {:.0} events/s, inbox {:.0} events/s (ratio {:.2})",
        results.raw_median(),
        results.inbox_median(),
        results.inbox_median() / results.raw_median()
    );
    Ok(results)
}

/// Publishes `events` small JSON envelopes with their `event_id` header, as the relay does.
async fn load(bootstrap: &str, topic: &str, events: u64, keys: usize) -> Result<()> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("linger.ms", "5")
        .set("log_level", "3")
        .create()
        .context("producer")?;
    let mut pending = Vec::new();
    for n in 0..events {
        let event_id = uuid::Uuid::now_v7().to_string();
        let key = format!("key-{}", n % keys.max(1) as u64);
        let payload = json!({
            "event_id": event_id,
            "event_type": "huleedu.bench.thing.v1",
            "correlation_id": "bench",
            "data": {"n": n},
        })
        .to_string();
        let headers = OwnedHeaders::new().insert(Header {
            key: "event_id",
            value: Some(event_id.as_bytes()),
        });
        let mut record = FutureRecord::to(topic)
            .key(&key)
            .payload(&payload)
            .headers(headers);
        loop {
            match producer.send_result(record) {
                Ok(delivery) => {
                    pending.push(delivery);
                    break;
                }
                Err((e, _)) if pending.is_empty() => {
                    return Err(format!("loading the inbox topic: {e}").into());
                }
                Err((_, back)) => {
                    // The producer's queue is full: wait for what is in flight, then retry.
                    record = back;
                    for sent in futures::future::join_all(pending.drain(..)).await {
                        check(sent)?;
                    }
                }
            }
        }
    }
    for sent in futures::future::join_all(pending).await {
        check(sent)?;
    }
    Ok(())
}

fn check(
    sent: std::result::Result<
        rdkafka::producer::future_producer::OwnedDeliveryResult,
        futures::channel::oneshot::Canceled,
    >,
) -> Result<()> {
    match sent {
        Ok(Ok(_)) => Ok(()),
        Ok(Err((e, _))) => Err(format!("loading the inbox topic: {e}").into()),
        Err(_) => Err("loading the inbox topic: the producer went away".into()),
    }
}

/// A plain rdkafka consumer that reads every message and commits as it goes (asynchronously,
/// after each 500 messages): the floor the inbox is compared with.
async fn raw_consumer(bootstrap: &str, topic: &str, events: u64) -> Result<f64> {
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique_name("bench_raw"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("log_level", "3")
        .create()
        .context("raw consumer")?;
    consumer.subscribe(&[topic]).context("subscribing")?;
    let mut first: Option<Instant> = None;
    let mut read = 0u64;
    let deadline = Instant::now() + Duration::from_secs(300);
    while read < events {
        if Instant::now() > deadline {
            return Err(format!("the raw consumer read {read} of {events} messages").into());
        }
        let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .context("raw consumer waited 30 s")?
            .context("raw consumer")?;
        let _ = message.payload().map(<[u8]>::len);
        first.get_or_insert_with(Instant::now);
        read += 1;
        if read.is_multiple_of(500) || read == events {
            consumer
                .commit_message(&message, CommitMode::Async)
                .context("raw commit")?;
        }
    }
    let took = first.map(|t| t.elapsed()).unwrap_or_default();
    Ok((events - 1) as f64 / took.as_secs_f64().max(1e-9))
}

/// The inbox with the trivial handler, from a new consumer group, until every message is
/// applied.
async fn through_inbox(outbox: &Outbox, bootstrap: &str, topic: &str, events: u64) -> Result<f64> {
    let inbox = Arc::new(
        outbox
            .inbox(KafkaConsumerConfig::new(
                bootstrap,
                unique_name("bench_inbox"),
            ))
            .handler("bench", [topic], Trivial)
            .start()
            .context("starting the inbox")?,
    );
    let mut first: Option<(Instant, u64)> = None;
    let deadline = Instant::now() + Duration::from_secs(300);
    let finished = loop {
        let consumed = inbox.status().consumed;
        if consumed > 0 && first.is_none() {
            first = Some((Instant::now(), consumed));
        }
        if consumed >= events {
            break Instant::now();
        }
        if Instant::now() > deadline {
            inbox.stop().await.context("stopping the inbox")?;
            return Err(format!("the inbox applied {consumed} of {events} messages").into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    inbox.stop().await.context("stopping the inbox")?;
    let (started, at_start) = first.unwrap_or((finished, 0));
    let took = finished.duration_since(started);
    Ok((events - at_start) as f64 / took.as_secs_f64().max(1e-9))
}
