//! The Kafka consumer behind the inbox: a [`MessageSource`] that commits offsets only when the
//! inbox worker says a message is done.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use futures::FutureExt;
use outbox_core::{InboxMessage, MessagePosition, MessageSource, SourceError, UNREADABLE_HEADERS};
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use rdkafka::statistics::Statistics;
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tracing::{debug, error, info, warn};

use crate::Error;

/// The gauge of the consumer's lag per topic: messages on the broker the group has not
/// committed yet, summed over the topic's partitions assigned to this consumer (from
/// librdkafka's statistics, every `statistics.interval.ms`).
pub const INBOX_LAG: &str = "outbox_inbox_lag_messages";

/// Consumer properties the source sets unless overridden.
pub const CONSUMER_DEFAULT_PROPERTIES: [(&str, &str); 6] = [
    // A new group starts at the beginning: nothing published before the consumer first ran is
    // skipped.
    ("auto.offset.reset", "earliest"),
    // Transactional producers' aborted messages are never applied.
    ("isolation.level", "read_committed"),
    // A subscribed topic created after the consumer started is consumed within 10 s, not after
    // librdkafka's default of 5 minutes.
    ("topic.metadata.refresh.interval.ms", "10000"),
    // Lag for the `outbox_inbox_lag_messages` gauge.
    ("statistics.interval.ms", "5000"),
    // The inbox worker commits; librdkafka never commits on its own.
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
];

/// Consumer properties the inbox's promise depends on: committed offsets must never run ahead
/// of what the inbox applied.
const GUARDED_CONSUMER_PROPERTIES: [(&str, &str); 2] = [
    ("enable.auto.commit", "false"),
    ("enable.auto.offset.store", "false"),
];

/// How to reach Kafka and consume as a group.
///
/// ```
/// use outbox_kafka::KafkaConsumerConfig;
///
/// let config = KafkaConsumerConfig::new("127.0.0.1:9092", "batch-orchestrator-consumers")
///     .with_property("client.id", "bos-pipeline-orchestrator");
/// assert_eq!(config.property("auto.offset.reset"), Some("earliest"));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConsumerConfig {
    /// `bootstrap.servers`.
    pub bootstrap_servers: String,
    /// `group.id`: consumers of one group share the partitions.
    pub group_id: String,
    /// Consumer properties that override [`CONSUMER_DEFAULT_PROPERTIES`] (TLS, SASL, fetch
    /// sizes, session timeouts).
    pub properties: BTreeMap<String, String>,
}

impl KafkaConsumerConfig {
    /// A configuration for the given brokers and consumer group, with the source's defaults.
    pub fn new(bootstrap_servers: impl Into<String>, group_id: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            group_id: group_id.into(),
            properties: BTreeMap::new(),
        }
    }

    /// Sets a librdkafka consumer property. `enable.auto.commit` and
    /// `enable.auto.offset.store` can only be `false`: with either on, offsets could be
    /// committed before the inbox applied their messages, and a crash would lose them.
    pub fn with_property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.insert(name.into(), value.into());
        self
    }

    /// The value `name` will have: set, or the default.
    pub fn property(&self, name: &str) -> Option<&str> {
        self.properties.get(name).map(String::as_str).or_else(|| {
            CONSUMER_DEFAULT_PROPERTIES
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| *v)
        })
    }

    /// Checks the configuration: a bootstrap list, a group id, and the guarded properties.
    pub fn validate(&self) -> Result<(), Error> {
        if self.bootstrap_servers.trim().is_empty() {
            return Err(Error::Config("bootstrap.servers is empty".into()));
        }
        if self.group_id.trim().is_empty() {
            return Err(Error::Config(
                "group.id is empty: the inbox consumes as a consumer group".into(),
            ));
        }
        for (name, required) in GUARDED_CONSUMER_PROPERTIES {
            if let Some(value) = self.properties.get(name)
                && !value.trim().eq_ignore_ascii_case(required)
            {
                return Err(Error::Config(format!(
                    "{name}={value} is refused: the inbox commits each offset only after its \
                     message was applied, and {name} would commit or store offsets before that, \
                     so a crash could lose messages; leave it unset ({required})"
                )));
            }
        }
        for name in ["bootstrap.servers", "group.id"] {
            if self.properties.contains_key(name) {
                return Err(Error::Config(format!(
                    "set {name} through KafkaConsumerConfig::new, not as a property"
                )));
            }
        }
        Ok(())
    }

    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.bootstrap_servers)
            .set("group.id", &self.group_id);
        for (name, value) in CONSUMER_DEFAULT_PROPERTIES {
            config.set(name, value);
        }
        for (name, value) in &self.properties {
            config.set(name, value);
        }
        config
    }
}

