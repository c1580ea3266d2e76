//! The consumer side: an inbox that applies each consumed event exactly once.
//!
//! The outbox delivers at least once, so a consumer sees duplicates (after a relay crash, a
//! redelivery, an operator's replay). The inbox turns that into exactly-once *effects*: for each
//! message, one database transaction records the message's event id in the inbox, runs the
//! service's handler (the business change and any outbox rows it writes) and commits; only then
//! is the broker offset committed. A message whose id the inbox already holds applies nothing.
//!
//! This module holds the contract, free of any database or broker client:
//!
//! - [`InboxMessage`], one consumed message, and the [`event_id`](InboxMessage::event_id) it is
//!   deduplicated by;
//! - [`InboxHandler`], the service's code for a topic, run on the store's transaction, which
//!   answers [`Handled`] or a [`HandlerError`] that says whether retrying can help;
//! - [`InboxStore`], what the worker needs from the database (`outbox-seaorm` provides the
//!   PostgreSQL one, `event_inbox`);
//! - [`MessageSource`], what the worker needs from the broker (`outbox-kafka` provides the Kafka
//!   consumer);
//! - [`InboxWorker`], which runs them: batches, isolation of failures, retries, rejections,
//!   offset commits, graceful stop, retention cleanup, replay, configured by
//!   [`InboxSettings`](crate::InboxSettings) and reporting [`InboxStatus`].

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::OutboxError;

mod worker;

pub use worker::{InboxStatus, InboxWorker, Replayed, UNROUTED_CONSUMER};

/// The header the outbox's publisher puts every event's id in.
pub const EVENT_ID_HEADER: &str = "event_id";

/// The only header of a message whose headers a [`MessageSource`] could not read (for Kafka, a
/// header name that is not UTF-8): such a message is rejected, since its `event_id` header
/// cannot be trusted either.
pub const UNREADABLE_HEADERS: &str = "x-outbox-unreadable-headers";

/// One message consumed from the broker.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboxMessage {
    /// Its topic.
    pub topic: String,
    /// Its partition.
    pub partition: i32,
    /// Its offset in the partition.
    pub offset: i64,
    /// Its key, if any.
    pub key: Option<Vec<u8>>,
    /// Its value; `None` for a tombstone.
    pub payload: Option<Vec<u8>>,
    /// Its headers, in order (a header without a value has an empty one).
    pub headers: Vec<(String, Vec<u8>)>,
    /// The broker's timestamp, if it has one.
    pub timestamp: Option<DateTime<Utc>>,
}

