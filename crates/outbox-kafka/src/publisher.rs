//! The rdkafka publisher.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Mutex, RwLock, RwLockReadGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use outbox_core::{
    CONTENT_TYPE_HEADER, Delivery, EventId, EventPublisher, OutboxEvent, PublishError, metrics as m,
};
use rdkafka::admin::{AdminClient, AdminOptions, OwnedResourceSpecifier, ResourceSpecifier};
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer, PurgeConfig};
use rdkafka::util::Timeout;
use tracing::{debug, error, info, warn};

use crate::limits::{TopicLimits, batch_class};
use crate::{Error, KafkaConfig};

/// Bytes a record batch of one message needs beyond the message's key, value, header names and
/// values, at most: the batch header (61), the record's own fields as varints (length,
/// attributes, timestamp and offset deltas, key and value lengths, header count: 36).
const FRAMING_BYTES: usize = 61 + 36;

/// Bytes each header needs beyond its name and value, at most (two varint lengths).
const HEADER_FRAMING_BYTES: usize = 10;

/// librdkafka's default `batch.size`.
const DEFAULT_BATCH_SIZE: usize = 1_000_000;

/// How long reading topics' limits may take before the batch goes ahead with what is known.
const DESCRIBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Events refused once by the broker as too large although they fit their topic's limit as read,
/// remembered so that a second refusal counts (bounded: forgotten beyond this many).
const MAX_REMEMBERED_REFUSALS: usize = 100_000;

/// Routes librdkafka's own logs to `tracing` (target `librdkafka`) and counts client-level errors
/// (brokers down, transport failures) as transient relay errors.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct PublisherContext;

impl ClientContext for PublisherContext {
    fn log(&self, level: RDKafkaLogLevel, facility: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => error!(target: "librdkafka", facility, "{message}"),
            RDKafkaLogLevel::Warning => warn!(target: "librdkafka", facility, "{message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                info!(target: "librdkafka", facility, "{message}")
            }
            RDKafkaLogLevel::Debug => debug!(target: "librdkafka", facility, "{message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        metrics::counter!(m::RELAY_ERRORS_TOTAL, "kind" => "transient").increment(1);
        warn!(error = %error, reason, "kafka client error");
    }
}

type Inner = FutureProducer<PublisherContext>;

/// Publishes outbox events to Kafka.
///
/// A batch is enqueued in full (waiting only while the local queue is full), then its
/// acknowledgements are awaited together. Each message carries the row's key and payload and the
/// headers `event_id`, `event_type`, `aggregate_type`, `aggregate_id`, `content-type`, plus the
/// row's own headers (`traceparent` among them when captured).
///
/// Errors are classified for the relay: too large, unknown topic or partition, not authorized
/// for the topic, invalid record or topic are [permanent](outbox_core::ErrorClass::Permanent) for
/// that message; everything else (brokers down, timeouts, leader changes, a purged queue) is
/// [transient](outbox_core::ErrorClass::Transient). When the idempotent producer hits a fatal
/// error it is rebuilt, so the relay carries on.
///
/// # Topic size limits
///
/// The broker checks a topic's `max.message.bytes` against whole record batches. Before each
/// batch ([`prepare`](EventPublisher::prepare)) the publisher reads the limits of topics it does
/// not know yet with the admin client (`DescribeConfigs`), caches them for five minutes, and
/// reads a topic again after the broker refused one of its batches as too large. A topic whose
/// limit is below the producer's batches goes through a producer of its own size class, whose
/// `batch.size` keeps every record batch under the limit (one producer per power-of-two class;
/// every event of a topic goes through one producer within a batch, and a batch is acknowledged
/// in full before the next one, so per-partition order holds when a topic changes class).
/// [`check`](EventPublisher::check) refuses only an event that is itself larger than its topic's
/// limit, permanently, naming the topic and the limit. A topic whose limit cannot be read (not
/// created yet, no `DescribeConfigs` permission) is sent with the producer's defaults and asked
/// for again every ten seconds.
pub struct KafkaPublisher {
    config: KafkaConfig,
    /// The producer for topics the defaults fit.
    producer: RwLock<Inner>,
    /// The producers of topics with smaller limits, by size class (their `batch.size`).
    classes: RwLock<BTreeMap<usize, Inner>>,
    admin: AdminClient<DefaultClientContext>,
    limits: TopicLimits,
    /// Events the broker refused once although they fit their topic's limit as read.
    refused_once: Mutex<HashSet<EventId>>,
    max_message_bytes: usize,
    /// The largest record batch the default producer builds.
    default_batch: usize,
    compressed: bool,
}

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("bootstrap_servers", &self.config.bootstrap_servers)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("default_batch", &self.default_batch)
            .finish_non_exhaustive()
    }
}

