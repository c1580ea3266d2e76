//! Sending events to the message broker.

use std::time::Duration;

use async_trait::async_trait;

use crate::{OutboxEvent, PublishError};

/// Where Kafka stored a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// The partition.
    pub partition: i32,
    /// The offset in that partition.
    pub offset: i64,
}

/// Sends events to the broker. The relay hands it whole batches: implementations should enqueue
/// every message first and await the acknowledgements together.
#[async_trait]
pub trait EventPublisher: Send + Sync {
    /// Gets ready to [`check`](Self::check) and [`publish`](Self::publish) `events`, for example
    /// by learning the limits of their topics. The relay calls it once per batch, before
    /// checking any of its events. It cannot fail: a publisher that cannot get ready falls back
    /// to what it knows (its own defaults) and [`check`](Self::check) decides with that. A
    /// publisher that wraps another should forward it.
    async fn prepare(&self, events: &[OutboxEvent]) {
        let _ = events;
    }

    /// Checks, without sending, whether `event` can be sent at all (for example that it is not
    /// larger than the broker accepts). The relay calls it before [`publish`](Self::publish) so
    /// that an event that can never be sent is failed without disturbing the others.
    fn check(&self, event: &OutboxEvent) -> Result<(), PublishError> {
        let _ = event;
        Ok(())
    }

    /// Sends `events`, in order, and returns one result per event, in the same order. Events
    /// with the same topic and key must reach their partition in the order given.
    async fn publish(&self, events: &[OutboxEvent]) -> Vec<Result<Delivery, PublishError>>;

    /// Waits until everything sent has been acknowledged or `timeout` passes.
    async fn flush(&self, timeout: Duration) -> Result<(), PublishError>;

    /// Fails every send still waiting for an acknowledgement, so a `publish` in progress returns
    /// now. The relay calls it when `stop()` has waited its shutdown timeout.
    fn abort_in_flight(&self) {}
}
