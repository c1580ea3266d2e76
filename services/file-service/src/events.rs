//! The four events of the File Service contract, and the writer that adds them to the outbox
//! inside the caller's transaction.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox::OutboxTransaction;
use outbox_core::{EventEnvelope, EventId, NewOutboxEvent, OutboxError};
use serde::{Deserialize, Serialize};
use shaku::{Component, Interface, Module, ModuleBuildContext};
use uuid::Uuid;

/// The `source_service` of every envelope.
pub const SOURCE_SERVICE: &str = "file-service";

/// Topic of [`EssayContentProvisionedV1`] (also its envelope `event_type`).
pub const ESSAY_CONTENT_PROVISIONED_TOPIC: &str = "huleedu.file.essay.content.provisioned.v1";
/// Topic of [`EssayValidationFailedV1`].
pub const ESSAY_VALIDATION_FAILED_TOPIC: &str = "huleedu.file.essay.validation.failed.v1";
/// Topic of [`BatchFileAddedV1`].
pub const BATCH_FILE_ADDED_TOPIC: &str = "huleedu.file.batch.file.added.v1";
/// Topic of [`BatchFileRemovedV1`].
pub const BATCH_FILE_REMOVED_TOPIC: &str = "huleedu.file.batch.file.removed.v1";

/// Every topic the service writes to.
pub const TOPICS: [&str; 4] = [
    ESSAY_CONTENT_PROVISIONED_TOPIC,
    ESSAY_VALIDATION_FAILED_TOPIC,
    BATCH_FILE_ADDED_TOPIC,
    BATCH_FILE_REMOVED_TOPIC,
];

/// A file was added to a batch (key: the batch id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchFileAddedV1 {
    /// Always `batch.file.added`.
    pub event: String,
    /// The batch.
    pub batch_id: String,
    /// The upload.
    pub file_upload_id: Uuid,
    /// The original file name.
    pub filename: String,
    /// The uploader.
    pub user_id: String,
    /// The request's correlation id.
    pub correlation_id: Uuid,
    /// When the file was added.
    pub timestamp: DateTime<Utc>,
}

/// A file was removed from a batch (key: the batch id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchFileRemovedV1 {
    /// Always `batch.file.removed`.
    pub event: String,
    /// The batch.
    pub batch_id: String,
    /// The upload.
    pub file_upload_id: Uuid,
    /// The file's real name.
    pub filename: String,
    /// Who removed it.
    pub user_id: String,
    /// The request's correlation id.
    pub correlation_id: Uuid,
    /// When it was removed.
    pub timestamp: DateTime<Utc>,
}

/// An essay's text was extracted, validated and stored (key: the upload id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EssayContentProvisionedV1 {
    /// Always `essay.content.provisioned`.
    pub event: String,
    /// The batch id.
    pub entity_id: String,
    /// The upload.
    pub file_upload_id: Uuid,
    /// The original file name.
    pub original_file_name: String,
    /// Where the raw bytes are stored.
    pub raw_file_storage_id: Uuid,
    /// Where the extracted text is stored.
    pub text_storage_id: Uuid,
    /// Size of the raw bytes.
    pub file_size_bytes: i64,
    /// Hex MD5 of the raw bytes.
    pub content_md5_hash: String,
    /// The upload request's correlation id.
    pub correlation_id: Uuid,
    /// When processing finished.
    pub timestamp: DateTime<Utc>,
}

/// Why an essay was refused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationErrorDetail {
    /// The same code as `validation_error_code`.
    pub error_code: String,
    /// What was wrong, for people.
    pub message: String,
    /// The upload request's correlation id.
    pub correlation_id: Uuid,
    /// When it was found.
    pub timestamp: DateTime<Utc>,
    /// Always `file-service`.
    pub service: String,
    /// The step that failed (`extract_text`, `validate_content`, `store_text`, `load_raw_file`).
    pub operation: String,
    /// Machine-readable particulars (for example `{"length": 12, "min_length": 50}`).
    pub details: serde_json::Value,
}