/// The consumer's callbacks: librdkafka's logs, errors and statistics, and the partitions this
/// consumer owns (a commit for any other is refused as [`SourceError::Revoked`]).
#[derive(Default)]
struct SourceContext {
    assigned: Mutex<HashSet<(String, i32)>>,
}

impl SourceContext {
    fn owns(&self, topic: &str, partition: i32) -> bool {
        self.assigned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .contains(&(topic.to_owned(), partition))
    }
}

impl ClientContext for SourceContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => error!(target: "librdkafka", facility, "{message}"),
            RDKafkaLogLevel::Warning => warn!(target: "librdkafka", facility, "{message}"),
            _ => debug!(target: "librdkafka", facility, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        warn!(error = %error, reason, "kafka consumer error");
    }

    fn stats(&self, statistics: Statistics) {
        for (topic, stats) in &statistics.topics {
            let lag: i64 = stats
                .partitions
                .iter()
                .filter(|(p, _)| **p >= 0 && self.owns(topic, **p))
                .map(|(_, p)| p.consumer_lag.max(0))
                .sum();
            metrics::gauge!(INBOX_LAG, "topic" => topic.clone()).set(lag as f64);
        }
    }
}

impl ConsumerContext for SourceContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            // Commit what the inbox finished before the partitions go: the next owner starts
            // after it instead of delivering it again.
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) => {}
                Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(e) => warn!(error = %e, "could not commit before a rebalance"),
            }
            let mut assigned = self.assigned.lock().unwrap_or_else(PoisonError::into_inner);
            for p in partitions.elements() {
                assigned.remove(&(p.topic().to_owned(), p.partition()));
            }
            info!(
                partitions = partitions.count(),
                "inbox consumer: partitions revoked"
            );
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(partitions) => {
                let mut assigned = self.assigned.lock().unwrap_or_else(PoisonError::into_inner);
                for p in partitions.elements() {
                    assigned.insert((p.topic().to_owned(), p.partition()));
                }
                info!(
                    partitions = partitions.count(),
                    "inbox consumer: partitions assigned"
                );
            }
            Rebalance::Revoke(_) => {}
            Rebalance::Error(e) => warn!(error = %e, "inbox consumer: rebalance failed"),
        }
    }
}

/// A [`MessageSource`] on a Kafka consumer group (rdkafka's `StreamConsumer`).
///
/// - offsets are committed only by [`commit`](MessageSource::commit), after the inbox applied
///   the messages: stored for the partitions this consumer still owns, then committed without
///   waiting (a commit lost in a crash means a redelivery, which the inbox drops as a
///   duplicate). A commit for a partition taken away by a rebalance reports
///   [`SourceError::Revoked`];
/// - before a rebalance takes partitions away, what was stored is committed synchronously;
/// - [`rewind`](MessageSource::rewind) seeks a partition back, so a message left unprocessed
///   by a transient failure is delivered again;
/// - [`close`](Self::close) commits synchronously and leaves the group.
///
/// Message sizes are bounded by the consumer's `fetch.max.bytes` and
/// `max.partition.fetch.bytes` (librdkafka's defaults unless set).
pub struct KafkaSource {
    consumer: Arc<StreamConsumer<SourceContext>>,
    topics: Vec<String>,
}