impl InboxMessage {
    /// The value of the first header called `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    /// The payload parsed as JSON into `T`. A missing or unparsable payload is a permanent
    /// error: no retry can fix it.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, HandlerError> {
        let payload = self.payload.as_deref().ok_or_else(|| {
            HandlerError::permanent(format!("message {} has no payload", self.position_label()))
        })?;
        serde_json::from_slice(payload).map_err(|e| {
            HandlerError::permanent(format!(
                "message {} is not the JSON expected: {e}",
                self.position_label()
            ))
        })
    }

    /// The id the inbox deduplicates this message by: the `event_id` header if the message has
    /// one (the outbox's publisher always sets it), else the `event_id` field of a JSON envelope
    /// payload. A message with neither, or with one that is not a UUID, is rejected: it can
    /// never be processed exactly once.
    pub fn event_id(&self) -> Result<Uuid, HandlerError> {
        let fields = if self.header(EVENT_ID_HEADER).is_some() {
            EnvelopeFields::default()
        } else {
            self.envelope_fields()?
        };
        self.event_id_from(&fields)
    }

    fn event_id_from(&self, fields: &EnvelopeFields) -> Result<Uuid, HandlerError> {
        if self.header(UNREADABLE_HEADERS).is_some() {
            return Err(HandlerError::permanent(format!(
                "message {} has headers that cannot be read (a header name is not UTF-8)",
                self.position_label()
            )));
        }
        if let Some(raw) = self.header(EVENT_ID_HEADER) {
            let text = std::str::from_utf8(raw).map_err(|_| {
                HandlerError::permanent(format!(
                    "message {}: the {EVENT_ID_HEADER} header is not UTF-8",
                    self.position_label()
                ))
            })?;
            return Uuid::parse_str(text.trim()).map_err(|e| {
                HandlerError::permanent(format!(
                    "message {}: the {EVENT_ID_HEADER} header is not a UUID: {e}",
                    self.position_label()
                ))
            });
        }
        let Some(id) = &fields.event_id else {
            return Err(HandlerError::permanent(format!(
                "message {} has no {EVENT_ID_HEADER} header and no event_id in its payload",
                self.position_label()
            )));
        };
        let text = id.as_str().ok_or_else(|| {
            HandlerError::permanent(format!(
                "message {}: the payload's event_id is not a string",
                self.position_label()
            ))
        })?;
        Uuid::parse_str(text).map_err(|e| {
            HandlerError::permanent(format!(
                "message {}: the payload's event_id is not a UUID: {e}",
                self.position_label()
            ))
        })
    }

    /// The envelope fields the inbox row keeps, from a JSON payload; an error when the payload
    /// is missing or not a JSON object.
    fn envelope_fields(&self) -> Result<EnvelopeFields, HandlerError> {
        self.json()
    }

    /// A deterministic id for a message that has no usable event id, so that it can be
    /// recorded as rejected once, however often it is delivered: a version 8 UUID whose bits
    /// are a 128-bit FNV-1a hash of `topic/partition/offset` (version 8 keeps it apart from
    /// the outbox's version 7 event ids).
    pub fn position_id(&self) -> Uuid {
        const OFFSET_BASIS: u128 = 0x6c62272e07bb014262b821756295c58d;
        const PRIME: u128 = 0x0000000001000000000000000000013B;
        let label = format!("{}/{}/{}", self.topic, self.partition, self.offset);
        let hash = label.bytes().fold(OFFSET_BASIS, |hash, byte| {
            (hash ^ u128::from(byte)).wrapping_mul(PRIME)
        });
        uuid::Builder::from_custom_bytes(hash.to_be_bytes()).into_uuid()
    }

    /// `topic/partition@offset`, for logs and errors.
    pub fn position_label(&self) -> String {
        format!("{}/{}@{}", self.topic, self.partition, self.offset)
    }
}

/// What a handler did with a message: the outcome recorded in the inbox row (`applied` unless
/// the handler names another, such as `stale` for a transition that no longer applies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    outcome: String,
}

impl Handled {
    /// The message was applied.
    pub fn applied() -> Self {
        Self::outcome("applied")
    }

    /// The message was handled with this outcome (a short snake_case label, stored in the
    /// inbox row and used as a metric label, so keep the set small and fixed).
    pub fn outcome(outcome: impl Into<String>) -> Self {
        Self {
            outcome: outcome.into(),
        }
    }

    /// The outcome's label.
    pub fn as_str(&self) -> &str {
        &self.outcome
    }
}

/// Why a handler could not apply a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// Retrying later can succeed (the database or the broker is unavailable): the transaction
    /// is rolled back and the message retried with capped backoff; the offset does not move.
    #[error("transient handler error: {0}")]
    Transient(String),
    /// The message can never be applied (unparsable, invalid, refused by the business rules):
    /// the transaction is rolled back, the message is recorded `rejected` with this error and
    /// skipped, so it cannot block its partition. An operator can list and replay it.
    #[error("permanent handler error: {0}")]
    Permanent(String),
}

impl HandlerError {
    /// A transient error: retried, never skipped.
    pub fn transient(message: impl Into<String>) -> Self {
        Self::Transient(message.into())
    }

    /// A permanent error: the message is rejected and skipped.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::Permanent(message.into())
    }

    /// Whether retrying later can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Transient(_))
    }
}

impl From<OutboxError> for HandlerError {
    /// Database and connection errors are transient; the rest (an invalid event, an unknown
    /// event type) are permanent.
    fn from(error: OutboxError) -> Self {
        if error.is_retryable() {
            Self::Transient(error.to_string())
        } else {
            Self::Permanent(error.to_string())
        }
    }
}

