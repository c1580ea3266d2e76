//! Background processing of uploads: extract, validate, store the text, and write the outcome
//! event, all in one transaction per upload.
//!
//! An upload is never left behind: uploads still `pending` are queued again at start (after a
//! crash or restart) and by a periodic sweep; a failed outcome transaction is retried with
//! backoff and, after [`MAX_ATTEMPTS`], the upload is marked failed with its event. The outcome
//! update only applies to a `pending` row, so each upload produces exactly one outcome event even
//! when it is processed twice.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{SubsecRound, Utc};
use md5::Digest;
use outbox_core::RelayNotifier;
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, Statement, TransactionTrait,
};
use tokio::sync::{Semaphore, mpsc};
use tracing::{error, info, warn};
use uuid::Uuid;

use crate::db::{file_upload, raw_file, status};
use crate::events::{
    EssayContentProvisionedV1, EssayValidationFailedV1, FileEventPublisher, SOURCE_SERVICE,
    ValidationErrorDetail,
};
use crate::extract::{ErrorCode, Rejection, extract_text, validate_content};
use crate::metrics as m;

/// Outcome transactions tried before an upload is marked failed.
pub const MAX_ATTEMPTS: u32 = 5;

/// How often uploads still pending are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// Hex MD5 of `bytes` (the contract's `content_md5_hash`).
pub fn md5_hex(bytes: &[u8]) -> String {
    hex::encode(md5::Md5::digest(bytes))
}

/// What processing one upload came to.
#[derive(Debug, PartialEq, Eq)]
enum Done {
    /// Its outcome event is written (or it needed none: already processed or removed).
    Finished,
    /// The outcome transaction failed; try again later.
    Retry(String),
}

struct Shared {
    db: DatabaseConnection,
    events: Arc<dyn FileEventPublisher>,
    notifier: RelayNotifier,
    queue: mpsc::UnboundedSender<Uuid>,
    queued: Mutex<HashSet<Uuid>>,
    attempts: Mutex<HashMap<Uuid, u32>>,
    slots: Arc<Semaphore>,
    concurrency: u32,
}

/// Queues uploads for processing and runs them, `concurrency` at a time.
#[derive(Clone)]
pub struct Processor {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Processor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Processor")
            .field("concurrency", &self.shared.concurrency)
            .finish_non_exhaustive()
    }
}

impl Processor {
    /// Starts the processor's dispatcher and its sweep of pending uploads.
    pub fn start(
        db: DatabaseConnection,
        events: Arc<dyn FileEventPublisher>,
        notifier: RelayNotifier,
        concurrency: usize,
    ) -> Self {
        let (queue, mut receiver) = mpsc::unbounded_channel::<Uuid>();
        let concurrency = u32::try_from(concurrency.max(1)).unwrap_or(u32::MAX);
        let shared = Arc::new(Shared {
            db,
            events,
            notifier,
            queue,
            queued: Mutex::default(),
            attempts: Mutex::default(),
            slots: Arc::new(Semaphore::new(concurrency as usize)),
            concurrency,
        });
        let dispatcher = shared.clone();
        tokio::spawn(async move {
            while let Some(id) = receiver.recv().await {
                let Ok(slot) = dispatcher.slots.clone().acquire_owned().await else {
                    break;
                };
                let shared = dispatcher.clone();
                tokio::spawn(async move {
                    let outcome = process(&shared, id).await;
                    lock(&shared.queued).remove(&id);
                    drop(slot);
                    if let Done::Retry(why) = outcome {
                        schedule_retry(&shared, id, why);
                    } else {
                        lock(&shared.attempts).remove(&id);
                    }
                });
            }
        });
        let sweeper = Arc::downgrade(&shared);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(SWEEP_INTERVAL).await;
                let Some(shared) = sweeper.upgrade() else {
                    return;
                };
                if shared.slots.is_closed() {
                    return;
                }
                let processor = Processor { shared };
                if let Err(e) = processor.enqueue_pending(Some(SWEEP_INTERVAL)).await {
                    warn!(error = %e, "sweep for pending uploads failed");
                }
            }
        });
        Self { shared }
    }

    /// Queues one upload (ignored when it is already queued or running).
    pub fn enqueue(&self, file_upload_id: Uuid) {
        if self.shared.slots.is_closed() {
            return;
        }
        if lock(&self.shared.queued).insert(file_upload_id) {
            let _ = self.shared.queue.send(file_upload_id);
        }
    }

    /// Queues every upload still pending (older than `older_than`, when given). Returns how
    /// many were found.
    pub async fn enqueue_pending(
        &self,
        older_than: Option<Duration>,
    ) -> Result<usize, sea_orm::DbErr> {
        let cutoff = Utc::now()
            - chrono::Duration::from_std(older_than.unwrap_or_default()).unwrap_or_default();
        let rows = self
            .shared
            .db
            .query_all(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT file_upload_id FROM file_uploads
                 WHERE status = 'pending' AND uploaded_at <= $1 ORDER BY uploaded_at",
                [cutoff.into()],
            ))
            .await?;
        let mut found = 0;
        for row in rows {
            let id: Uuid = row.try_get("", "file_upload_id")?;
            self.enqueue(id);
            found += 1;
        }
        Ok(found)
    }

    /// Stops taking work and waits for the uploads being processed; queued ones stay pending in
    /// the database for the next start.
    pub async fn stop(&self) {
        let concurrency = self.shared.concurrency;
        // Holding every slot means nothing runs; closing then stops the dispatcher.
        if let Ok(all) = self.shared.slots.acquire_many(concurrency).await {
            self.shared.slots.close();
            drop(all);
        }
        info!("upload processing stopped");
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn schedule_retry(shared: &Arc<Shared>, id: Uuid, why: String) {
    let attempt = {
        let mut attempts = lock(&shared.attempts);
        let n = attempts.entry(id).or_insert(0);
        *n += 1;
        *n
    };
    let delay =
        outbox_core::backoff_delay(Duration::from_millis(200), Duration::from_secs(30), attempt);
    warn!(file_upload_id = %id, attempt, retry_in_ms = delay.as_millis() as u64, error = %why, "upload processing failed; will retry");
    let shared = shared.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let processor = Processor { shared };
        processor.enqueue(id);
    });
}