impl std::fmt::Debug for KafkaSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSource")
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl KafkaSource {
    /// Creates the consumer and subscribes it to `topics` (topics that do not exist yet are
    /// consumed once they are created). Fails on a refused configuration or no topics.
    pub fn new(config: KafkaConsumerConfig, topics: &[String]) -> Result<Self, Error> {
        config.validate()?;
        if topics.is_empty() {
            return Err(Error::Config("the inbox consumer has no topics".into()));
        }
        let consumer: StreamConsumer<SourceContext> = config
            .client_config()
            .create_with_context(SourceContext::default())
            .map_err(|e| Error::Config(format!("cannot create the Kafka consumer: {e}")))?;
        let names: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&names)?;
        info!(topics = ?topics, group = %config.group_id, "inbox consumer subscribed");
        Ok(Self {
            consumer: Arc::new(consumer),
            topics: topics.to_vec(),
        })
    }

    /// The topics it consumes.
    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    /// The partitions this consumer owns now, sorted (for health checks and tests).
    pub fn assignment(&self) -> Vec<(String, i32)> {
        let mut owned: Vec<_> = self
            .consumer
            .context()
            .assigned
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .cloned()
            .collect();
        owned.sort();
        owned
    }

    /// Commits what was stored and leaves the group, so the partitions move to another
    /// consumer at once instead of after the session timeout.
    pub async fn close(&self) {
        let consumer = self.consumer.clone();
        let closed = tokio::task::spawn_blocking(move || {
            match consumer.commit_consumer_state(CommitMode::Sync) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(e) => warn!(error = %e, "could not commit on close"),
            }
            consumer.unsubscribe();
        })
        .await;
        if let Err(e) = closed {
            warn!(error = %e, "closing the inbox consumer failed");
        }
    }
}

/// The message's headers. rdkafka panics on a header name that is not UTF-8 (any client can
/// send one); such a message gets the single header [`UNREADABLE_HEADERS`] instead, so the
/// inbox rejects it rather than the worker dying on it in every replica.
fn headers_of(message: &BorrowedMessage<'_>) -> Vec<(String, Vec<u8>)> {
    let Some(headers) = message.headers() else {
        return Vec::new();
    };
    let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        headers
            .iter()
            .map(|h| {
                (
                    h.key.to_owned(),
                    h.value.map(<[u8]>::to_vec).unwrap_or_default(),
                )
            })
            .collect()
    }));
    read.unwrap_or_else(|_| {
        warn!(
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            "a message's header name is not UTF-8; the inbox will reject it"
        );
        vec![(UNREADABLE_HEADERS.to_owned(), Vec::new())]
    })
}

fn to_message(message: &BorrowedMessage<'_>) -> InboxMessage {
    let headers = headers_of(message);
    InboxMessage {
        topic: message.topic().to_owned(),
        partition: message.partition(),
        offset: message.offset(),
        key: message.key().map(<[u8]>::to_vec),
        payload: message.payload().map(<[u8]>::to_vec),
        headers,
        timestamp: message
            .timestamp()
            .to_millis()
            .and_then(DateTime::<Utc>::from_timestamp_millis),
    }
}

fn source_error(error: KafkaError) -> SourceError {
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::Fatal) => SourceError::Fatal(error.to_string()),
        _ => SourceError::Transient(error.to_string()),
    }
}

#[async_trait]
impl MessageSource for KafkaSource {
    async fn next_batch(&self, max: usize) -> Result<Vec<InboxMessage>, SourceError> {
        let first = self.consumer.recv().await.map_err(source_error)?;
        let mut batch = Vec::with_capacity(max.clamp(1, 1024));
        batch.push(to_message(&first));
        drop(first);
        while batch.len() < max {
            // Only what librdkafka has fetched already: never wait for more.
            match self.consumer.recv().now_or_never() {
                Some(Ok(message)) => batch.push(to_message(&message)),
                Some(Err(e)) => {
                    debug!(error = %e, "consumer error after a message; returning the batch");
                    break;
                }
                None => break,
            }
        }
        Ok(batch)
    }