/// The service's code for the messages of one or more topics, run on the inbox store's
/// transaction `T` (for the `outbox` facade, an `OutboxTransaction`: write the business change
/// and add outbox events on it). Everything it writes commits together with the inbox row, or
/// not at all; it must not commit `T` itself or have effects outside it.
#[async_trait]
pub trait InboxHandler<T: ?Sized + Sync>: Send + Sync {
    /// Applies `message` on `txn`. Called at most once per committed inbox row; it may be
    /// called again for the same message after a rollback (a transient error, a crash before
    /// the commit), so everything it does must be on `txn`.
    async fn handle(&self, txn: &T, message: &InboxMessage) -> Result<Handled, HandlerError>;
}

/// The inbox row of one message: who consumed it and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxEntry {
    /// The consumer (handler) name: the inbox deduplicates per `(consumer, event_id)`, so two
    /// handlers of one service each apply an event once.
    pub consumer: String,
    /// The event's id ([`InboxMessage::event_id`]).
    pub event_id: Uuid,
    /// The message's topic.
    pub topic: String,
    /// The message's partition.
    pub partition: i32,
    /// The message's offset.
    pub offset: i64,
    /// The envelope's `event_type`, if the payload has one.
    pub event_type: Option<String>,
    /// The envelope's `correlation_id`, if the payload has one.
    pub correlation_id: Option<String>,
}

/// Longest `event_type` or `correlation_id` an inbox row keeps; a longer one is left out.
const MAX_LABEL_LEN: usize = 255;

/// The fields of a JSON envelope the inbox looks at; everything else is skipped unread.
#[derive(Debug, Default, serde::Deserialize)]
struct EnvelopeFields {
    #[serde(default)]
    event_id: Option<serde_json::Value>,
    #[serde(default)]
    event_type: Option<serde_json::Value>,
    #[serde(default)]
    correlation_id: Option<serde_json::Value>,
}

/// A short string field, or `None` when it is missing, not a string, empty, too long, or holds
/// a NUL (which a PostgreSQL `text` column refuses).
fn label(value: Option<&serde_json::Value>) -> Option<String> {
    value
        .and_then(|v| v.as_str())
        .filter(|s| !s.is_empty() && s.len() <= MAX_LABEL_LEN && !s.contains('\0'))
        .map(str::to_owned)
}

impl InboxEntry {
    /// The row `consumer` records for `message`: its [`event_id`](InboxMessage::event_id), its
    /// position, and the `event_type` (the `event_type` header, else the envelope's) and
    /// `correlation_id` (the envelope's) when they are short strings. An error when the message
    /// has no usable event id: reject it under [`for_rejection`](Self::for_rejection).
    pub fn for_message(consumer: &str, message: &InboxMessage) -> Result<Self, HandlerError> {
        let has_header_id = message.header(EVENT_ID_HEADER).is_some();
        let fields = match message.envelope_fields() {
            Ok(fields) => fields,
            // The header alone identifies the event; the payload need not be JSON.
            Err(_) if has_header_id => EnvelopeFields::default(),
            Err(e) => return Err(e),
        };
        let event_id = message.event_id_from(&fields)?;
        let header_type = message
            .header("event_type")
            .and_then(|v| std::str::from_utf8(v).ok())
            .map(|s| serde_json::Value::String(s.to_owned()));
        Ok(Self {
            consumer: consumer.to_owned(),
            event_id,
            topic: message.topic.clone(),
            partition: message.partition,
            offset: message.offset,
            event_type: label(header_type.as_ref()).or_else(|| label(fields.event_type.as_ref())),
            correlation_id: label(fields.correlation_id.as_ref()),
        })
    }

    /// The row under which `consumer` rejects a message that has no usable event id: its
    /// [`position_id`](InboxMessage::position_id), so a redelivery is recognised.
    pub fn for_rejection(consumer: &str, message: &InboxMessage) -> Self {
        Self {
            consumer: consumer.to_owned(),
            event_id: message.position_id(),
            topic: message.topic.clone(),
            partition: message.partition,
            offset: message.offset,
            event_type: None,
            correlation_id: None,
        }
    }
}