async fn process(shared: &Shared, id: Uuid) -> Done {
    let started = Instant::now();
    let upload = match file_upload::Entity::find_by_id(id).one(&shared.db).await {
        Ok(Some(upload)) if upload.status == status::PENDING => upload,
        Ok(_) => return Done::Finished,
        Err(e) => return Done::Retry(e.to_string()),
    };
    let attempts = lock(&shared.attempts).get(&id).copied().unwrap_or(0);

    let result = if attempts >= MAX_ATTEMPTS {
        Err(Rejection {
            code: ErrorCode::UnknownValidationError,
            message: format!("the upload could not be processed after {MAX_ATTEMPTS} attempts"),
            operation: "store_text",
            details: serde_json::json!({"attempts": attempts}),
        })
    } else {
        match raw_file::Entity::find_by_id(upload.raw_storage_id)
            .one(&shared.db)
            .await
        {
            Err(e) => return Done::Retry(e.to_string()),
            Ok(None) => Err(Rejection {
                code: ErrorCode::RawStorageFailed,
                message: "the uploaded bytes are missing from storage".into(),
                operation: "load_raw_file",
                details: serde_json::json!({"raw_file_storage_id": upload.raw_storage_id}),
            }),
            Ok(Some(raw)) => {
                let filename = upload.filename.clone();
                tokio::task::spawn_blocking(move || {
                    let text = extract_text(&filename, &raw.content)?;
                    validate_content(&text)?;
                    Ok(text)
                })
                .await
                .unwrap_or_else(|_| {
                    Err(Rejection {
                        code: ErrorCode::TextExtractionFailed,
                        message: "text extraction crashed on this file".into(),
                        operation: "extract_text",
                        details: serde_json::json!({}),
                    })
                })
            }
        }
    };

    let written = match &result {
        Ok(text) => provision(shared, &upload, text).await,
        Err(rejection) => reject(shared, &upload, rejection).await,
    };
    match written {
        Ok(true) => {
            shared.notifier.notify();
            let (outcome, code) = match &result {
                Ok(_) => (status::COMPLETED, ""),
                Err(r) => (status::FAILED, r.code.as_str()),
            };
            metrics::counter!(m::FILES_PROCESSED_TOTAL, "status" => outcome, "code" => code)
                .increment(1);
            metrics::histogram!(m::PROCESSING_DURATION_SECONDS)
                .record(started.elapsed().as_secs_f64());
            info!(
                file_upload_id = %id,
                batch_id = %upload.batch_id,
                status = outcome,
                code,
                correlation_id = %upload.correlation_id,
                "upload processed"
            );
            Done::Finished
        }
        Ok(false) => Done::Finished,
        Err(e) => {
            if attempts >= MAX_ATTEMPTS {
                error!(file_upload_id = %id, error = %e, "cannot even mark the upload failed; will keep trying");
            }
            Done::Retry(e.to_string())
        }
    }
}

