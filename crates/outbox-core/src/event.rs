//! Events as written by a service and as read back by the relay.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::OutboxError;

/// Kafka header names the publisher fills from the row's own columns; an event's extra headers
/// may not use them.
pub const RESERVED_HEADERS: [&str; 4] =
    ["event_id", "event_type", "aggregate_type", "aggregate_id"];

/// The header that carries the payload's media type.
pub const CONTENT_TYPE_HEADER: &str = "content-type";

/// The W3C trace-context header.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// The media type of JSON payloads.
pub const JSON_CONTENT_TYPE: &str = "application/json";

/// The identity of one event: a UUID (version 7, so ids sort by creation time and index cheaply).
///
/// It is the Kafka `event_id` header and the envelope's `event_id`, the same on every re-send,
/// so consumers can drop duplicates by it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(Uuid);

impl EventId {
    /// A new, time-ordered id (UUID v7).
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// Wraps an existing UUID.
    pub fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    /// The UUID.
    pub fn as_uuid(&self) -> Uuid {
        self.0
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl FromStr for EventId {
    type Err = uuid::Error;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

impl From<Uuid> for EventId {
    fn from(uuid: Uuid) -> Self {
        Self(uuid)
    }
}

impl From<EventId> for Uuid {
    fn from(id: EventId) -> Self {
        id.0
    }
}

/// An event to add to the outbox inside the caller's transaction.
///
/// ```
/// use outbox_core::NewOutboxEvent;
///
/// let event = NewOutboxEvent::json("batch", "b-42", "BatchFileAddedV1", &serde_json::json!({"n": 1}))?
///     .with_key("b-42")
///     .with_header("tenant", "essays");
/// assert_eq!(event.key(), "b-42");
/// # Ok::<(), outbox_core::OutboxError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOutboxEvent {
    /// The event's id; new events get a fresh UUID v7.
    pub event_id: EventId,
    /// What kind of thing changed (`batch`, `file_upload`).
    pub aggregate_type: String,
    /// Which one changed.
    pub aggregate_id: String,
    /// The event type, used for routing and as a metrics label.
    pub event_type: String,
    /// The destination topic; `None` lets the store's event type mapper choose it.
    pub topic: Option<String>,
    /// The Kafka key; `None` means the aggregate id. Events with the same key keep their order.
    pub key: Option<String>,
    /// The exact bytes sent as the Kafka value.
    pub payload: Vec<u8>,
    /// Extra Kafka headers, `content-type` and `traceparent` among them.
    pub headers: BTreeMap<String, String>,
}

impl NewOutboxEvent {
    /// An event with raw payload bytes and no headers.
    pub fn new(
        aggregate_type: impl Into<String>,
        aggregate_id: impl Into<String>,
        event_type: impl Into<String>,
        payload: impl Into<Vec<u8>>,
    ) -> Self {
        Self {
            event_id: EventId::new(),
            aggregate_type: aggregate_type.into(),
            aggregate_id: aggregate_id.into(),
            event_type: event_type.into(),
            topic: None,
            key: None,
            payload: payload.into(),
            headers: BTreeMap::new(),
        }
    }

    /// An event whose payload is `value` serialised as JSON, with `content-type:
    /// application/json`.
    pub fn json<T: Serialize + ?Sized>(
        aggregate_type: impl Into<String>,
        aggregate_id: impl Into<String>,
        event_type: impl Into<String>,
        value: &T,
    ) -> Result<Self, OutboxError> {
        let payload = serde_json::to_vec(value)?;
        Ok(Self::new(aggregate_type, aggregate_id, event_type, payload)
            .with_header(CONTENT_TYPE_HEADER, JSON_CONTENT_TYPE))
    }

    /// Sets the event id (for example the id of an envelope already built).
    pub fn with_event_id(mut self, event_id: EventId) -> Self {
        self.event_id = event_id;
        self
    }

    /// Sets the destination topic.
    pub fn with_topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = Some(topic.into());
        self
    }

    /// Sets the Kafka key (the ordering unit); the default is the aggregate id.
    pub fn with_key(mut self, key: impl Into<String>) -> Self {
        self.key = Some(key.into());
        self
    }

    /// Adds an extra Kafka header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Adds the W3C `traceparent` header when one is given.
    pub fn with_traceparent(self, traceparent: Option<impl Into<String>>) -> Self {
        match traceparent {
            Some(tp) => self.with_header(TRACEPARENT_HEADER, tp),
            None => self,
        }
    }

    /// The Kafka key this event will be sent with.
    pub fn key(&self) -> &str {
        self.key.as_deref().unwrap_or(&self.aggregate_id)
    }

    /// Checks the event can be stored and sent: required fields are non-empty, the topic (when
    /// set) is a legal Kafka topic name, and extra headers neither are empty nor use a name the
    /// publisher fills itself.
    pub fn validate(&self) -> Result<(), OutboxError> {
        let required = [
            ("aggregate_type", &self.aggregate_type),
            ("aggregate_id", &self.aggregate_id),
            ("event_type", &self.event_type),
        ];
        for (field, value) in required {
            if value.trim().is_empty() {
                return Err(OutboxError::InvalidEvent(format!("{field} is empty")));
            }
        }
        if let Some(topic) = &self.topic {
            validate_topic(topic)?;
        }
        if self.key.as_deref().is_some_and(str::is_empty) {
            return Err(OutboxError::InvalidEvent(
                "key is empty; leave it unset to use the aggregate id".into(),
            ));
        }
        for name in self.headers.keys() {
            if name.is_empty() {
                return Err(OutboxError::InvalidEvent("a header name is empty".into()));
            }
            if RESERVED_HEADERS.contains(&name.as_str()) {
                return Err(OutboxError::InvalidEvent(format!(
                    "header `{name}` is reserved: the relay sets it from the event's own fields"
                )));
            }
        }
        Ok(())
    }
}

/// Checks a Kafka topic name: 1 to 249 characters of `[a-zA-Z0-9._-]`, not `.` or `..`.
pub fn validate_topic(topic: &str) -> Result<(), OutboxError> {
    let legal = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    if legal {
        Ok(())
    } else {
        Err(OutboxError::InvalidEvent(format!(
            "`{topic}` is not a legal Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)"
        )))
    }
}

/// An event as stored in the outbox and read back by the relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxEvent {
    /// The row's id: the relay's order.
    pub id: i64,
    /// The event's id.
    pub event_id: EventId,
    /// What kind of thing changed.
    pub aggregate_type: String,
    /// Which one changed.
    pub aggregate_id: String,
    /// The event type.
    pub event_type: String,
    /// The destination topic.
    pub topic: String,
    /// The Kafka key.
    pub key: String,
    /// The Kafka value.
    pub payload: Vec<u8>,
    /// Extra Kafka headers.
    pub headers: Vec<(String, String)>,
    /// When the event was written.
    pub created_at: DateTime<Utc>,
    /// Failed permanent attempts so far.
    pub attempts: i32,
    /// Set when the stored row cannot become a Kafka message (for example malformed headers
    /// written by hand); the relay treats it as a permanent failure and, in the end, a dead
    /// letter, instead of failing the whole batch.
    pub defect: Option<String>,
}