    async fn commit(&self, done: &[MessagePosition]) -> Result<(), SourceError> {
        if done.is_empty() {
            return Ok(());
        }
        let mut next: HashMap<(&str, i32), i64> = HashMap::new();
        for p in done {
            let offset = next.entry((p.topic.as_str(), p.partition)).or_insert(0);
            *offset = (*offset).max(p.offset + 1);
        }
        let context = self.consumer.context();
        let mut owned = TopicPartitionList::new();
        let mut revoked = Vec::new();
        for ((topic, partition), offset) in &next {
            if context.owns(topic, *partition) {
                owned
                    .add_partition_offset(topic, *partition, Offset::Offset(*offset))
                    .map_err(source_error)?;
            } else {
                revoked.push(format!("{topic}/{partition}"));
            }
        }
        if owned.count() > 0 {
            match self.consumer.store_offsets(&owned) {
                Ok(()) => {}
                Err(KafkaError::StoreOffset(RDKafkaErrorCode::State)) => {
                    revoked.push("a partition this consumer no longer owns".into());
                }
                Err(e) => return Err(source_error(e)),
            }
            match self.consumer.commit_consumer_state(CommitMode::Async) {
                Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
                Err(e) => return Err(source_error(e)),
            }
        }
        if revoked.is_empty() {
            Ok(())
        } else {
            Err(SourceError::Revoked(revoked.join(", ")))
        }
    }

    async fn rewind(&self, from: &MessagePosition) -> Result<(), SourceError> {
        if !self.consumer.context().owns(&from.topic, from.partition) {
            return Err(SourceError::Revoked(format!(
                "{}/{}",
                from.topic, from.partition
            )));
        }
        let consumer = self.consumer.clone();
        let from = from.clone();
        tokio::task::spawn_blocking(move || {
            consumer.seek(
                &from.topic,
                from.partition,
                Offset::Offset(from.offset),
                Duration::from_secs(10),
            )
        })
        .await
        .map_err(|e| SourceError::Transient(format!("seek task failed: {e}")))?
        .map_err(source_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_can_never_run_ahead_of_the_inbox() {
        for name in ["enable.auto.commit", "enable.auto.offset.store"] {
            let err = KafkaConsumerConfig::new("k:9092", "g")
                .with_property(name, "true")
                .validate()
                .unwrap_err();
            assert!(err.to_string().contains(name), "{err}");
            KafkaConsumerConfig::new("k:9092", "g")
                .with_property(name, "false")
                .validate()
                .unwrap();
        }
    }

    #[test]
    fn a_group_and_brokers_are_required() {
        assert!(KafkaConsumerConfig::new("", "g").validate().is_err());
        let err = KafkaConsumerConfig::new("k:9092", " ")
            .validate()
            .unwrap_err();
        assert!(err.to_string().contains("group.id"), "{err}");
        let err = KafkaConsumerConfig::new("k:9092", "g")
            .with_property("group.id", "other")
            .validate()
            .unwrap_err();
        assert!(
            err.to_string().contains("KafkaConsumerConfig::new"),
            "{err}"
        );
        assert!(KafkaSource::new(KafkaConsumerConfig::new("k:9092", "g"), &[]).is_err());
    }

    #[test]
    fn defaults_and_overrides() {
        let config =
            KafkaConsumerConfig::new("k:9092", "g").with_property("auto.offset.reset", "latest");
        assert_eq!(config.property("auto.offset.reset"), Some("latest"));
        assert_eq!(config.property("isolation.level"), Some("read_committed"));
        assert_eq!(config.property("nope"), None);
    }
}
