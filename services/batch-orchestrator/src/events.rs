//! The wire events: topics, the envelope, the payloads the service publishes, and the lenient
//! parsing of the ones it consumes.
//!
//! Published envelopes carry `event_id` = the outbox row's id (also the `event_id` header),
//! `event_type` = the unprefixed topic name and `source_service` = `batch-service`. Consumed
//! envelopes are read leniently, as the Python producers write them: unknown fields are ignored,
//! `metadata` may be null or missing, storage and upload ids are plain strings.

use chrono::{DateTime, SecondsFormat, SubsecRound, Utc};
use outbox::NewOutboxEvent;
use outbox_core::{EventId, HandlerError, InboxMessage, OutboxError};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The `source_service` of every envelope the service publishes (`BOS/config.py:32`).
pub const SOURCE_SERVICE: &str = "batch-service";

/// Published at registration (key: the batch id).
pub const BATCH_ESSAYS_REGISTERED_TOPIC: &str = "huleedu.batch.essays.registered.v1";
/// Published for a REGULAR batch whose content is complete (key: the batch id).
pub const STUDENT_MATCHING_COMMAND_TOPIC: &str =
    "huleedu.batch.student.matching.initiate.command.v1";
/// Published by the readiness module when content takes a slot (key: the essay id).
pub const ESSAY_SLOT_ASSIGNED_TOPIC: &str = "huleedu.els.essay.slot.assigned.v1";
/// Published by the readiness module when content finds no free slot (key: the batch id).
pub const EXCESS_CONTENT_PROVISIONED_TOPIC: &str = "huleedu.els.excess.content.provisioned.v1";
/// Published by the readiness module when a batch's content is complete, and consumed by the
/// provisioning-completed handler (key: the batch id).
pub const CONTENT_PROVISIONING_COMPLETED_TOPIC: &str =
    "huleedu.batch.content.provisioning.completed.v1";
/// The File Service's event for a stored essay text, consumed by the readiness module.
pub const ESSAY_CONTENT_PROVISIONED_TOPIC: &str = "huleedu.file.essay.content.provisioned.v1";
/// The File Service's event for a refused file, consumed by the readiness module.
pub const ESSAY_VALIDATION_FAILED_TOPIC: &str = "huleedu.file.essay.validation.failed.v1";

/// Every topic the service publishes to (unprefixed).
pub const PUBLISHED_TOPICS: [&str; 5] = [
    BATCH_ESSAYS_REGISTERED_TOPIC,
    STUDENT_MATCHING_COMMAND_TOPIC,
    ESSAY_SLOT_ASSIGNED_TOPIC,
    EXCESS_CONTENT_PROVISIONED_TOPIC,
    CONTENT_PROVISIONING_COMPLETED_TOPIC,
];

/// Every topic the service may consume (unprefixed): the File Service's two essay events
/// (readiness `internal` only) and the completion event.
pub const CONSUMED_TOPICS: [&str; 3] = [
    ESSAY_CONTENT_PROVISIONED_TOPIC,
    ESSAY_VALIDATION_FAILED_TOPIC,
    CONTENT_PROVISIONING_COMPLETED_TOPIC,
];

/// Longest id or storage reference accepted from a consumed event (the File Service sends
/// 36-character UUIDs; the bound keeps a 5,000-essay batch's events under 1 MB).
pub const MAX_ID_CHARS: usize = 64;
/// Longest file name accepted from a consumed event.
pub const MAX_FILE_NAME_CHARS: usize = 1024;

/// RFC 3339 in UTC with microseconds, as the envelopes write timestamps.
pub fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// The envelope the service publishes (`CC/events/envelope.py`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Envelope<T> {
    /// The outbox row's id.
    pub event_id: Uuid,
    /// The unprefixed topic name.
    pub event_type: String,
    /// When the business change happened.
    pub event_timestamp: String,
    /// Always `batch-service`.
    pub source_service: String,
    /// Always 1.
    pub schema_version: u32,
    /// The request or workflow the event belongs to.
    pub correlation_id: Uuid,
    /// Always null.
    pub data_schema_uri: Option<String>,
    /// The payload.
    pub data: T,
    /// Null, or an object (the student-matching command's `user_id` and `org_id`).
    pub metadata: Option<serde_json::Value>,
}

