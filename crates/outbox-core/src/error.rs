//! The crate's error type.

use std::time::Duration;

/// Why a publish attempt failed, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ErrorClass {
    /// The destination is unavailable for now (broker down, timeout, leader change, full queue).
    /// The relay retries forever with capped exponential backoff and never counts these toward
    /// dead-lettering.
    Transient,
    /// This message cannot be delivered as it is (too large, unknown topic, not authorized, bad
    /// header). The relay counts an attempt, backs off, and dead-letters the event after
    /// `max_attempts`.
    Permanent,
}

impl ErrorClass {
    /// The label used in metrics and logs: `transient` or `permanent`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Transient => "transient",
            Self::Permanent => "permanent",
        }
    }
}

/// Why one event could not be published.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{class} publish error: {message}", class = .class.as_str())]
pub struct PublishError {
    /// Whether retrying can help.
    pub class: ErrorClass,
    /// What went wrong, for logs and the row's `last_error`.
    pub message: String,
}

impl PublishError {
    /// A transient error: retried forever, never dead-lettered.
    pub fn transient(message: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::Transient,
            message: message.into(),
        }
    }

    /// A permanent error for this message: counted, backed off, dead-lettered after
    /// `max_attempts`.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            class: ErrorClass::Permanent,
            message: message.into(),
        }
    }

    /// Whether retrying later can succeed without changing the message.
    pub fn is_transient(&self) -> bool {
        self.class == ErrorClass::Transient
    }
}

/// Errors of the outbox core and of the stores and publishers built on it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// The database failed or could not be reached.
    #[error("outbox database error: {0}")]
    Database(#[source] Box<dyn std::error::Error + Send + Sync>),

    /// The database refused the work for good: a constraint violated, invalid data, a statement
    /// that cannot run, or a transaction that an earlier failed statement aborted. Retrying the
    /// same work repeats it (the inbox rejects the message that caused it).
    #[error("the database refused it: {0}")]
    Refused(String),

    /// The relay's database session, which holds the leadership lock, was lost; another relay
    /// may be active now.
    #[error("the relay lost its leadership session; it will try to take the lock again")]
    LeadershipLost,

    /// An event was rejected before it was written (empty field, bad header name, ...).
    #[error("invalid outbox event: {0}")]
    InvalidEvent(String),

    /// No topic was given and the event type mapper knows no topic for this event type.
    #[error("no topic for event type `{0}`: set one on the event or map the type to a topic")]
    UnknownEventType(String),

    /// An event could not be published.
    #[error(transparent)]
    Publish(#[from] PublishError),

    /// Settings that cannot work together or a value out of range.
    #[error("invalid outbox configuration: {0}")]
    Config(String),

    /// Serialising an event payload failed.
    #[error("cannot serialise event payload: {0}")]
    Serialization(#[from] serde_json::Error),

    /// The worker (relay or inbox) is already running; stop it before starting it again.
    #[error("the worker is already running; stop it before starting it again")]
    AlreadyRunning,

    /// `stop()` waited the configured shutdown timeout for in-flight sends to be acknowledged by
    /// Kafka and gave up; those events stay in the outbox and are sent again by the next relay.
    #[error(
        "the relay did not finish within {timeout:?}: {unacknowledged} events were not acknowledged and stay in the outbox"
    )]
    ShutdownTimedOut {
        /// How long `stop()` waited.
        timeout: Duration,
        /// Events sent or being sent whose rows were not acknowledged.
        unacknowledged: usize,
    },

    /// The inbox's message source failed for good (bad configuration, fatal broker error): the
    /// inbox worker stopped.
    #[error(transparent)]
    Source(#[from] crate::inbox::SourceError),

    /// The inbox worker's `stop()` waited the configured shutdown timeout for the batch in
    /// flight and gave up on it: its messages were not committed to the broker and are
    /// delivered again (the inbox drops those it had already applied).
    #[error(
        "the inbox worker did not finish within {timeout:?}: {in_flight} messages were left uncommitted and will be delivered again"
    )]
    InboxStopTimedOut {
        /// How long `stop()` waited.
        timeout: Duration,
        /// Messages of the batch in flight.
        in_flight: usize,
    },

    /// The relay task ended abnormally (it panicked or was aborted).
    #[error("the relay task failed: {0}")]
    WorkerFailed(String),
}

impl OutboxError {
    /// Wraps any database driver error.
    pub fn database(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self::Database(Box::new(error))
    }

    /// Whether the same operation may succeed if retried later: database and connection errors,
    /// lost leadership, and transient publish errors.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Database(_) | Self::LeadershipLost => true,
            Self::Publish(e) => e.is_transient(),
            Self::Source(e) => !matches!(e, crate::inbox::SourceError::Fatal(_)),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_errors_are_the_ones_time_can_fix() {
        assert!(OutboxError::database(std::io::Error::other("down")).is_retryable());
        assert!(OutboxError::LeadershipLost.is_retryable());
        assert!(OutboxError::from(PublishError::transient("broker down")).is_retryable());
        assert!(!OutboxError::from(PublishError::permanent("too large")).is_retryable());
        assert!(!OutboxError::InvalidEvent("empty".into()).is_retryable());
        assert!(!OutboxError::UnknownEventType("x".into()).is_retryable());
    }

    #[test]
    fn messages_are_lowercase_and_say_what_to_do() {
        let e = OutboxError::UnknownEventType("FileAdded".into());
        assert_eq!(
            e.to_string(),
            "no topic for event type `FileAdded`: set one on the event or map the type to a topic"
        );
        assert_eq!(
            PublishError::permanent("message too large").to_string(),
            "permanent publish error: message too large"
        );
    }
}