/// An essay could not be provisioned (key: the upload id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EssayValidationFailedV1 {
    /// Always `essay.validation.failed`.
    pub event: String,
    /// The batch id.
    pub entity_id: String,
    /// The upload.
    pub file_upload_id: Uuid,
    /// The original file name.
    pub original_file_name: String,
    /// Where the raw bytes are stored.
    pub raw_file_storage_id: Uuid,
    /// One of the contract's codes (`EMPTY_CONTENT`, `CONTENT_TOO_SHORT`, ...).
    pub validation_error_code: String,
    /// The particulars.
    pub validation_error_detail: ValidationErrorDetail,
    /// Size of the raw bytes.
    pub file_size_bytes: i64,
    /// The upload request's correlation id.
    pub correlation_id: Uuid,
    /// When processing finished.
    pub timestamp: DateTime<Utc>,
}

/// What the contract says about one of its events, beside the payload: where it goes, what it
/// is about, how it is keyed, and which correlation id and time its envelope carries.
pub trait ContractEvent: Serialize {
    /// The topic, without the prefix (also the envelope's `event_type`).
    const TOPIC: &'static str;
    /// The outbox row's `aggregate_type`.
    const AGGREGATE_TYPE: &'static str;
    /// The outbox row's `aggregate_id`.
    fn aggregate_id(&self) -> String;
    /// The Kafka key: the aggregate id, so that one aggregate's events stay in order.
    fn key(&self) -> String {
        self.aggregate_id()
    }
    /// The envelope's `correlation_id` (the payload's own).
    fn correlation_id(&self) -> Uuid;
    /// The envelope's `event_timestamp` (the payload's own).
    fn timestamp(&self) -> DateTime<Utc>;
}

/// Builds the outbox event for a payload: the envelope (with `event_type` the topic name,
/// `source_service` `file-service`, the payload's correlation id and timestamp, and the
/// traceparent in its metadata) as the value, the contract's key and aggregate, and the topic
/// with `topic_prefix` in front.
pub fn outbox_event<E: ContractEvent>(
    payload: &E,
    traceparent: Option<String>,
    topic_prefix: &str,
) -> Result<NewOutboxEvent, OutboxError> {
    let envelope = EventEnvelope::new(E::TOPIC, SOURCE_SERVICE, payload)
        .with_correlation_id(payload.correlation_id())
        .with_timestamp(payload.timestamp())
        .with_traceparent(traceparent);
    Ok(envelope
        .to_outbox_event(E::AGGREGATE_TYPE, payload.aggregate_id())?
        .with_key(payload.key())
        .with_topic(format!("{topic_prefix}{}", E::TOPIC)))
}

/// The contract table, once: for each payload its topic, its aggregate type, and the field that
/// is its aggregate id (and so its key). Implements [`ContractEvent`] for each payload, and
/// gathers them in [`FileEvent`], the one type [`FileEventWriter::add`] takes.
// A macro, because by hand the impls and conversions are the same dozen lines four times over,
// differing only in the three facts each line below states.
macro_rules! contract_events {
    ($($payload:ident: $topic:ident, $aggregate_type:literal, $id:ident;)+) => {
        $(
            impl ContractEvent for $payload {
                const TOPIC: &'static str = $topic;
                const AGGREGATE_TYPE: &'static str = $aggregate_type;
                fn aggregate_id(&self) -> String {
                    self.$id.to_string()
                }
                fn correlation_id(&self) -> Uuid {
                    self.correlation_id
                }
                fn timestamp(&self) -> DateTime<Utc> {
                    self.timestamp
                }
            }

            impl From<$payload> for FileEvent {
                fn from(payload: $payload) -> Self {
                    Self::$payload(payload)
                }
            }
        )+

        /// One of the contract's events, as [`FileEventWriter::add`] takes it (every payload
        /// converts into it with `into()`).
        #[derive(Debug, Clone, PartialEq)]
        pub enum FileEvent {
            $(
                #[doc = concat!("[`", stringify!($payload), "`].")]
                $payload($payload),
            )+
        }

        impl FileEvent {
            /// The outbox event for the payload (see [`outbox_event`]).
            pub fn to_outbox_event(
                &self,
                traceparent: Option<String>,
                topic_prefix: &str,
            ) -> Result<NewOutboxEvent, OutboxError> {
                match self {
                    $(Self::$payload(payload) => outbox_event(payload, traceparent, topic_prefix),)+
                }
            }
        }
    };
}

