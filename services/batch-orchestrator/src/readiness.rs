//! The readiness module: the role the Essay Lifecycle Service plays for batch content, named as
//! such so a real ELS can take it over (`BATCH_ORCHESTRATOR_SERVICE_READINESS=els`).
//!
//! It consumes the File Service's `EssayContentProvisionedV1` and `EssayValidationFailedV1`.
//! Content takes the batch's lowest free slot (`EssaySlotAssignedV1`), or finds none
//! (`ExcessContentProvisionedV1`, slots unchanged); a failed file uses up the lowest free slot,
//! or, with none free, is only recorded (`excess_failure`). When no slot is free any more, the
//! same transaction marks the batch's content complete and publishes
//! `BatchContentProvisioningCompletedV1` with the assigned slots, once per batch.
//!
//! Every batch's slot changes are serialised by locking its `batches` row (`FOR UPDATE`) first,
//! so two messages of one batch on two partitions cannot take the same slot or both complete it.

use async_trait::async_trait;
use chrono::Utc;
use outbox::OutboxTransaction;
use outbox_core::{Handled, HandlerError, InboxHandler, InboxMessage};
use serde_json::json;

use crate::consumers::{
    correlation_of, execute, get, metadata_field, outbox_error, query_all, query_one,
};
use crate::db::slot_status;
use crate::events::{
    CONTENT_PROVISIONING_COMPLETED_TOPIC, ContentProvisioned, ESSAY_CONTENT_PROVISIONED_TOPIC,
    ESSAY_SLOT_ASSIGNED_TOPIC, ESSAY_VALIDATION_FAILED_TOPIC, EXCESS_CONTENT_PROVISIONED_TOPIC,
    EssayRef, Incoming, MAX_FILE_NAME_CHARS, MAX_ID_CHARS, ProvisioningCompletedV1, Route,
    ValidationFailed, bounded, outbox_event, parse, timestamp,
};

/// Outcome: content or a failure for a file the batch's slots already hold.
pub const DUPLICATE_UPLOAD: &str = "duplicate_upload";
/// Outcome: the event names a batch that was never registered.
pub const UNKNOWN_BATCH: &str = "unknown_batch";
/// Outcome: content found no free slot (`ExcessContentProvisionedV1` published).
pub const EXCESS_CONTENT: &str = "excess_content";
/// Outcome: a failed file found no free slot (recorded in the inbox only).
pub const EXCESS_FAILURE: &str = "excess_failure";

/// The readiness module's inbox handler (both File Service essay topics).
#[derive(Debug, Clone, Default)]
pub struct ReadinessHandler {
    topic_prefix: String,
}

/// A batch row, locked.
struct LockedBatch {
    id: String,
    correlation_id: String,
    total_essays: i64,
    completed: bool,
    metadata: Option<String>,
}

impl ReadinessHandler {
    /// A handler for topics under `topic_prefix`; it publishes under the same prefix.
    pub fn new(topic_prefix: impl Into<String>) -> Self {
        Self {
            topic_prefix: topic_prefix.into(),
        }
    }

    fn route<'a>(&'a self, topic: &'a str, aggregate_type: &'a str, id: &'a str) -> Route<'a> {
        Route {
            topic,
            prefix: &self.topic_prefix,
            aggregate_type,
            aggregate_id: id,
        }
    }

    async fn lock_batch(
        &self,
        txn: &OutboxTransaction,
        batch_id: &str,
    ) -> Result<Option<LockedBatch>, HandlerError> {
        let Some(row) = query_one(
            txn,
            "SELECT id, correlation_id, COALESCE(total_essays, 0)::bigint AS total_essays,
                    provisioning_completed_at IS NOT NULL AS completed,
                    processing_metadata::text AS metadata
             FROM batches WHERE id = $1 FOR UPDATE",
            vec![batch_id.into()],
        )
        .await?
        else {
            return Ok(None);
        };
        Ok(Some(LockedBatch {
            id: get(&row, "id")?,
            correlation_id: get(&row, "correlation_id")?,
            total_essays: get(&row, "total_essays")?,
            completed: get(&row, "completed")?,
            metadata: get(&row, "metadata")?,
        }))
    }

    async fn holds_file(
        &self,
        txn: &OutboxTransaction,
        batch_id: &str,
        file_upload_id: &str,
        text_storage_id: Option<&str>,
    ) -> Result<bool, HandlerError> {
        Ok(query_one(
            txn,
            "SELECT 1 AS held FROM essay_slots
             WHERE batch_id = $1 AND (file_upload_id = $2 OR text_storage_id = $3)
             LIMIT 1",
            vec![
                batch_id.into(),
                file_upload_id.into(),
                text_storage_id.map(str::to_owned).into(),
            ],
        )
        .await?
        .is_some())
    }