impl OutboxEvent {
    /// How many bytes the message takes on the wire, roughly: key, value and headers.
    pub fn approximate_size(&self) -> usize {
        let headers: usize = self.headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        let own = self.event_id.to_string().len()
            + self.event_type.len()
            + self.aggregate_type.len()
            + self.aggregate_id.len()
            + 64;
        self.key.len() + self.payload.len() + headers + own
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> NewOutboxEvent {
        NewOutboxEvent::new("batch", "b1", "BatchFileAddedV1", b"{}".to_vec())
    }

    #[test]
    fn event_ids_are_v7_and_sort_by_creation() {
        let a = EventId::new();
        let b = EventId::new();
        assert_eq!(a.as_uuid().get_version_num(), 7);
        assert!(a < b);
        assert_eq!(a.to_string().parse::<EventId>().unwrap(), a);
    }

    #[test]
    fn key_defaults_to_the_aggregate_id() {
        assert_eq!(event().key(), "b1");
        assert_eq!(event().with_key("k").key(), "k");
    }

    #[test]
    fn json_events_carry_their_content_type() {
        let e = NewOutboxEvent::json("a", "1", "T", &serde_json::json!({"x": 1})).unwrap();
        assert_eq!(e.payload, br#"{"x":1}"#);
        assert_eq!(e.headers[CONTENT_TYPE_HEADER], JSON_CONTENT_TYPE);
    }

    #[test]
    fn traceparent_is_added_only_when_present() {
        let with = event().with_traceparent(Some("00-abc-def-01"));
        assert_eq!(with.headers[TRACEPARENT_HEADER], "00-abc-def-01");
        let without = event().with_traceparent(None::<String>);
        assert!(!without.headers.contains_key(TRACEPARENT_HEADER));
    }

    #[test]
    fn validation_rejects_what_cannot_be_stored_or_sent() {
        assert!(event().validate().is_ok());
        let cases = [
            NewOutboxEvent::new("", "b1", "T", vec![]),
            NewOutboxEvent::new("a", " ", "T", vec![]),
            NewOutboxEvent::new("a", "b1", "", vec![]),
            event().with_topic("bad topic"),
            event().with_topic(""),
            event().with_topic(".."),
            event().with_topic("x".repeat(250)),
            event().with_key(""),
            event().with_header("", "v"),
            event().with_header("event_id", "forged"),
        ];
        for case in cases {
            assert!(
                matches!(case.validate(), Err(OutboxError::InvalidEvent(_))),
                "{case:?} should be rejected"
            );
        }
        assert!(
            event()
                .with_topic("huleedu.file.batch.file.added.v1")
                .validate()
                .is_ok()
        );
    }

    #[test]
    fn approximate_size_counts_key_value_and_headers() {
        let e = OutboxEvent {
            id: 1,
            event_id: EventId::new(),
            aggregate_type: "a".into(),
            aggregate_id: "b".into(),
            event_type: "c".into(),
            topic: "t".into(),
            key: "k".repeat(10),
            payload: vec![0; 1000],
            headers: vec![("h".into(), "v".repeat(20))],
            created_at: Utc::now(),
            attempts: 0,
            defect: None,
        };
        let size = e.approximate_size();
        assert!((1031..1200).contains(&size), "{size}");
    }
}