/// A message the inbox recorded as `rejected`, kept with its bytes so an operator can replay it
/// after the cause is fixed, even once the broker has deleted it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedMessage {
    /// Its inbox row.
    pub entry: InboxEntry,
    /// Why it was rejected.
    pub error: String,
    /// When.
    pub rejected_at: DateTime<Utc>,
    /// The message itself.
    pub message: InboxMessage,
}

/// What the inbox worker needs from the database. The conformance suite
/// (`conformance::inbox`, feature `test-utils`) checks an implementation.
#[async_trait]
pub trait InboxStore: Send + Sync {
    /// The store's transaction, handed to the handlers.
    type Transaction: Send + Sync;

    /// Begins a transaction.
    async fn begin(&self) -> Result<Self::Transaction, OutboxError>;

    /// Records `entries` on `txn` (outcome `applied` until [`set_outcome`](Self::set_outcome)
    /// says otherwise) and returns, for each entry in order, whether it is new: `false` for an
    /// entry whose `(consumer, event_id)` the inbox already holds (committed earlier, or earlier
    /// in `entries`). A duplicate must change nothing.
    async fn record(
        &self,
        txn: &Self::Transaction,
        entries: &[InboxEntry],
    ) -> Result<Vec<bool>, OutboxError>;

    /// Sets the outcome of a row recorded on `txn`.
    async fn set_outcome(
        &self,
        txn: &Self::Transaction,
        consumer: &str,
        event_id: Uuid,
        outcome: &str,
    ) -> Result<(), OutboxError>;

    /// Commits `txn`.
    async fn commit(&self, txn: Self::Transaction) -> Result<(), OutboxError>;

    /// Rolls `txn` back.
    async fn rollback(&self, txn: Self::Transaction) -> Result<(), OutboxError>;

    /// Records, in a transaction of its own, that `message` can never be processed: outcome
    /// `rejected`, the error, and the message's bytes. Returns `false`, changing nothing, when
    /// the inbox already holds `(consumer, event_id)` (applied or rejected before).
    async fn reject(
        &self,
        entry: &InboxEntry,
        message: &InboxMessage,
        error: &str,
    ) -> Result<bool, OutboxError>;

    /// Lists rejected messages, oldest first: all consumers' with `None`.
    async fn rejected(
        &self,
        consumer: Option<&str>,
        limit: u64,
    ) -> Result<Vec<RejectedMessage>, OutboxError>;

    /// Removes the rejected row of `(consumer, event_id)` on `txn`, so a replay can record the
    /// message again in the same transaction. Returns the message, or `None` if there is no
    /// such rejected row.
    async fn take_rejected(
        &self,
        txn: &Self::Transaction,
        consumer: &str,
        event_id: Uuid,
    ) -> Result<Option<InboxMessage>, OutboxError>;

    /// Replaces the error of the rejected row of `(consumer, event_id)` (after a replay failed
    /// for good), returning `false` when there is no such rejected row.
    ///
    /// The default takes the row out and rejects the message again, in two transactions; a
    /// store should override it with one statement.
    async fn update_rejected(
        &self,
        consumer: &str,
        event_id: Uuid,
        error: &str,
    ) -> Result<bool, OutboxError> {
        let txn = self.begin().await?;
        let message = match self.take_rejected(&txn, consumer, event_id).await {
            Ok(Some(message)) => message,
            Ok(None) => {
                self.rollback(txn).await?;
                return Ok(false);
            }
            Err(e) => {
                let _ = self.rollback(txn).await;
                return Err(e);
            }
        };
        self.commit(txn).await?;
        let mut entry = InboxEntry::for_message(consumer, &message)
            .unwrap_or_else(|_| InboxEntry::for_rejection(consumer, &message));
        entry.event_id = event_id;
        self.reject(&entry, &message, error).await
    }