    async fn content(
        &self,
        txn: &OutboxTransaction,
        message: &InboxMessage,
    ) -> Result<Handled, HandlerError> {
        let incoming: Incoming<ContentProvisioned> = parse(message)?;
        let data = incoming.data;
        bounded("entity_id", &data.entity_id, MAX_ID_CHARS)?;
        bounded("file_upload_id", &data.file_upload_id, MAX_ID_CHARS)?;
        bounded("text_storage_id", &data.text_storage_id, MAX_ID_CHARS)?;
        bounded(
            "original_file_name",
            &data.original_file_name,
            MAX_FILE_NAME_CHARS,
        )?;
        if data
            .content_md5_hash
            .as_ref()
            .is_some_and(|h| h.len() > MAX_ID_CHARS)
        {
            return Err(HandlerError::permanent("content_md5_hash is too long"));
        }
        let correlation_id = correlation_of(incoming.correlation_id, message)?;
        let Some(batch) = self.lock_batch(txn, &data.entity_id).await? else {
            return Ok(Handled::outcome(UNKNOWN_BATCH));
        };
        if self
            .holds_file(
                txn,
                &batch.id,
                &data.file_upload_id,
                Some(&data.text_storage_id),
            )
            .await?
        {
            return Ok(Handled::outcome(DUPLICATE_UPLOAD));
        }
        let now = Utc::now();
        let claimed = query_one(
            txn,
            "UPDATE essay_slots
             SET status = $2, file_upload_id = $3, text_storage_id = $4, original_file_name = $5,
                 file_size_bytes = $6, content_md5_hash = $7, updated_at = now()
             WHERE batch_id = $1 AND essay_id = (
                 SELECT essay_id FROM essay_slots
                 WHERE batch_id = $1 AND status = 'available'
                 ORDER BY essay_id LIMIT 1 FOR UPDATE)
             RETURNING essay_id",
            vec![
                batch.id.clone().into(),
                slot_status::ASSIGNED.into(),
                data.file_upload_id.clone().into(),
                data.text_storage_id.clone().into(),
                data.original_file_name.clone().into(),
                data.file_size_bytes.into(),
                data.content_md5_hash.clone().into(),
            ],
        )
        .await?;
        let handled = match claimed {
            Some(row) => {
                let essay_id: String = get(&row, "essay_id")?;
                let event = outbox_event(
                    self.route(ESSAY_SLOT_ASSIGNED_TOPIC, "essay", &essay_id),
                    correlation_id,
                    now,
                    json!({
                        "event": "essay.slot.assigned",
                        "batch_id": batch.id,
                        "essay_id": essay_id,
                        "file_upload_id": data.file_upload_id,
                        "text_storage_id": data.text_storage_id,
                        "original_file_name": data.original_file_name,
                        "correlation_id": correlation_id,
                        "timestamp": timestamp(now),
                    }),
                    None,
                )?;
                txn.add(event).await.map_err(outbox_error)?;
                Handled::applied()
            }
            None => {
                let event = outbox_event(
                    self.route(EXCESS_CONTENT_PROVISIONED_TOPIC, "batch", &batch.id),
                    correlation_id,
                    now,
                    json!({
                        "event": "excess.content.provisioned",
                        "batch_id": batch.id,
                        "original_file_name": data.original_file_name,
                        "text_storage_id": data.text_storage_id,
                        "reason": "NO_AVAILABLE_SLOT",
                        "correlation_id": correlation_id,
                        "timestamp": timestamp(now),
                    }),
                    None,
                )?;
                txn.add(event).await.map_err(outbox_error)?;
                Handled::outcome(EXCESS_CONTENT)
            }
        };
        self.complete_if_done(txn, &batch).await?;
        Ok(handled)
    }

