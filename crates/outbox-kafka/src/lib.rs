//! The Kafka publisher of the transactional outbox, on rdkafka (librdkafka).
//!
//! [`KafkaPublisher`] implements [`outbox_core::EventPublisher`]: it sends each relay batch in
//! bulk with an idempotent producer (`acks=all`, the Java client's `murmur2_random` partitioner,
//! `linger.ms=0` as the relay hands it whole batches), awaits the acknowledgements together,
//! and classifies errors as transient or permanent. It learns each topic's `max.message.bytes`
//! and keeps record batches under it, so an event that is itself too large for its topic is
//! failed (and in the end dead-lettered) before sending, and no other event is charged for it
//! (see [`KafkaPublisher`]). Any producer property passes through
//! [`KafkaConfig::with_property`] (TLS and SASL for managed clusters), except that the ones the
//! guarantees depend on ([`GUARDED_PROPERTIES`]) need [`KafkaConfig::with_unsafe_override`] to be
//! weakened.
//!
//! For the consumer side, [`KafkaSource`] implements [`outbox_core::MessageSource`] on a consumer
//! group ([`KafkaConsumerConfig`]): the inbox worker reads batches from it and commits offsets
//! only after the inbox applied their messages; librdkafka never commits on its own.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use outbox_core::{EventRelayWorker, RelaySettings, RelayStore};
//! use outbox_kafka::{KafkaConfig, KafkaPublisher};
//!
//! /// Starts a relay from `store` (for example `outbox_seaorm::PostgresOutbox`) to Kafka.
//! fn relay(store: Arc<dyn RelayStore>) -> Result<EventRelayWorker, Box<dyn std::error::Error>> {
//!     let publisher = KafkaPublisher::new(
//!         KafkaConfig::new("127.0.0.1:9092").with_property("client.id", "orders-relay"),
//!     )?;
//!     let worker = EventRelayWorker::new(store, Arc::new(publisher), RelaySettings::default())?;
//!     worker.start()?;
//!     Ok(worker)
//! }
//! ```
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod config;
mod limits;
mod publisher;
mod source;

pub use config::{DEFAULT_PROPERTIES, GUARDED_PROPERTIES, GuardedProperty, KafkaConfig};
pub use publisher::KafkaPublisher;
use publisher::classify;
pub use source::{CONSUMER_DEFAULT_PROPERTIES, INBOX_LAG, KafkaConsumerConfig, KafkaSource};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The producer configuration was refused (unknown property, bad value).
    #[error("invalid kafka configuration: {0}")]
    Config(String),
    /// The Kafka client failed.
    #[error("kafka error: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
}

impl Error {
    /// Whether trying again later can help (a client error may be the brokers being away; a
    /// configuration error will not fix itself).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Kafka(_))
    }
}

impl From<Error> for outbox_core::OutboxError {
    fn from(error: Error) -> Self {
        match error {
            Error::Config(message) => Self::Config(message),
            Error::Kafka(e) => Self::Publish(classify(&e)),
        }
    }
}
