//! BOS's handler of `BatchContentProvisioningCompletedV1`, ported from
//! `batch_content_provisioning_completed_handler.py`, in one transaction with guarded
//! transitions:
//!
//! - `awaiting_content_validation` and no essays: `content_ingestion_failed`;
//! - GUEST (no stored `class_id`): `ready_for_pipeline_execution`, the batch's essays stored;
//! - REGULAR: `awaiting_student_validation`, the essays stored, and
//!   `BatchServiceStudentMatchingInitiateCommandDataV1` published.
//!
//! A batch in any other status is left alone (`stale`): a redelivered completion, even one with
//! a new `event_id`, cannot move a batch back or send the command twice.

use async_trait::async_trait;
use chrono::Utc;
use outbox::OutboxTransaction;
use outbox_core::{Handled, HandlerError, InboxHandler, InboxMessage};
use serde_json::json;

use crate::consumers::{correlation_of, execute, get, metadata_field, outbox_error, query_one};
use crate::db::batch_status;
use crate::events::{
    Incoming, MAX_ID_CHARS, ProvisioningCompleted, Route, STUDENT_MATCHING_COMMAND_TOPIC, bounded,
    outbox_event, parse, timestamp,
};
use crate::readiness::UNKNOWN_BATCH;
use crate::registration::MAX_ESSAY_ID_CHARS;

/// Outcome: the batch is no longer `awaiting_content_validation`.
pub const STALE: &str = "stale";
/// Most essays one completion event may carry.
pub const MAX_ESSAYS_PER_EVENT: usize = 100_000;

/// The provisioning-completed handler.
#[derive(Debug, Clone, Default)]
pub struct ProvisioningCompletedHandler {
    topic_prefix: String,
}

impl ProvisioningCompletedHandler {
    /// A handler that publishes under `topic_prefix`.
    pub fn new(topic_prefix: impl Into<String>) -> Self {
        Self {
            topic_prefix: topic_prefix.into(),
        }
    }
}

#[async_trait]
impl InboxHandler<OutboxTransaction> for ProvisioningCompletedHandler {
    async fn handle(
        &self,
        txn: &OutboxTransaction,
        message: &InboxMessage,
    ) -> Result<Handled, HandlerError> {
        let incoming: Incoming<ProvisioningCompleted> = parse(message)?;
        let data = incoming.data;
        bounded("batch_id", &data.batch_id, MAX_ID_CHARS)?;
        if data.essays_for_processing.len() > MAX_ESSAYS_PER_EVENT {
            return Err(HandlerError::permanent(format!(
                "more than {MAX_ESSAYS_PER_EVENT} essays_for_processing"
            )));
        }
        for essay in &data.essays_for_processing {
            bounded("essay_id", &essay.essay_id, MAX_ESSAY_ID_CHARS)?;
            bounded("text_storage_id", &essay.text_storage_id, MAX_ID_CHARS)?;
        }
        let correlation_id = correlation_of(incoming.correlation_id, message)?;

        // One guarded statement picks and applies the transition: nothing can move the batch
        // between a read and the write.
        let moved = query_one(
            txn,
            "UPDATE batches
             SET status = CASE WHEN $3 THEN $4
                               WHEN class_id IS NULL THEN $5
                               ELSE $6 END,
                 updated_at = now()
             WHERE id = $1 AND status = $2
             RETURNING status, class_id, processing_metadata::text AS metadata",
            vec![
                data.batch_id.clone().into(),
                batch_status::AWAITING_CONTENT_VALIDATION.into(),
                data.essays_for_processing.is_empty().into(),
                batch_status::CONTENT_INGESTION_FAILED.into(),
                batch_status::READY_FOR_PIPELINE_EXECUTION.into(),
                batch_status::AWAITING_STUDENT_VALIDATION.into(),
            ],
        )
        .await?;
        let Some(row) = moved else {
            let exists = query_one(
                txn,
                "SELECT 1 AS found FROM batches WHERE id = $1",
                vec![data.batch_id.clone().into()],
            )
            .await?;
            return Ok(Handled::outcome(if exists.is_some() {
                STALE
            } else {
                UNKNOWN_BATCH
            }));
        };
        let status: String = get(&row, "status")?;
        if status == batch_status::CONTENT_INGESTION_FAILED {
            tracing::warn!(batch_id = %data.batch_id, "content complete with no essay: content_ingestion_failed");
            return Ok(Handled::applied());
        }
        let essays = serde_json::to_string(&data.essays_for_processing)
            .map_err(|e| HandlerError::permanent(e.to_string()))?;
        execute(
            txn,
            "DELETE FROM batch_essays WHERE batch_id = $1",
            vec![data.batch_id.clone().into()],
        )
        .await?;
        execute(
            txn,
            "INSERT INTO batch_essays (batch_id, essay_id, content_reference)
             SELECT $1, e.essay_id,
                    json_build_object('text_storage_id', e.text_storage_id, 'type', 'text_content')
             FROM json_to_recordset($2::json) AS e(essay_id text, text_storage_id text)",
            vec![data.batch_id.clone().into(), essays.into()],
        )
        .await?;
        if status == batch_status::AWAITING_STUDENT_VALIDATION {
            let class_id: Option<String> = get(&row, "class_id")?;
            let metadata: Option<String> = get(&row, "metadata")?;
            let now = Utc::now();
            let essays_to_process: Vec<_> = data
                .essays_for_processing
                .iter()
                .map(|e| {
                    json!({
                        "essay_id": e.essay_id,
                        "text_storage_id": e.text_storage_id,
                        "spellcheck_metrics": null,
                    })
                })
                .collect();
            let command = outbox_event(
                Route {
                    topic: STUDENT_MATCHING_COMMAND_TOPIC,
                    prefix: &self.topic_prefix,
                    aggregate_type: "batch",
                    aggregate_id: &data.batch_id,
                },
                correlation_id,
                now,
                json!({
                    "event_name": "batch.student.matching.initiate.command",
                    "entity_id": data.batch_id,
                    "entity_type": "batch",
                    "parent_id": null,
                    "timestamp": timestamp(now),
                    "essays_to_process": essays_to_process,
                    "class_id": class_id,
                    "course_code": metadata_field(&metadata, "course_code"),
                }),
                Some(json!({
                    "user_id": metadata_field(&metadata, "user_id"),
                    "org_id": metadata_field(&metadata, "org_id"),
                })),
            )?;
            txn.add(command).await.map_err(outbox_error)?;
        }
        Ok(Handled::applied())
    }
}