/// Marks a pending upload processed. `false` when it was not pending any more.
async fn finish(
    txn: &impl ConnectionTrait,
    id: Uuid,
    new_status: &str,
    text_storage_id: Option<Uuid>,
    error: Option<(&str, &str)>,
) -> Result<bool, sea_orm::DbErr> {
    let result = txn
        .execute(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE file_uploads
             SET status = $2, text_storage_id = $3, error_code = $4, error_message = $5,
                 processed_at = now()
             WHERE file_upload_id = $1 AND status = 'pending'",
            [
                id.into(),
                new_status.into(),
                text_storage_id.into(),
                error.map(|(code, _)| code.to_owned()).into(),
                error.map(|(_, message)| message.to_owned()).into(),
            ],
        ))
        .await?;
    Ok(result.rows_affected() == 1)
}

#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error(transparent)]
    Database(#[from] sea_orm::DbErr),
    #[error(transparent)]
    Outbox(#[from] outbox_core::OutboxError),
}

/// Stores the text, completes the upload and writes `EssayContentProvisionedV1`, in one
/// transaction.
async fn provision(
    shared: &Shared,
    upload: &file_upload::Model,
    text: &str,
) -> Result<bool, WriteError> {
    let text_storage_id = Uuid::now_v7();
    let txn = shared.db.begin().await?;
    if !finish(
        &txn,
        upload.file_upload_id,
        status::COMPLETED,
        Some(text_storage_id),
        None,
    )
    .await?
    {
        txn.rollback().await?;
        return Ok(false);
    }
    txn.execute(Statement::from_sql_and_values(
        DbBackend::Postgres,
        "INSERT INTO extracted_texts (storage_id, file_upload_id, content) VALUES ($1, $2, $3)",
        [
            text_storage_id.into(),
            upload.file_upload_id.into(),
            text.to_owned().into(),
        ],
    ))
    .await?;
    let payload = EssayContentProvisionedV1 {
        event: "essay.content.provisioned".into(),
        entity_id: upload.batch_id.clone(),
        file_upload_id: upload.file_upload_id,
        original_file_name: upload.filename.clone(),
        raw_file_storage_id: upload.raw_storage_id,
        text_storage_id,
        file_size_bytes: upload.file_size_bytes,
        content_md5_hash: upload.content_md5.clone(),
        correlation_id: upload.correlation_id,
        timestamp: Utc::now().trunc_subsecs(6),
    };
    shared
        .events
        .essay_content_provisioned(&txn, &payload, upload.traceparent.clone())
        .await?;
    txn.commit().await?;
    Ok(true)
}

/// Fails the upload and writes `EssayValidationFailedV1`, in one transaction.
async fn reject(
    shared: &Shared,
    upload: &file_upload::Model,
    rejection: &Rejection,
) -> Result<bool, WriteError> {
    let txn = shared.db.begin().await?;
    let code = rejection.code.as_str();
    if !finish(
        &txn,
        upload.file_upload_id,
        status::FAILED,
        None,
        Some((code, &rejection.message)),
    )
    .await?
    {
        txn.rollback().await?;
        return Ok(false);
    }
    let now = Utc::now().trunc_subsecs(6);
    let payload = EssayValidationFailedV1 {
        event: "essay.validation.failed".into(),
        entity_id: upload.batch_id.clone(),
        file_upload_id: upload.file_upload_id,
        original_file_name: upload.filename.clone(),
        raw_file_storage_id: upload.raw_storage_id,
        validation_error_code: code.to_owned(),
        validation_error_detail: ValidationErrorDetail {
            error_code: code.to_owned(),
            message: rejection.message.clone(),
            correlation_id: upload.correlation_id,
            timestamp: now,
            service: SOURCE_SERVICE.to_owned(),
            operation: rejection.operation.to_owned(),
            details: rejection.details.clone(),
        },
        file_size_bytes: upload.file_size_bytes,
        correlation_id: upload.correlation_id,
        timestamp: now,
    };
    shared
        .events
        .essay_validation_failed(&txn, &payload, upload.traceparent.clone())
        .await?;
    txn.commit().await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::md5_hex;

    #[test]
    fn md5_is_lowercase_hex() {
        assert_eq!(md5_hex(b""), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(md5_hex(b"hello"), "5d41402abc4b2a76b9719d911017c592");
    }
}