    /// Deletes up to `limit` rows processed more than `older_than` ago (rejected rows
    /// included), returning how many. Retention must outlast any redelivery: a duplicate that
    /// arrives after its row is deleted is applied again.
    async fn delete_expired(&self, older_than: Duration, limit: u64) -> Result<u64, OutboxError>;
}

/// Where a message stands when the worker tells the source it is done.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MessagePosition {
    /// The topic.
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The message's offset (the committed offset is the next one).
    pub offset: i64,
}

impl From<&InboxMessage> for MessagePosition {
    fn from(message: &InboxMessage) -> Self {
        Self {
            topic: message.topic.clone(),
            partition: message.partition,
            offset: message.offset,
        }
    }
}

/// Why the source could not give or commit messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The broker is unavailable for now: the worker backs off and asks again.
    #[error("message source unavailable: {0}")]
    Transient(String),
    /// The partition was taken from this consumer (a rebalance) before its offset was
    /// committed: another consumer will deliver the message again, and the inbox drops it as a
    /// duplicate there. The worker forgets the message.
    #[error("partition revoked before the commit: {0}")]
    Revoked(String),
    /// The source cannot work (bad configuration, fatal broker error): the worker stops.
    #[error("message source failed: {0}")]
    Fatal(String),
}

/// What the inbox worker needs from the broker: messages in order per
/// partition, and offsets committed only when the worker says so.
#[async_trait]
pub trait MessageSource: Send + Sync {
    /// Waits for at least one message, then returns it with those immediately available after
    /// it, at most `max` in all, in order per partition.
    ///
    /// The worker drops this future when it is asked to stop while waiting: messages it had
    /// taken but not returned must be delivered again by the next run (they were not
    /// committed).
    async fn next_batch(&self, max: usize) -> Result<Vec<InboxMessage>, SourceError>;

    /// Commits, for each partition, the offset after the last of `done` (all processed, in
    /// order): a restarted consumer begins after them.
    async fn commit(&self, done: &[MessagePosition]) -> Result<(), SourceError>;

    /// Makes the source deliver `from` again, and everything after it on its partition (after a
    /// transient failure left messages of a batch unprocessed).
    async fn rewind(&self, from: &MessagePosition) -> Result<(), SourceError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(headers: Vec<(String, Vec<u8>)>, payload: Option<&str>) -> InboxMessage {
        InboxMessage {
            topic: "t".into(),
            partition: 2,
            offset: 7,
            headers,
            payload: payload.map(|p| p.as_bytes().to_vec()),
            ..InboxMessage::default()
        }
    }

    #[test]
    fn the_header_names_the_event_before_the_envelope_does() {
        let header = Uuid::now_v7();
        let body = Uuid::now_v7();
        let m = message(
            vec![(EVENT_ID_HEADER.into(), header.to_string().into_bytes())],
            Some(&format!(r#"{{"event_id":"{body}"}}"#)),
        );
        assert_eq!(m.event_id(), Ok(header));
        let m = message(vec![], Some(&format!(r#"{{"event_id":"{body}"}}"#)));
        assert_eq!(m.event_id(), Ok(body));
    }

    #[test]
    fn a_message_without_a_usable_id_is_permanent() {
        for m in [
            message(vec![], None),
            message(vec![], Some("not json")),
            message(vec![], Some(r#"{"event_id":"nope"}"#)),
            message(vec![(EVENT_ID_HEADER.into(), b"\xff".to_vec())], None),
            message(vec![(EVENT_ID_HEADER.into(), b"12".to_vec())], None),
        ] {
            let err = m.event_id().unwrap_err();
            assert!(!err.is_transient(), "{err}");
            assert!(err.to_string().contains("t/2@7"), "{err}");
        }
    }

    #[test]
    fn outbox_errors_keep_their_retry_class() {
        assert!(HandlerError::from(OutboxError::LeadershipLost).is_transient());
        assert!(!HandlerError::from(OutboxError::InvalidEvent("x".into())).is_transient());
        assert_eq!(Handled::applied().as_str(), "applied");
    }
}