    async fn failure(
        &self,
        txn: &OutboxTransaction,
        message: &InboxMessage,
    ) -> Result<Handled, HandlerError> {
        let incoming: Incoming<ValidationFailed> = parse(message)?;
        let data = incoming.data;
        bounded("entity_id", &data.entity_id, MAX_ID_CHARS)?;
        bounded("file_upload_id", &data.file_upload_id, MAX_ID_CHARS)?;
        bounded(
            "original_file_name",
            &data.original_file_name,
            MAX_FILE_NAME_CHARS,
        )?;
        bounded(
            "validation_error_code",
            &data.validation_error_code,
            MAX_ID_CHARS,
        )?;
        let Some(batch) = self.lock_batch(txn, &data.entity_id).await? else {
            return Ok(Handled::outcome(UNKNOWN_BATCH));
        };
        if self
            .holds_file(txn, &batch.id, &data.file_upload_id, None)
            .await?
        {
            return Ok(Handled::outcome(DUPLICATE_UPLOAD));
        }
        let marked = execute(
            txn,
            "UPDATE essay_slots
             SET status = $2, file_upload_id = $3, original_file_name = $4, file_size_bytes = $5,
                 validation_error_code = $6, updated_at = now()
             WHERE batch_id = $1 AND essay_id = (
                 SELECT essay_id FROM essay_slots
                 WHERE batch_id = $1 AND status = 'available'
                 ORDER BY essay_id LIMIT 1 FOR UPDATE)",
            vec![
                batch.id.clone().into(),
                slot_status::FAILED.into(),
                data.file_upload_id.clone().into(),
                data.original_file_name.clone().into(),
                data.file_size_bytes.into(),
                data.validation_error_code.clone().into(),
            ],
        )
        .await?;
        if marked == 0 {
            return Ok(Handled::outcome(EXCESS_FAILURE));
        }
        self.complete_if_done(txn, &batch).await?;
        Ok(Handled::applied())
    }

    /// With no free slot left and the batch not yet complete: marks it complete and publishes
    /// `BatchContentProvisioningCompletedV1` with the assigned slots in `essay_id` order.
    async fn complete_if_done(
        &self,
        txn: &OutboxTransaction,
        batch: &LockedBatch,
    ) -> Result<(), HandlerError> {
        if batch.completed {
            return Ok(());
        }
        let free = query_one(
            txn,
            "SELECT EXISTS (SELECT 1 FROM essay_slots WHERE batch_id = $1 AND status = 'available')
                 AS free",
            vec![batch.id.clone().into()],
        )
        .await?;
        if free.map(|row| get::<bool>(&row, "free")).transpose()? != Some(false) {
            return Ok(());
        }
        let marked = execute(
            txn,
            "UPDATE batches SET provisioning_completed_at = now()
             WHERE id = $1 AND provisioning_completed_at IS NULL",
            vec![batch.id.clone().into()],
        )
        .await?;
        if marked == 0 {
            return Ok(());
        }
        let essays = query_all(
            txn,
            "SELECT essay_id, text_storage_id FROM essay_slots
             WHERE batch_id = $1 AND status = 'assigned' ORDER BY essay_id",
            vec![batch.id.clone().into()],
        )
        .await?
        .iter()
        .map(|row| {
            Ok(EssayRef {
                essay_id: get(row, "essay_id")?,
                text_storage_id: get::<Option<String>>(row, "text_storage_id")?.unwrap_or_default(),
            })
        })
        .collect::<Result<Vec<_>, HandlerError>>()?;
        let correlation_id = uuid::Uuid::parse_str(&batch.correlation_id)
            .map_err(|e| HandlerError::permanent(format!("batch correlation id: {e}")))?;
        let now = Utc::now();
        let data = ProvisioningCompletedV1 {
            event: "batch.content.provisioning.completed",
            batch_id: batch.id.clone(),
            provisioned_count: essays.len() as i64,
            expected_count: batch.total_essays,
            course_code: metadata_field(&batch.metadata, "course_code"),
            user_id: metadata_field(&batch.metadata, "user_id"),
            essays_for_processing: essays,
            correlation_id,
            timestamp: timestamp(now),
        };
        let event = outbox_event(
            self.route(CONTENT_PROVISIONING_COMPLETED_TOPIC, "batch", &batch.id),
            correlation_id,
            now,
            data,
            None,
        )?;
        txn.add(event).await.map_err(outbox_error)?;
        Ok(())
    }
}

#[async_trait]
impl InboxHandler<OutboxTransaction> for ReadinessHandler {
    async fn handle(
        &self,
        txn: &OutboxTransaction,
        message: &InboxMessage,
    ) -> Result<Handled, HandlerError> {
        let topic = message
            .topic
            .strip_prefix(self.topic_prefix.as_str())
            .unwrap_or(&message.topic);
        match topic {
            ESSAY_CONTENT_PROVISIONED_TOPIC => self.content(txn, message).await,
            ESSAY_VALIDATION_FAILED_TOPIC => self.failure(txn, message).await,
            other => Err(HandlerError::permanent(format!(
                "the readiness module does not handle topic {other}"
            ))),
        }
    }
}