/// Where an event goes and what it describes.
#[derive(Debug, Clone, Copy)]
pub struct Route<'a> {
    /// The unprefixed topic (also the envelope's `event_type`).
    pub topic: &'a str,
    /// The topic prefix of this deployment.
    pub prefix: &'a str,
    /// `batch` or `essay`.
    pub aggregate_type: &'a str,
    /// The batch or essay id; also the Kafka key.
    pub aggregate_id: &'a str,
}

/// Builds the outbox event of `data`: a fresh id shared by the row, the header and the
/// envelope; topic `{prefix}{topic}`; key = the aggregate id.
pub fn outbox_event<T: Serialize>(
    route: Route<'_>,
    correlation_id: Uuid,
    at: DateTime<Utc>,
    data: T,
    metadata: Option<serde_json::Value>,
) -> Result<NewOutboxEvent, OutboxError> {
    let event_id = EventId::new();
    let envelope = Envelope {
        event_id: event_id.as_uuid(),
        event_type: route.topic.to_owned(),
        event_timestamp: timestamp(at.trunc_subsecs(6)),
        source_service: SOURCE_SERVICE.to_owned(),
        schema_version: 1,
        correlation_id,
        data_schema_uri: None,
        data,
        metadata,
    };
    Ok(NewOutboxEvent::json(
        route.aggregate_type,
        route.aggregate_id,
        route.topic,
        &envelope,
    )?
    .with_event_id(event_id)
    .with_topic(format!("{}{}", route.prefix, route.topic))
    .with_key(route.aggregate_id))
}

/// A consumed envelope: `correlation_id` and `data` are read, everything else ignored.
#[derive(Debug, Clone, Deserialize)]
pub struct Incoming<T> {
    /// The envelope's correlation id, when it has a valid one.
    #[serde(default, deserialize_with = "lenient_uuid")]
    pub correlation_id: Option<Uuid>,
    /// The payload.
    pub data: T,
}

fn lenient_uuid<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Uuid>, D::Error> {
    let value = Option::<serde_json::Value>::deserialize(d)?;
    Ok(value
        .as_ref()
        .and_then(serde_json::Value::as_str)
        .and_then(|s| Uuid::parse_str(s).ok()))
}

/// Parses a consumed message's envelope. Anything unparsable is permanent: no retry fixes it.
pub fn parse<T: DeserializeOwned>(message: &InboxMessage) -> Result<Incoming<T>, HandlerError> {
    message.json()
}

/// Fails permanently when `value` is empty or longer than `max` characters.
pub fn bounded(field: &str, value: &str, max: usize) -> Result<(), HandlerError> {
    if value.trim().is_empty() {
        return Err(HandlerError::permanent(format!("{field} is empty")));
    }
    if value.chars().count() > max {
        return Err(HandlerError::permanent(format!(
            "{field} is longer than {max} characters"
        )));
    }
    Ok(())
}

/// A string or a number, kept as a string (Python producers are not consistent).
fn id_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::String(s) => Ok(s),
        serde_json::Value::Number(n) => Ok(n.to_string()),
        other => Err(serde::de::Error::custom(format!(
            "expected a string, got {other}"
        ))),
    }
}

fn opt_id_string<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Option::<serde_json::Value>::deserialize(d)? {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(serde_json::Value::String(s)) => Ok(Some(s)),
        Some(serde_json::Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(serde::de::Error::custom(format!(
            "expected a string, got {other}"
        ))),
    }
}

/// `EssayContentProvisionedV1`, the fields the readiness module uses.
#[derive(Debug, Clone, Deserialize)]
pub struct ContentProvisioned {
    /// The batch id.
    #[serde(deserialize_with = "id_string")]
    pub entity_id: String,
    /// The upload.
    #[serde(deserialize_with = "id_string")]
    pub file_upload_id: String,
    /// Where the text is stored.
    #[serde(deserialize_with = "id_string")]
    pub text_storage_id: String,
    /// The file's name.
    pub original_file_name: String,
    /// The raw file's size.
    #[serde(default)]
    pub file_size_bytes: Option<i64>,
    /// MD5 of the raw bytes.
    #[serde(default)]
    pub content_md5_hash: Option<String>,
}