fn create(config: &KafkaConfig, batch_size: Option<usize>) -> Result<Inner, Error> {
    let mut client = ClientConfig::new();
    for (name, value) in config.effective_properties() {
        client.set(name, value);
    }
    if let Some(batch_size) = batch_size {
        client.set("batch.size", batch_size.to_string());
    }
    client
        .create_with_context(PublisherContext)
        .map_err(|e| Error::Config(format!("cannot create the Kafka producer: {e}")))
}

/// An admin client on the same brokers with the same security settings, to read topics' limits.
fn create_admin(config: &KafkaConfig) -> Result<AdminClient<DefaultClientContext>, Error> {
    let mut client = ClientConfig::new();
    for (name, value) in config.effective_properties() {
        // The admin client is a plain client: no producer identity of its own.
        if !matches!(name.as_str(), "enable.idempotence" | "transactional.id") {
            client.set(name, value);
        }
    }
    client
        .create()
        .map_err(|e| Error::Config(format!("cannot create the Kafka admin client: {e}")))
}

fn number(config: &KafkaConfig, name: &str, default: usize) -> Result<usize, Error> {
    match config.property(name) {
        Some(value) => value
            .trim()
            .parse()
            .map_err(|_| Error::Config(format!("{name} must be a number, not `{value}`"))),
        None => Ok(default),
    }
}

impl KafkaPublisher {
    /// Creates the producer. Fails on a property librdkafka does not know or a value it refuses,
    /// and on a guarded property set to a value that breaks a promise
    /// ([`KafkaConfig::validate`]), naming it; connecting happens in the background.
    pub fn new(config: KafkaConfig) -> Result<Self, Error> {
        config.validate()?;
        let max_message_bytes = number(&config, "message.max.bytes", 1_000_000)?;
        let default_batch =
            number(&config, "batch.size", DEFAULT_BATCH_SIZE)?.min(max_message_bytes);
        let compressed = ["compression.type", "compression.codec"]
            .iter()
            .filter_map(|name| config.property(name))
            .any(|codec| !codec.eq_ignore_ascii_case("none"));
        let producer = create(&config, None)?;
        let admin = create_admin(&config)?;
        Ok(Self {
            config,
            producer: RwLock::new(producer),
            classes: RwLock::new(BTreeMap::new()),
            admin,
            limits: TopicLimits::default(),
            refused_once: Mutex::new(HashSet::new()),
            max_message_bytes,
            default_batch,
            compressed,
        })
    }