contract_events! {
    EssayContentProvisionedV1: ESSAY_CONTENT_PROVISIONED_TOPIC, "file_upload", file_upload_id;
    EssayValidationFailedV1: ESSAY_VALIDATION_FAILED_TOPIC, "file_upload", file_upload_id;
    BatchFileAddedV1: BATCH_FILE_ADDED_TOPIC, "batch", batch_id;
    BatchFileRemovedV1: BATCH_FILE_REMOVED_TOPIC, "batch", batch_id;
}

/// Writes the service's events to the outbox on the caller's transaction, so an event exists if
/// and only if the caller's business change commits; nothing goes to Kafka here (the relay
/// sends it after the commit).
#[async_trait]
pub trait FileEventWriter: Interface {
    /// Writes `event` on `txn`, with `traceparent` in its envelope and headers. Refuses, writing
    /// nothing, an event over the size limit (see [`check_event_size`]).
    async fn add(
        &self,
        txn: &OutboxTransaction,
        event: FileEvent,
        traceparent: Option<String>,
    ) -> Result<EventId, OutboxError>;
}

/// [`FileEventWriter`] adding to the outbox transaction it is given.
pub struct OutboxFileEventWriter {
    topic_prefix: String,
    max_event_bytes: usize,
}

/// The largest event written by default: under Kafka's default `message.max.bytes`
/// (1,048,588), with room for the record's overhead.
pub const DEFAULT_MAX_EVENT_BYTES: usize = 1_000_000;

/// Refuses an event the broker would refuse for its size: value, key and headers together over
/// `max_bytes`. The error names the topic, the size and the limit; nothing is written.
pub fn check_event_size(event: &NewOutboxEvent, max_bytes: usize) -> Result<(), OutboxError> {
    let size = event.payload.len()
        + event.key.as_ref().map_or(0, String::len)
        + event
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    if size > max_bytes {
        return Err(OutboxError::InvalidEvent(format!(
            "the {} event is {size} bytes, over the {max_bytes} byte limit \
             (FILE_SERVICE_MAX_EVENT_BYTES) that the broker would accept; it was not written",
            event.event_type
        )));
    }
    Ok(())
}

impl std::fmt::Debug for OutboxFileEventWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxFileEventWriter")
            .field("topic_prefix", &self.topic_prefix)
            .finish_non_exhaustive()
    }
}

impl OutboxFileEventWriter {
    /// A writer with `topic_prefix` before every topic.
    pub fn new(topic_prefix: impl Into<String>) -> Self {
        Self {
            topic_prefix: topic_prefix.into(),
            max_event_bytes: DEFAULT_MAX_EVENT_BYTES,
        }
    }

    /// Refuses events larger than `max_bytes` (see [`check_event_size`]).
    pub fn with_max_event_bytes(mut self, max_bytes: usize) -> Self {
        self.max_event_bytes = max_bytes;
        self
    }
}

/// Parameters of [`OutboxFileEventWriter`] in the service's module.
#[derive(Debug, Default)]
pub struct OutboxFileEventWriterParameters {
    /// Put before every topic name.
    pub topic_prefix: String,
    /// Largest event written; `0` means [`DEFAULT_MAX_EVENT_BYTES`].
    pub max_event_bytes: usize,
}

impl<M: Module> Component<M> for OutboxFileEventWriter {
    type Interface = dyn FileEventWriter;
    type Parameters = OutboxFileEventWriterParameters;

