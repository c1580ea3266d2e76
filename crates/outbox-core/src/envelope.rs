//! A generic JSON event envelope.

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::TRACEPARENT_HEADER;
use crate::{EventId, NewOutboxEvent, OutboxError};

/// The JSON envelope most services send as the Kafka value: who sent what, when, in which
/// request, and the payload under `data`.
///
/// Build it once, when the business change happens, and store it with
/// [`to_outbox_event`](Self::to_outbox_event): the bytes in the outbox are then exactly the
/// bytes consumers see, with the same `event_id` on every re-send.
///
/// ```
/// use outbox_core::EventEnvelope;
/// use serde_json::json;
///
/// let envelope = EventEnvelope::new("huleedu.file.batch.file.added.v1", "file-service", json!({"batch_id": "b1"}))
///     .with_traceparent(Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()));
/// let event = envelope.to_outbox_event("batch", "b1")?;
/// assert_eq!(event.headers["traceparent"], "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
/// let value: serde_json::Value = serde_json::from_slice(&event.payload)?;
/// assert_eq!(value["event_id"], event.event_id.to_string());
/// assert_eq!(value["metadata"]["traceparent"], event.headers["traceparent"]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventEnvelope<T> {
    /// The event's id, the same as the outbox row's.
    pub event_id: EventId,
    /// The event type (for the File Service, the topic name).
    pub event_type: String,
    /// When the business change happened (RFC 3339, UTC).
    #[serde(with = "rfc3339")]
    pub event_timestamp: DateTime<Utc>,
    /// The service that produced the event.
    pub source_service: String,
    /// The request or workflow this event belongs to.
    pub correlation_id: Uuid,
    /// The envelope's schema version.
    pub schema_version: u32,
    /// Free-form metadata; `traceparent` when a trace was active.
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The event's own payload.
    pub data: T,
}

impl<T: Serialize> EventEnvelope<T> {
    /// An envelope with a new event id, the current time (to the microsecond, as serialised), a
    /// new correlation id and schema version 1.
    pub fn new(event_type: impl Into<String>, source_service: impl Into<String>, data: T) -> Self {
        Self {
            event_id: EventId::new(),
            event_type: event_type.into(),
            event_timestamp: Utc::now().trunc_subsecs(6),
            source_service: source_service.into(),
            correlation_id: Uuid::new_v4(),
            schema_version: 1,
            metadata: serde_json::Map::new(),
            data,
        }
    }

    /// Sets the correlation id.
    pub fn with_correlation_id(mut self, correlation_id: Uuid) -> Self {
        self.correlation_id = correlation_id;
        self
    }

    /// Sets the event timestamp.
    pub fn with_timestamp(mut self, timestamp: DateTime<Utc>) -> Self {
        self.event_timestamp = timestamp;
        self
    }

    /// Sets the schema version.
    pub fn with_schema_version(mut self, version: u32) -> Self {
        self.schema_version = version;
        self
    }

    /// Records the W3C `traceparent` in the metadata, when there is one.
    pub fn with_traceparent(mut self, traceparent: Option<String>) -> Self {
        if let Some(tp) = traceparent {
            self.metadata
                .insert(TRACEPARENT_HEADER.to_owned(), serde_json::Value::String(tp));
        }
        self
    }

    /// The `traceparent` recorded in the metadata.
    pub fn traceparent(&self) -> Option<&str> {
        self.metadata.get(TRACEPARENT_HEADER)?.as_str()
    }

    /// Serialises the envelope into an outbox event with the same event id and event type, the
    /// given aggregate, `content-type: application/json` and the `traceparent` header when the
    /// metadata has one. The key defaults to the aggregate id; the topic to the mapper's choice.
    pub fn to_outbox_event(
        &self,
        aggregate_type: impl Into<String>,
        aggregate_id: impl Into<String>,
    ) -> Result<NewOutboxEvent, OutboxError> {
        let traceparent = self.traceparent().map(str::to_owned);
        Ok(
            NewOutboxEvent::json(aggregate_type, aggregate_id, self.event_type.clone(), self)?
                .with_event_id(self.event_id)
                .with_traceparent(traceparent),
        )
    }
}

/// RFC 3339 timestamps with microseconds and a `Z` suffix.
mod rfc3339 {
    use super::*;
    use serde::{Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&t.to_rfc3339_opts(SecondsFormat::Micros, true))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
        let s = String::deserialize(d)?;
        DateTime::parse_from_rfc3339(&s)
            .map(|t| t.with_timezone(&Utc))
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn serialises_every_envelope_field() {
        let envelope = EventEnvelope::new("t.v1", "svc", json!({"a": 1}))
            .with_schema_version(2)
            .with_traceparent(Some("00-1-2-01".into()));
        let value = serde_json::to_value(&envelope).unwrap();
        for field in [
            "event_id",
            "event_type",
            "event_timestamp",
            "source_service",
            "correlation_id",
            "schema_version",
            "metadata",
            "data",
        ] {
            assert!(value.get(field).is_some(), "missing {field}");
        }
        assert_eq!(value["schema_version"], 2);
        assert!(value["event_timestamp"].as_str().unwrap().ends_with('Z'));
        let back: EventEnvelope<serde_json::Value> = serde_json::from_value(value).unwrap();
        assert_eq!(back, envelope.clone());
    }

    #[test]
    fn outbox_event_keeps_the_envelope_identity() {
        let correlation = Uuid::new_v4();
        let envelope =
            EventEnvelope::new("t.v1", "svc", json!({})).with_correlation_id(correlation);
        let event = envelope.to_outbox_event("batch", "b1").unwrap();
        assert_eq!(event.event_id, envelope.event_id);
        assert_eq!(event.event_type, "t.v1");
        assert_eq!(event.key(), "b1");
        assert!(!event.headers.contains_key(TRACEPARENT_HEADER));
        let value: serde_json::Value = serde_json::from_slice(&event.payload).unwrap();
        assert_eq!(value["correlation_id"], correlation.to_string());
    }
}
