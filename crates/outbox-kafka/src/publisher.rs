//! The rdkafka publisher.

use std::collections::HashSet;
use std::sync::{RwLock, RwLockReadGuard};
use std::time::Duration;

use async_trait::async_trait;
use outbox_core::{
    CONTENT_TYPE_HEADER, Delivery, EventPublisher, OutboxEvent, PublishError, metrics as m,
};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer, PurgeConfig};
use rdkafka::util::Timeout;
use tracing::{debug, error, info, warn};

use crate::{Error, KafkaConfig};

/// Bytes a message needs beyond its key, value and headers (record and batch framing), so the
/// size check errs on the safe side.
const FRAMING_BYTES: usize = 128;

/// Routes librdkafka's own logs to `tracing` (target `librdkafka`) and counts client-level errors
/// (brokers down, transport failures) as transient relay errors.
#[derive(Debug, Default, Clone, Copy)]
pub struct PublisherContext;

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
pub struct KafkaPublisher {
    config: KafkaConfig,
    producer: RwLock<Inner>,
    max_message_bytes: usize,
}

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("bootstrap_servers", &self.config.bootstrap_servers)
            .field("max_message_bytes", &self.max_message_bytes)
            .finish_non_exhaustive()
    }
}

fn create(config: &KafkaConfig) -> Result<Inner, Error> {
    let mut client = ClientConfig::new();
    for (name, value) in config.effective_properties() {
        client.set(name, value);
    }
    client
        .create_with_context(PublisherContext)
        .map_err(|e| Error::Config(format!("cannot create the Kafka producer: {e}")))
}

impl KafkaPublisher {
    /// Creates the producer. Fails on a property librdkafka does not know or a value it refuses,
    /// naming it; connecting happens in the background.
    pub fn new(config: KafkaConfig) -> Result<Self, Error> {
        let max_message_bytes = match config.property("message.max.bytes") {
            Some(value) => value.parse().map_err(|_| {
                Error::Config(format!("message.max.bytes must be a number, not `{value}`"))
            })?,
            None => 1_000_000,
        };
        let producer = create(&config)?;
        Ok(Self {
            config,
            producer: RwLock::new(producer),
            max_message_bytes,
        })
    }

    /// The configuration the producer was made from.
    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    fn producer(&self) -> RwLockReadGuard<'_, Inner> {
        self.producer.read().unwrap_or_else(|p| p.into_inner())
    }

    /// Asks the brokers for cluster metadata: `Ok` once they answer, for readiness checks.
    pub async fn check_connection(&self, timeout: Duration) -> Result<(), Error> {
        let producer = self.producer().clone();
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

    fn headers(event: &OutboxEvent) -> OwnedHeaders {
        let event_id = event.event_id.to_string();
        let mut headers = OwnedHeaders::new_with_capacity(5 + event.headers.len())
            .insert(Header {
                key: "event_id",
                value: Some(event_id.as_bytes()),
            })
            .insert(Header {
                key: "event_type",
                value: Some(event.event_type.as_bytes()),
            })
            .insert(Header {
                key: "aggregate_type",
                value: Some(event.aggregate_type.as_bytes()),
            })
            .insert(Header {
                key: "aggregate_id",
                value: Some(event.aggregate_id.as_bytes()),
            });
        if !event.headers.iter().any(|(k, _)| k == CONTENT_TYPE_HEADER) {
            headers = headers.insert(Header {
                key: CONTENT_TYPE_HEADER,
                value: Some("application/octet-stream".as_bytes()),
            });
        }
        for (name, value) in &event.headers {
            headers = headers.insert(Header {
                key: name,
                value: Some(value.as_bytes()),
            });
        }
        headers
    }

    /// Replaces a producer that hit a fatal error (it accepts nothing more).
    fn rebuild_if_fatal(&self) {
        let fatal = self.producer().client().fatal_error();
        if let Some((code, reason)) = fatal {
            error!(code = ?code, reason, "kafka producer hit a fatal error; creating a new one");
            match create(&self.config) {
                Ok(fresh) => *self.producer.write().unwrap_or_else(|p| p.into_inner()) = fresh,
                Err(e) => error!(error = %e, "kafka producer could not be recreated"),
            }
        }
    }
}

/// Sorts an rdkafka error into transient or permanent for the relay.
pub fn classify(error: &KafkaError) -> PublishError {
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
    fn check(&self, event: &OutboxEvent) -> Result<(), PublishError> {
        let size = event.approximate_size() + FRAMING_BYTES;
        if size > self.max_message_bytes {
            return Err(PublishError::permanent(format!(
                "message of about {size} bytes is larger than message.max.bytes ({})",
                self.max_message_bytes
            )));
        }
        Ok(())
    }

    async fn publish(&self, events: &[OutboxEvent]) -> Vec<Result<Delivery, PublishError>> {
        let producer = self.producer().clone();
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
        for entry in pending {
            results.push(match entry {
                Ok(delivery) => match delivery.await {
                    Ok(Ok(done)) => Ok(Delivery {
                        partition: done.partition,
                        offset: done.offset,
                    }),
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
        let producer = self.producer().clone();
        tokio::task::spawn_blocking(move || producer.flush(Timeout::After(timeout)))
            .await
            .map_err(|e| PublishError::transient(format!("flush task failed: {e}")))?
            .map_err(|e| classify(&e))
    }

    fn abort_in_flight(&self) {
        warn!("purging kafka sends still waiting for acknowledgement");
        self.producer()
            .purge(PurgeConfig::default().queue().inflight());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outbox_core::ErrorClass;

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