/// `EssayValidationFailedV1`, the fields the readiness module uses.
#[derive(Debug, Clone, Deserialize)]
pub struct ValidationFailed {
    /// The batch id.
    #[serde(deserialize_with = "id_string")]
    pub entity_id: String,
    /// The upload.
    #[serde(deserialize_with = "id_string")]
    pub file_upload_id: String,
    /// The file's name.
    pub original_file_name: String,
    /// Why it failed.
    pub validation_error_code: String,
    /// The raw file's size.
    #[serde(default)]
    pub file_size_bytes: Option<i64>,
    /// Where the raw bytes are (`"STORAGE_FAILED"` from the Python service).
    #[serde(default, deserialize_with = "opt_id_string")]
    pub raw_file_storage_id: Option<String>,
}

/// One essay of a batch whose content is complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EssayRef {
    /// The essay (slot) id.
    #[serde(deserialize_with = "id_string")]
    pub essay_id: String,
    /// Where its text is stored.
    #[serde(deserialize_with = "id_string")]
    pub text_storage_id: String,
}

/// `BatchContentProvisioningCompletedV1`, the fields the provisioning-completed handler uses.
#[derive(Debug, Clone, Deserialize)]
pub struct ProvisioningCompleted {
    /// The batch id.
    #[serde(deserialize_with = "id_string")]
    pub batch_id: String,
    /// The essays whose content arrived.
    #[serde(default)]
    pub essays_for_processing: Vec<EssayRef>,
}

/// `BatchContentProvisioningCompletedV1` as the readiness module publishes it.
#[derive(Debug, Clone, Serialize)]
pub struct ProvisioningCompletedV1 {
    /// `batch.content.provisioning.completed`.
    pub event: &'static str,
    /// The batch.
    pub batch_id: String,
    /// How many slots got content.
    pub provisioned_count: i64,
    /// How many essays the registration expected.
    pub expected_count: i64,
    /// The batch's course.
    pub course_code: Option<String>,
    /// The batch's owner.
    pub user_id: Option<String>,
    /// The assigned slots, in `essay_id` order.
    pub essays_for_processing: Vec<EssayRef>,
    /// The registration's correlation id.
    pub correlation_id: Uuid,
    /// When the content became complete.
    pub timestamp: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_envelope_has_every_contract_field() {
        let event = outbox_event(
            Route {
                topic: BATCH_ESSAYS_REGISTERED_TOPIC,
                prefix: "t.",
                aggregate_type: "batch",
                aggregate_id: "b1",
            },
            Uuid::nil(),
            Utc::now(),
            serde_json::json!({"x": 1}),
            None,
        )
        .unwrap();
        assert_eq!(
            event.topic.as_deref(),
            Some("t.huleedu.batch.essays.registered.v1")
        );
        assert_eq!(event.key(), "b1");
        assert_eq!(event.event_type, BATCH_ESSAYS_REGISTERED_TOPIC);
        let value: serde_json::Value = serde_json::from_slice(&event.payload).unwrap();
        assert_eq!(value["event_id"], event.event_id.to_string());
        assert_eq!(value["event_type"], BATCH_ESSAYS_REGISTERED_TOPIC);
        assert_eq!(value["source_service"], "batch-service");
        assert_eq!(value["schema_version"], 1);
        assert_eq!(value["data_schema_uri"], serde_json::Value::Null);
        assert_eq!(value["metadata"], serde_json::Value::Null);
        assert_eq!(value["data"]["x"], 1);
        assert!(value["event_timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn consumed_envelopes_are_read_leniently() {
        let message = InboxMessage {
            payload: Some(
                br#"{"event_id":"e","correlation_id":"not-a-uuid","unknown":1,
                     "data":{"entity_id":"b","file_upload_id":7,"text_storage_id":"STORAGE_FAILED",
                             "original_file_name":"a.txt","extra":true}}"#
                    .to_vec(),
            ),
            ..InboxMessage::default()
        };
        let parsed: Incoming<ContentProvisioned> = parse(&message).unwrap();
        assert_eq!(parsed.correlation_id, None);
        assert_eq!(parsed.data.file_upload_id, "7");
        assert_eq!(parsed.data.text_storage_id, "STORAGE_FAILED");
        assert_eq!(parsed.data.file_size_bytes, None);

        let bad = InboxMessage {
            payload: Some(br#"{"data":{"entity_id":"b"}}"#.to_vec()),
            ..InboxMessage::default()
        };
        let err = parse::<ContentProvisioned>(&bad).unwrap_err();
        assert!(!err.is_transient());
    }
}
