//! The core of a transactional outbox: events are written in the same database transaction as
//! the business change that caused them, and a relay publishes them to the message broker
//! afterwards, in order per key, at least once.
//!
//! This crate holds what does not depend on a database or a broker:
//!
//! - the domain types: [`EventId`] (UUID v7), [`NewOutboxEvent`] (what a service writes),
//!   [`OutboxEvent`] (what the relay reads), and the JSON [`EventEnvelope`];
//! - the capabilities an adapter provides, one trait each: [`OutboxWriter`] (add an event on the
//!   caller's transaction), [`RelayStore`] (claim, acknowledge, record failures, stats),
//!   [`DeadLetterStore`], [`OutboxCleanup`], and [`EventPublisher`] for the broker;
//! - [`EventTypeMapper`] and [`TopicMap`], so call sites need not repeat topic names;
//! - [`EventRelayWorker`], configured by [`RelaySettings`], with its [`RelayNotifier`] wake-up
//!   handle;
//! - the [`metrics`] names.
//!
//! `outbox-seaorm` provides the PostgreSQL store and `outbox-kafka` the Kafka publisher;
//! `outbox-di` wires them together with shaku.
//!
//! # Example
//!
//! The relay over the in-memory doubles of the `test-utils` feature (a service uses the
//! PostgreSQL store and the Kafka publisher instead):
//!
//! ```
//! use std::sync::Arc;
//! use outbox_core::testing::{MemoryPublisher, MemoryStore};
//! use outbox_core::{EventRelayWorker, NewOutboxEvent, RelaySettings};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), outbox_core::OutboxError> {
//! let store = MemoryStore::new();
//! let publisher = MemoryPublisher::new();
//! let worker = EventRelayWorker::new(store.clone(), publisher.clone(), RelaySettings::default())?;
//! worker.start()?;
//!
//! // A service adds events inside its transaction, then wakes the relay after the commit.
//! store.add(NewOutboxEvent::json("order", "o-1", "OrderPlaced", &serde_json::json!({"total": 42}))?
//!     .with_topic("orders"));
//! worker.notifier().notify();
//!
//! while publisher.delivered().is_empty() {
//!     tokio::time::sleep(std::time::Duration::from_millis(5)).await;
//! }
//! worker.stop().await?; // returns once nothing is in flight
//! assert_eq!(publisher.delivered()[0].key, "o-1");
//! assert_eq!(store.pending(), 0);
//! # Ok(())
//! # }
//! ```
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod backoff;
#[cfg(feature = "test-utils")]
pub mod conformance;
mod envelope;
mod error;
mod event;
mod mapper;
pub mod metrics;
mod publisher;
mod settings;
mod store;
#[cfg(feature = "test-utils")]
pub mod testing;
mod worker;

pub use backoff::backoff_delay;
pub use envelope::EventEnvelope;
pub use error::{ErrorClass, OutboxError, PublishError};
pub use event::{
    CONTENT_TYPE_HEADER, EventId, JSON_CONTENT_TYPE, NewOutboxEvent, OutboxEvent, RESERVED_HEADERS,
    TRACEPARENT_HEADER, validate_topic,
};
pub use mapper::{EventTypeMapper, TopicMap};
pub use publisher::{Delivery, EventPublisher};
pub use settings::RelaySettings;
pub use store::{
    AttemptFailure, ClaimCursor, ClaimedBatch, DeadLetter, DeadLetterFilter, DeadLetterStore,
    FailureOutcome, HorizonHolder, OutboxCleanup, OutboxStats, OutboxWriter, RelayStore,
};
pub use worker::{EventRelayWorker, OutboxRelay, RelayNotifier, RelayStatus, RemoteWake};