    fn build(_: &mut ModuleBuildContext<M>, params: Self::Parameters) -> Box<dyn FileEventWriter> {
        let max_event_bytes = match params.max_event_bytes {
            0 => DEFAULT_MAX_EVENT_BYTES,
            n => n,
        };
        Box::new(Self::new(params.topic_prefix).with_max_event_bytes(max_event_bytes))
    }
}

#[async_trait]
impl FileEventWriter for OutboxFileEventWriter {
    async fn add(
        &self,
        txn: &OutboxTransaction,
        event: FileEvent,
        traceparent: Option<String>,
    ) -> Result<EventId, OutboxError> {
        let event = event.to_outbox_event(traceparent, &self.topic_prefix)?;
        check_event_size(&event, self.max_event_bytes)?;
        Ok(txn.add(event).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    const TRACE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn envelope(event: &NewOutboxEvent) -> Value {
        serde_json::from_slice(&event.payload).unwrap()
    }

    fn now() -> DateTime<Utc> {
        "2026-11-27T10:00:00.123456Z".parse().unwrap()
    }

    fn check_envelope(event: &NewOutboxEvent, topic: &str, correlation: Uuid) -> Value {
        let value = envelope(event);
        assert_eq!(
            value["event_id"],
            event.event_id.to_string(),
            "the row's own id"
        );
        assert_eq!(value["event_type"], topic);
        assert_eq!(value["source_service"], "file-service");
        assert_eq!(value["correlation_id"], correlation.to_string());
        assert_eq!(value["schema_version"], 1);
        assert_eq!(value["event_timestamp"], "2026-11-27T10:00:00.123456Z");
        assert_eq!(value["metadata"]["traceparent"], TRACE);
        assert_eq!(value["data"]["correlation_id"], value["correlation_id"]);
        assert_eq!(event.headers["content-type"], "application/json");
        assert_eq!(event.headers["traceparent"], TRACE);
        assert_eq!(event.event_type, topic);
        value
    }

    #[test]
    fn batch_file_added_goes_to_its_topic_keyed_by_batch() {
        let correlation = Uuid::new_v4();
        let upload = Uuid::new_v4();
        let payload = BatchFileAddedV1 {
            event: "batch.file.added".into(),
            batch_id: "b-1".into(),
            file_upload_id: upload,
            filename: "essay.txt".into(),
            user_id: "u-1".into(),
            correlation_id: correlation,
            timestamp: now(),
        };
        let event = FileEvent::from(payload)
            .to_outbox_event(Some(TRACE.into()), "")
            .unwrap();
        assert_eq!(event.topic.as_deref(), Some(BATCH_FILE_ADDED_TOPIC));
        assert_eq!(event.key(), "b-1");
        assert_eq!(
            (event.aggregate_type.as_str(), event.aggregate_id.as_str()),
            ("batch", "b-1")
        );
        let value = check_envelope(&event, BATCH_FILE_ADDED_TOPIC, correlation);
        assert_eq!(value["data"]["event"], "batch.file.added");
        assert_eq!(value["data"]["file_upload_id"], upload.to_string());
        assert_eq!(value["data"]["filename"], "essay.txt");
        assert_eq!(value["data"]["user_id"], "u-1");
        assert_eq!(value["data"]["timestamp"], "2026-11-27T10:00:00.123456Z");
    }

    #[test]
    fn batch_file_removed_goes_to_its_topic_keyed_by_batch() {
        let correlation = Uuid::new_v4();
        let payload = BatchFileRemovedV1 {
            event: "batch.file.removed".into(),
            batch_id: "b-2".into(),
            file_upload_id: Uuid::new_v4(),
            filename: "real name.docx".into(),
            user_id: "u-1".into(),
            correlation_id: correlation,
            timestamp: now(),
        };
        let event = FileEvent::from(payload)
            .to_outbox_event(Some(TRACE.into()), "test.")
            .unwrap();
        assert_eq!(
            event.topic.as_deref(),
            Some("test.huleedu.file.batch.file.removed.v1")
        );
        assert_eq!(event.key(), "b-2");
        assert_eq!(event.aggregate_type, "batch");
        let value = check_envelope(&event, BATCH_FILE_REMOVED_TOPIC, correlation);
        assert_eq!(value["data"]["event"], "batch.file.removed");
        assert_eq!(value["data"]["filename"], "real name.docx");
    }

    #[test]
    fn essay_content_provisioned_is_keyed_by_upload() {
        let correlation = Uuid::new_v4();
        let upload = Uuid::new_v4();
        let payload = EssayContentProvisionedV1 {
            event: "essay.content.provisioned".into(),
            entity_id: "b-3".into(),
            file_upload_id: upload,
            original_file_name: "e.pdf".into(),
            raw_file_storage_id: Uuid::new_v4(),
            text_storage_id: Uuid::new_v4(),
            file_size_bytes: 1234,
            content_md5_hash: "d41d8cd98f00b204e9800998ecf8427e".into(),
            correlation_id: correlation,
            timestamp: now(),
        };
        let event = FileEvent::from(payload)
            .to_outbox_event(Some(TRACE.into()), "")
            .unwrap();
        assert_eq!(
            event.topic.as_deref(),
            Some(ESSAY_CONTENT_PROVISIONED_TOPIC)
        );
        assert_eq!(event.key(), upload.to_string());
        assert_eq!(event.aggregate_type, "file_upload");
        let value = check_envelope(&event, ESSAY_CONTENT_PROVISIONED_TOPIC, correlation);
        let data = &value["data"];
        for field in [
            "event",
            "entity_id",
            "file_upload_id",
            "original_file_name",
            "raw_file_storage_id",
            "text_storage_id",
            "file_size_bytes",
            "content_md5_hash",
            "correlation_id",
            "timestamp",
        ] {
            assert!(data.get(field).is_some(), "missing {field}");
        }
        assert_eq!(data["event"], "essay.content.provisioned");
        assert_eq!(data["entity_id"], "b-3");
        assert_eq!(data["file_size_bytes"], 1234);
    }

    #[test]
    fn essay_validation_failed_is_keyed_by_upload_and_carries_the_detail() {
        let correlation = Uuid::new_v4();
        let upload = Uuid::new_v4();
        let payload = EssayValidationFailedV1 {
            event: "essay.validation.failed".into(),
            entity_id: "b-4".into(),
            file_upload_id: upload,
            original_file_name: "short.txt".into(),
            raw_file_storage_id: Uuid::new_v4(),
            validation_error_code: "CONTENT_TOO_SHORT".into(),
            validation_error_detail: ValidationErrorDetail {
                error_code: "CONTENT_TOO_SHORT".into(),
                message: "12 characters; at least 50 are needed".into(),
                correlation_id: correlation,
                timestamp: now(),
                service: SOURCE_SERVICE.into(),
                operation: "validate_content".into(),
                details: serde_json::json!({"length": 12, "min_length": 50}),
            },
            file_size_bytes: 12,
            correlation_id: correlation,
            timestamp: now(),
        };
        let event = FileEvent::from(payload).to_outbox_event(None, "").unwrap();
        assert_eq!(event.topic.as_deref(), Some(ESSAY_VALIDATION_FAILED_TOPIC));
        assert_eq!(event.key(), upload.to_string());
        assert!(
            !event.headers.contains_key("traceparent"),
            "no span, no traceparent"
        );
        let value = envelope(&event);
        assert_eq!(value["event_type"], ESSAY_VALIDATION_FAILED_TOPIC);
        assert!(value["metadata"].get("traceparent").is_none());
        let detail = &value["data"]["validation_error_detail"];
        assert_eq!(value["data"]["validation_error_code"], "CONTENT_TOO_SHORT");
        assert_eq!(detail["error_code"], "CONTENT_TOO_SHORT");
        assert_eq!(detail["service"], "file-service");
        assert_eq!(detail["operation"], "validate_content");
        assert_eq!(detail["details"]["min_length"], 50);
        assert_eq!(detail["correlation_id"], correlation.to_string());
    }
}
