//! The core of a transactional outbox: a service writes its events in the same database
//! transaction as the business change that caused them, and a relay publishes them to the
//! message broker afterwards, at least once and in order per key.
//!
//! **Most services depend on the `outbox` facade crate (`crates/outbox`) instead**, which
//! re-exports what they need from here together with the PostgreSQL store and the Kafka
//! publisher. Depend on `outbox-core` directly to write an adapter (another database or broker)
//! or to test code built on the relay with the in-memory doubles of the `test-utils` feature.
//!
//! This crate names no database, ORM, broker client or web framework: the adapters bring those.
//! `outbox-seaorm` provides the PostgreSQL store, `outbox-kafka` the Kafka publisher, and
//! `outbox-di` wires them together with shaku.
//!
//! # How an event travels
//!
//! 1. The service builds a [`NewOutboxEvent`] (aggregate, event type, payload bytes or JSON,
//!    optional key, topic and headers) and adds it with an [`OutboxWriter`] on its own
//!    transaction. The event exists if and only if that transaction commits. Without an explicit
//!    topic, the writer asks an [`EventTypeMapper`] (for example a [`TopicMap`]).
//! 2. After the commit, the service calls [`RelayNotifier::notify`], so the relay looks at once
//!    instead of at its next poll.
//! 3. The [`EventRelayWorker`], configured by [`RelaySettings`], claims the committed events from
//!    a [`RelayStore`] in commit order, sends them through an [`EventPublisher`] in one bulk send,
//!    and acknowledges them in the store once the broker has. A transient failure (broker or
//!    database down) is retried forever with backoff; a permanent one is retried up to
//!    `max_attempts` times and then dead-lettered, without stopping other keys.
//! 4. Every message carries its [`EventId`] (UUID v7) in the `event_id` header: the duplicates
//!    at-least-once delivery allows (at most one batch, after a crash) can be dropped by id.
//! 5. On the consuming side, the [`InboxWorker`] applies each message once: in one database
//!    transaction it records the message's event id in an inbox ([`InboxStore`]), runs the
//!    topic's [`InboxHandler`] (the business change and any outbox events it adds), commits,
//!    and only then commits the broker offset ([`MessageSource`]). A duplicate applies nothing;
//!    a message that can never be processed is recorded as rejected and skipped, and can be
//!    replayed by an operator.
//!
//! # What is here
//!
//! For services:
//!
//! - [`NewOutboxEvent`], [`EventId`] and the JSON [`EventEnvelope`]: what a service writes;
//! - [`OutboxWriter`]: adds events on the caller's transaction;
//! - [`EventTypeMapper`] and [`TopicMap`]: topics by event type, so call sites need not repeat
//!   topic names;
//! - [`EventRelayWorker`], the relay, configured by
//!   [`RelaySettings`] (each setting documents its default), [`RelayStatus`] for health checks,
//!   and the [`RelayNotifier`] wake-up handle;
//! - [`InboxWorker`], the consumer side (module [`inbox`]), configured by [`InboxSettings`],
//!   with [`InboxStatus`] for health checks: [`InboxHandler`]s answer [`Handled`] or a
//!   [`HandlerError`] that says whether retrying can help;
//! - [`OutboxError`], the one error type, and the [`metrics`] names the relay and the inbox
//!   report.
//!
//! For adapters, one small trait per capability:
//!
//! - [`RelayStore`]: leadership, claims ([`ClaimedBatch`] from a [`ClaimCursor`]),
//!   acknowledgements, failures ([`AttemptFailure`]), stats ([`OutboxStats`]) and an optional
//!   [`RemoteWake`];
//! - [`DeadLetterStore`]: list, replay and discard dead letters;
//! - [`OutboxCleanup`]: delete expired published rows under retention;
//! - [`InboxStore`] and [`MessageSource`]: the inbox's database (record, reject, replay,
//!   retention) and broker (batches, offset commits, rewinds);
//! - [`EventPublisher`]: check and send a batch, reporting a [`Delivery`] or a [`PublishError`]
//!   that says whether it is worth retrying ([`ErrorClass`]);
//! - [`validate_topic`] for a topic a writer resolved through a mapper, and the header names
//!   writers and publishers share ([`RESERVED_HEADERS`], [`CONTENT_TYPE_HEADER`],
//!   [`TRACEPARENT_HEADER`], [`JSON_CONTENT_TYPE`]).
//!
//! With the `test-utils` feature, `testing` holds in-memory doubles of the store, the
//! publisher, the inbox store and the message source for unit tests, and `conformance` the
//! suites every [`RelayStore`] and every [`InboxStore`] (`conformance::inbox`) must pass.
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
pub mod inbox;
mod mapper;
pub mod metrics;
mod publisher;
mod settings;
mod store;
#[cfg(feature = "test-utils")]
pub mod testing;
mod worker;

// Not part of the outbox's API: the File Service's upload processing retries with the relay's
// backoff. Hidden rather than removed until that retry has a home of its own.
#[doc(hidden)]
pub use backoff::backoff_delay;
pub use envelope::EventEnvelope;
pub use error::{ErrorClass, OutboxError, PublishError};
pub use event::{
    CONTENT_TYPE_HEADER, EventId, JSON_CONTENT_TYPE, NewOutboxEvent, OutboxEvent, RESERVED_HEADERS,
    TRACEPARENT_HEADER, validate_topic,
};
pub use inbox::{
    EVENT_ID_HEADER, Handled, HandlerError, InboxEntry, InboxHandler, InboxMessage, InboxStatus,
    InboxStore, InboxWorker, MessagePosition, MessageSource, RejectedMessage, Replayed,
    SourceError, UNREADABLE_HEADERS,
};
pub use mapper::{EventTypeMapper, TopicMap};
pub use publisher::{Delivery, EventPublisher};
pub use settings::{InboxSettings, RelaySettings};
pub use store::{
    AttemptFailure, ClaimCursor, ClaimedBatch, DeadLetter, DeadLetterFilter, DeadLetterStore,
    FailureOutcome, HorizonHolder, OutboxCleanup, OutboxStats, OutboxWriter, RelayStore,
};
pub use worker::{EventRelayWorker, RelayNotifier, RelayStatus, RemoteWake};