    /// The configuration the producer was made from.
    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    /// The producer for topics the defaults fit.
    fn producer(&self) -> Inner {
        self.producer
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn classes(&self) -> RwLockReadGuard<'_, BTreeMap<usize, Inner>> {
        self.classes.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Every producer made so far, with its size class (`None` for the default one).
    fn all_producers(&self) -> Vec<(Option<usize>, Inner)> {
        let mut all = vec![(None, self.producer())];
        all.extend(self.classes().iter().map(|(c, p)| (Some(*c), p.clone())));
        all
    }

    /// The producer for `topic`: of its size class when its limit is known and below the
    /// default producer's batches, else the default one.
    fn producer_for(&self, topic: &str) -> Inner {
        let Some(class) = self
            .limits
            .max_message_bytes(topic)
            .and_then(|limit| batch_class(limit, self.default_batch))
        else {
            return self.producer();
        };
        if let Some(producer) = self.classes().get(&class) {
            return producer.clone();
        }
        let mut classes = self.classes.write().unwrap_or_else(|p| p.into_inner());
        if let Some(producer) = classes.get(&class) {
            return producer.clone();
        }
        match create(&self.config, Some(class)) {
            Ok(producer) => {
                info!(
                    batch_size = class,
                    topic, "kafka producer for a topic size class created"
                );
                classes.insert(class, producer.clone());
                producer
            }
            Err(e) => {
                error!(error = %e, batch_size = class, "kafka producer for a size class could not be created; using the default one");
                self.producer()
            }
        }
    }

    /// Reads the limits of `topics` from the brokers into the cache.
    async fn read_limits(&self, topics: &[String]) {
        let specifiers: Vec<ResourceSpecifier<'_>> =
            topics.iter().map(|t| ResourceSpecifier::Topic(t)).collect();
        let options = AdminOptions::new().request_timeout(Some(DESCRIBE_TIMEOUT));
        let read = tokio::time::timeout(
            DESCRIBE_TIMEOUT + Duration::from_secs(1),
            self.admin.describe_configs(&specifiers, &options),
        )
        .await;
        let now = Instant::now();
        let results = match read {
            Ok(Ok(results)) => results,
            Ok(Err(e)) => {
                for topic in topics {
                    self.read_failed(topic, &e.to_string(), now);
                }
                return;
            }
            Err(_elapsed) => {
                for topic in topics {
                    self.read_failed(topic, "timed out", now);
                }
                return;
            }
        };
        let mut answered: HashSet<&str> = HashSet::new();
        let mut refusals: Vec<RDKafkaErrorCode> = Vec::new();
        for result in &results {
            match result {
                Ok(resource) => {
                    let OwnedResourceSpecifier::Topic(topic) = &resource.specifier else {
                        continue;
                    };
                    let limit = resource
                        .get("max.message.bytes")
                        .and_then(|entry| entry.value.as_deref())
                        .and_then(|value| value.trim().parse::<usize>().ok());
                    match limit {
                        Some(limit) => {
                            debug!(topic = %topic, max_message_bytes = limit, "topic limit read");
                            self.limits.record(topic, limit, now);
                        }
                        None => self.read_failed(
                            topic,
                            "no max.message.bytes in its configuration",
                            now,
                        ),
                    }
                    answered.insert(topic.as_str());
                }
                Err(code) => refusals.push(*code),
            }
        }
        for topic in topics {
            if !answered.contains(topic.as_str()) {
                let reason = format!(
                    "refused ({refusals:?}): not created yet, or no DescribeConfigs permission?"
                );
                self.read_failed(topic, &reason, now);
            }
        }
    }

    /// Notes a failed read of `topic`'s limits: a warning the first time in a row (a topic whose
    /// limits can never be read would otherwise log every retry), then debug lines.
    fn read_failed(&self, topic: &str, reason: &str, now: Instant) {
        if self.limits.record_failure(topic, now) {
            warn!(
                topic,
                reason,
                "cannot read the topic's limits; sending it with the producer's defaults until they can be read"
            );
        } else {
            debug!(topic, reason, "still cannot read the topic's limits");
        }
    }

    /// How many bytes a record batch holding only `event` takes, at most (with a margin for a
    /// compression codec that cannot shrink the event).
    fn batch_bound(&self, event: &OutboxEvent) -> usize {
        let headers = Self::header_bytes(event);
        let record = FRAMING_BYTES + event.key.len() + event.payload.len() + headers;
        if self.compressed {
            record + record / 64 + 64
        } else {
            record
        }
    }

    /// The broker refused `event` as too large though it fits its topic's limit as read: the
    /// first time, the limit is read again and the event retried (transient); after that it
    /// counts as a permanent failure, so a wrong estimate cannot hold a key back forever.
    fn refused_by_broker(&self, event: &OutboxEvent, error: &KafkaError) -> PublishError {
        self.limits.invalidate(&event.topic);
        let fits = self
            .limits
            .max_message_bytes(&event.topic)
            .is_some_and(|limit| self.batch_bound(event) <= limit);
        if fits {
            let mut refused = self.refused_once.lock().unwrap_or_else(|p| p.into_inner());
            if refused.len() >= MAX_REMEMBERED_REFUSALS {
                refused.clear();
            }
            if refused.insert(event.event_id) {
                warn!(
                    event_id = %event.event_id,
                    topic = %event.topic,
                    "the broker refused a record batch as too large; reading the topic's limits again"
                );
                return PublishError::transient(format!(
                    "{error} (the event fits the limit of topic {} as last read; its batch was \
                     refused, the limits are read again)",
                    event.topic
                ));
            }
        }
        classify(error)
    }

    /// Asks the brokers for cluster metadata: `Ok` once they answer, for readiness checks.
    pub async fn check_connection(&self, timeout: Duration) -> Result<(), Error> {
        let producer = self.producer();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Timeout::After(timeout))
                .map(|_| ())
                .map_err(Error::Kafka)
        })
        .await
        .map_err(|e| Error::Config(format!("metadata task failed: {e}")))?
    }

    /// The message's headers, in order: the outbox's own, then the row's.
    fn header_pairs(event: &OutboxEvent) -> Vec<(&str, std::borrow::Cow<'_, str>)> {
        let mut pairs: Vec<(&str, std::borrow::Cow<'_, str>)> =
            Vec::with_capacity(5 + event.headers.len());
        pairs.push(("event_id", event.event_id.to_string().into()));
        pairs.push(("event_type", event.event_type.as_str().into()));
        pairs.push(("aggregate_type", event.aggregate_type.as_str().into()));
        pairs.push(("aggregate_id", event.aggregate_id.as_str().into()));
        if !event.headers.iter().any(|(k, _)| k == CONTENT_TYPE_HEADER) {
            pairs.push((CONTENT_TYPE_HEADER, "application/octet-stream".into()));
        }
        for (name, value) in &event.headers {
            pairs.push((name.as_str(), value.as_str().into()));
        }
        pairs
    }

    /// The bytes [`header_pairs`](Self::header_pairs) take on the wire at most, without
    /// building them (it runs for every event).
    fn header_bytes(event: &OutboxEvent) -> usize {
        // A UUID in its hyphenated text form.
        const EVENT_ID_TEXT: usize = 36;
        let mut count = 4 + event.headers.len();
        let mut bytes = "event_id".len()
            + EVENT_ID_TEXT
            + "event_type".len()
            + event.event_type.len()
            + "aggregate_type".len()
            + event.aggregate_type.len()
            + "aggregate_id".len()
            + event.aggregate_id.len();
        if !event.headers.iter().any(|(k, _)| k == CONTENT_TYPE_HEADER) {
            count += 1;
            bytes += CONTENT_TYPE_HEADER.len() + "application/octet-stream".len();
        }
        bytes += event
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
        bytes + count * HEADER_FRAMING_BYTES
    }

    fn headers(event: &OutboxEvent) -> OwnedHeaders {
        let pairs = Self::header_pairs(event);
        let mut headers = OwnedHeaders::new_with_capacity(pairs.len());
        for (key, value) in &pairs {
            headers = headers.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        headers
    }

    /// Replaces a producer that hit a fatal error (it accepts nothing more).
    fn rebuild_if_fatal(&self) {
        for (class, producer) in self.all_producers() {
            let Some((code, reason)) = producer.client().fatal_error() else {
                continue;
            };
            error!(code = ?code, reason, batch_size = class, "kafka producer hit a fatal error; creating a new one");
            match (create(&self.config, class), class) {
                (Ok(fresh), None) => {
                    *self.producer.write().unwrap_or_else(|p| p.into_inner()) = fresh;
                }
                (Ok(fresh), Some(class)) => {
                    self.classes
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(class, fresh);
                }
                (Err(e), _) => error!(error = %e, "kafka producer could not be recreated"),
            }
        }
    }
}

/// Sorts an rdkafka error into transient or permanent for the relay.
pub(crate) fn classify(error: &KafkaError) -> PublishError {
    use RDKafkaErrorCode as C;
    let permanent = matches!(
        error.rdkafka_error_code(),
        Some(
            C::MessageSizeTooLarge
                | C::InvalidMessageSize
                | C::MessageBatchTooLarge
                | C::UnknownTopic
                | C::UnknownTopicOrPartition
                | C::UnknownPartition
                | C::InvalidTopic
                | C::TopicAuthorizationFailed
                | C::InvalidRecord
                | C::InvalidTimestamp
                | C::PolicyViolation
                | C::UnsupportedForMessageFormat
                | C::BadMessage
                | C::InvalidArgument
                | C::KeySerialization
                | C::ValueSerialization
        )
    );
    if permanent {
        PublishError::permanent(error.to_string())
    } else {
        PublishError::transient(error.to_string())
    }
}

#[async_trait]
impl EventPublisher for KafkaPublisher {
    async fn prepare(&self, events: &[OutboxEvent]) {
        let due = self
            .limits
            .due(events.iter().map(|e| e.topic.as_str()), Instant::now());
        if !due.is_empty() {
            self.read_limits(&due).await;
        }
    }

    fn check(&self, event: &OutboxEvent) -> Result<(), PublishError> {
        let size = self.batch_bound(event);
        if size > self.max_message_bytes {
            return Err(PublishError::permanent(format!(
                "message of about {size} bytes is larger than message.max.bytes ({})",
                self.max_message_bytes
            )));
        }
        if let Some(limit) = self.limits.max_message_bytes(&event.topic)
            && size > limit
        {
            return Err(PublishError::permanent(format!(
                "message of about {size} bytes is larger than topic {}'s limit, \
                 max.message.bytes={limit}",
                event.topic
            )));
        }
        Ok(())
    }

    async fn publish(&self, events: &[OutboxEvent]) -> Vec<Result<Delivery, PublishError>> {
        // One producer per topic for the whole batch, chosen from the limits known now.
        let mut producers: HashMap<&str, Inner> = HashMap::new();
        let mut pending = Vec::with_capacity(events.len());
        // A key whose message could not even be enqueued: its later messages in this batch
        // stay back, so they cannot overtake it.
        let mut failed_keys: HashSet<(&str, &str)> = HashSet::new();
        for event in events {
            let key = (event.topic.as_str(), event.key.as_str());
            if failed_keys.contains(&key) {
                pending.push(Err(PublishError::transient(
                    "held back: an earlier event of its key could not be sent",
                )));
                continue;
            }
            let producer = producers
                .entry(event.topic.as_str())
                .or_insert_with(|| self.producer_for(&event.topic));
            let mut record = FutureRecord::to(&event.topic)
                .key(event.key.as_bytes())
                .payload(event.payload.as_slice())
                .headers(Self::headers(event));
            loop {
                match producer.send_result(record) {
                    Ok(delivery) => {
                        pending.push(Ok(delivery));
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // The local queue is full: wait for acknowledgements to make room.
                        record = back;
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                    Err((error, _)) => {
                        failed_keys.insert(key);
                        pending.push(Err(classify(&error)));
                        break;
                    }
                }
            }
        }

        let mut results = Vec::with_capacity(events.len());
        for (event, entry) in events.iter().zip(pending) {
            results.push(match entry {
                Ok(delivery) => match delivery.await {
                    Ok(Ok(done)) => Ok(Delivery {
                        partition: done.partition,
                        offset: done.offset,
                    }),
                    Ok(Err((error, _message)))
                        if error.rdkafka_error_code()
                            == Some(RDKafkaErrorCode::MessageSizeTooLarge) =>
                    {
                        Err(self.refused_by_broker(event, &error))
                    }
                    Ok(Err((error, _message))) => Err(classify(&error)),
                    Err(_canceled) => Err(PublishError::transient(
                        "the producer was dropped before acknowledging",
                    )),
                },
                Err(error) => Err(error),
            });
        }
        self.rebuild_if_fatal();
        results
    }

    async fn flush(&self, timeout: Duration) -> Result<(), PublishError> {
        let producers = self.all_producers();
        tokio::task::spawn_blocking(move || {
            let deadline = Instant::now() + timeout;
            for (_, producer) in producers {
                let left = deadline.saturating_duration_since(Instant::now());
                producer.flush(Timeout::After(left))?;
            }
            Ok(())
        })
        .await
        .map_err(|e| PublishError::transient(format!("flush task failed: {e}")))?
        .map_err(|e| classify(&e))
    }

    fn abort_in_flight(&self) {
        warn!("purging kafka sends still waiting for acknowledgement");
        for (_, producer) in self.all_producers() {
            producer.purge(PurgeConfig::default().queue().inflight());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;
    use outbox_core::ErrorClass;

    fn event(topic: &str, payload_bytes: usize) -> OutboxEvent {
        OutboxEvent {
            id: 1,
            event_id: EventId::new(),
            aggregate_type: "order".into(),
            aggregate_id: "o-1".into(),
            event_type: "OrderPlaced".into(),
            topic: topic.into(),
            key: "o-1".into(),
            payload: vec![b'x'; payload_bytes],
            headers: vec![("x-tenant".into(), "essays".into())],
            created_at: Utc::now(),
            attempts: 0,
            defect: None,
        }
    }

    /// A publisher whose producers never connect (nothing listens on port 1).
    fn offline(config: KafkaConfig) -> KafkaPublisher {
        KafkaPublisher::new(config.with_property("log_level", "0")).unwrap()
    }

    #[test]
    fn an_event_is_checked_against_its_topics_limit_once_known() {
        let publisher = offline(KafkaConfig::new("127.0.0.1:1"));
        let medium = event("small", 5_000);
        assert!(publisher.check(&medium).is_ok(), "unknown limit: defaults");
        publisher.limits.record("small", 2_000, Instant::now());
        let error = publisher.check(&medium).unwrap_err();
        assert_eq!(error.class, ErrorClass::Permanent);
        assert!(
            error
                .message
                .contains("topic small's limit, max.message.bytes=2000"),
            "{error}"
        );
        assert!(publisher.check(&event("small", 4)).is_ok());
        assert!(publisher.check(&event("other", 5_000)).is_ok());
    }

    #[test]
    fn the_size_bound_covers_headers_and_a_compression_margin() {
        let plain = offline(KafkaConfig::new("127.0.0.1:1"));
        let compressed =
            offline(KafkaConfig::new("127.0.0.1:1").with_property("compression.type", "lz4"));
        let mut e = event("t", 10_000);
        for content_type in [false, true] {
            if content_type {
                e.headers.push(("content-type".into(), "text/plain".into()));
            }
            let pairs = KafkaPublisher::header_pairs(&e);
            let headers: usize = pairs.iter().map(|(k, v)| k.len() + v.len()).sum();
            assert_eq!(
                KafkaPublisher::header_bytes(&e),
                headers + pairs.len() * HEADER_FRAMING_BYTES
            );
            assert!(plain.batch_bound(&e) >= e.payload.len() + e.key.len() + headers + 61);
        }
        assert!(compressed.batch_bound(&e) > plain.batch_bound(&e) + 10_000 / 64);
    }

    #[test]
    fn a_topic_with_a_small_limit_gets_a_producer_of_its_size_class() {
        let publisher = offline(KafkaConfig::new("127.0.0.1:1"));
        publisher.limits.record("small", 20_000, Instant::now());
        publisher.limits.record("roomy", 1_048_588, Instant::now());
        let handle = |p: Inner| p.client().native_ptr() as usize;
        let default = handle(publisher.producer());
        let small = handle(publisher.producer_for("small"));
        assert_ne!(small, default);
        assert_eq!(handle(publisher.producer_for("small")), small);
        assert_eq!(handle(publisher.producer_for("roomy")), default);
        assert_eq!(handle(publisher.producer_for("unknown")), default);
        let classes: Vec<usize> = publisher.classes().keys().copied().collect();
        assert_eq!(classes, [16_384], "one class producer, shared");
        assert_eq!(publisher.all_producers().len(), 2);
    }

    #[test]
    fn a_broker_size_refusal_of_an_event_that_fits_is_transient_once() {
        let publisher = offline(KafkaConfig::new("127.0.0.1:1"));
        let refusal = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
        publisher.limits.record("t", 20_000, Instant::now());
        let fits = event("t", 1_000);
        let first = publisher.refused_by_broker(&fits, &refusal);
        assert_eq!(first.class, ErrorClass::Transient, "{first}");
        assert_eq!(
            publisher.limits.due(["t"], Instant::now()),
            ["t"],
            "the limit is read again before the next batch"
        );
        let again = publisher.refused_by_broker(&fits, &refusal);
        assert_eq!(again.class, ErrorClass::Permanent, "{again}");

        let unknown = event("never-read", 1_000);
        let error = publisher.refused_by_broker(&unknown, &refusal);
        assert_eq!(error.class, ErrorClass::Permanent);
        let too_big = event("t", 30_000);
        let error = publisher.refused_by_broker(&too_big, &refusal);
        assert_eq!(error.class, ErrorClass::Permanent);
    }

    #[test]
    fn a_guarded_property_is_refused_when_the_publisher_is_made() {
        let error = KafkaPublisher::new(KafkaConfig::new("127.0.0.1:1").with_property("acks", "1"))
            .unwrap_err();
        assert!(matches!(error, Error::Config(_)));
        assert!(error.to_string().contains("acks=1"), "{error}");
        offline(
            KafkaConfig::new("127.0.0.1:1").with_unsafe_override("message.timeout.ms", "60000"),
        );
        // librdkafka itself insists on acks=all while idempotence is on.
        offline(
            KafkaConfig::new("127.0.0.1:1")
                .with_unsafe_override("enable.idempotence", "false")
                .with_unsafe_override("acks", "1"),
        );
    }

    #[test]
    fn message_level_errors_are_permanent_and_broker_trouble_transient() {
        let permanent = [
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::UnknownTopic,
            RDKafkaErrorCode::TopicAuthorizationFailed,
            RDKafkaErrorCode::InvalidRecord,
        ];
        for code in permanent {
            let e = KafkaError::MessageProduction(code);
            assert_eq!(classify(&e).class, ErrorClass::Permanent, "{code:?}");
        }
        let transient = [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::NotEnoughReplicas,
            RDKafkaErrorCode::RequestTimedOut,
            RDKafkaErrorCode::PurgeInflight,
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::Fatal,
            RDKafkaErrorCode::SaslAuthenticationFailed,
        ];
        for code in transient {
            let e = KafkaError::MessageProduction(code);
            assert_eq!(classify(&e).class, ErrorClass::Transient, "{code:?}");
        }
    }
}
