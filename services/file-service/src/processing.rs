//! Background processing of uploads: extract, validate, store the text, and write the outcome
//! event, all in one transaction per upload.
//!
//! An upload is never left behind: uploads still `pending` are queued again at start (after a
//! crash or restart) and by a periodic sweep; a failed outcome transaction is retried with
//! backoff. The outcome update only applies to a `pending` row, so each upload produces exactly
//! one outcome event even when it is processed twice.
//!
//! Poison uploads cannot loop, and replicas never process one upload at once. Processing an
//! upload opens its outcome transaction first and takes a transaction-scoped advisory lock on the
//! upload there (`pg_try_advisory_xact_lock`): a replica that cannot take it leaves the upload to
//! the one that holds it, and the lock goes with the transaction, so a crashed process holds
//! nothing. With the lock held, the attempt is counted in `file_uploads.processing_attempts`,
//! committed on its own, so an attempt that crashes the whole service counts too. An upload taken
//! up more than `max_attempts` times is failed with `UNKNOWN_VALIDATION_ERROR` (reason
//! `attempts_exhausted`) and its outcome event, and never processed again.
//!
//! `.docx` and `.pdf` are extracted in a child process under time, memory and CPU limits (see
//! [`crate::isolate`]); `.txt` is decoded in-process.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{SubsecRound, Utc};
use md5::Digest;
use outbox::{Outbox, OutboxTransaction};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, EntityTrait, Statement,
};
use tokio::sync::{Semaphore, mpsc};
use tracing::{error, info, warn};
use uuid::Uuid;

use crate::db::{file_upload, raw_file, status};
use crate::events::{
    EssayContentProvisionedV1, EssayValidationFailedV1, FileEventWriter, SOURCE_SERVICE,
    ValidationErrorDetail,
};
use crate::extract::{ErrorCode, Rejection, extract_text, validate_content};
use crate::isolate::{ExtractLimits, extract_in_child, needs_isolation};
use crate::metrics as m;

/// Default number of times an upload is taken up for processing before it is failed.
pub const MAX_ATTEMPTS: u32 = 3;

/// The first key of the service's advisory locks on uploads ("FSUP"); the second is the hash of
/// the upload's id. Two-key advisory locks never collide with one-key (bigint) ones.
const ADVISORY_LOCK_CLASS: i32 = 0x4653_5550;

/// How often uploads still pending are looked for.
const SWEEP_INTERVAL: Duration = Duration::from_secs(30);

/// Hex MD5 of `bytes` (the contract's `content_md5_hash`).
pub fn md5_hex(bytes: &[u8]) -> String {
    hex::encode(md5::Md5::digest(bytes))
}

/// How uploads are processed.
#[derive(Debug, Clone)]
pub struct ProcessingSettings {
    /// Uploads processed at once (and so extraction children at most).
    pub concurrency: usize,
    /// Times an upload is taken up before it is failed for good.
    pub max_attempts: u32,
    /// Limits of each extraction child.
    pub extract_limits: ExtractLimits,
    /// The program run as the extraction child (the service's own binary).
    pub extract_program: PathBuf,
}

impl Default for ProcessingSettings {
    fn default() -> Self {
        Self {
            concurrency: 2,
            max_attempts: MAX_ATTEMPTS,
            extract_limits: ExtractLimits::default(),
            extract_program: std::env::current_exe().unwrap_or_else(|_| "file-service".into()),
        }
    }
}

/// What processing one upload came to.
#[derive(Debug, PartialEq, Eq)]
enum Done {
    /// Its outcome event is written (or it needed none: already processed, removed, or being
    /// processed by another replica).
    Finished,
    /// The attempt failed before its outcome was written; try again later.
    Retry { attempts: u32, why: String },
}

struct Shared {
    db: DatabaseConnection,
    events: Arc<dyn FileEventWriter>,
    outbox: Arc<Outbox>,
    queue: mpsc::UnboundedSender<Uuid>,
    queued: Mutex<HashSet<Uuid>>,
    slots: Arc<Semaphore>,
    concurrency: u32,
    settings: ProcessingSettings,
}

/// Queues uploads for processing and runs them, `concurrency` at a time.
#[derive(Clone)]
pub struct Processor {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Processor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Processor")
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

impl Processor {
    /// Starts the processor's dispatcher and its sweep of pending uploads.
    pub fn start(
        db: DatabaseConnection,
        events: Arc<dyn FileEventWriter>,
        outbox: Arc<Outbox>,
        settings: ProcessingSettings,
    ) -> Self {
        let (queue, mut receiver) = mpsc::unbounded_channel::<Uuid>();
        let concurrency = u32::try_from(settings.concurrency.max(1)).unwrap_or(u32::MAX);
        let shared = Arc::new(Shared {
            db,
            events,
            outbox,
            queue,
            queued: Mutex::default(),
            slots: Arc::new(Semaphore::new(concurrency as usize)),
            concurrency,
            settings,
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
                    if let Done::Retry { attempts, why } = outcome {
                        schedule_retry(&shared, id, attempts, why);
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

fn schedule_retry(shared: &Arc<Shared>, id: Uuid, attempts: u32, why: String) {
    let delay = outbox_core::backoff_delay(
        Duration::from_millis(200),
        Duration::from_secs(30),
        attempts.max(1),
    );
    warn!(file_upload_id = %id, attempt = attempts, retry_in_ms = delay.as_millis() as u64, error = %why, "upload processing failed; will retry");
    let shared = shared.clone();
    tokio::spawn(async move {
        tokio::time::sleep(delay).await;
        let processor = Processor { shared };
        processor.enqueue(id);
    });
}

/// Takes the upload's advisory lock in `txn`. `false` when another process holds it.
async fn try_lock_upload(txn: &DatabaseTransaction, id: Uuid) -> Result<bool, sea_orm::DbErr> {
    let row = txn
        .query_one(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_try_advisory_xact_lock($1, hashtext($2)) AS locked",
            [ADVISORY_LOCK_CLASS.into(), id.to_string().into()],
        ))
        .await?;
    Ok(match row {
        Some(row) => row.try_get("", "locked")?,
        None => false,
    })
}

/// Counts an attempt of a pending upload (committed at once, outside the outcome transaction).
/// `None` when the upload is not pending any more.
async fn count_attempt(db: &DatabaseConnection, id: Uuid) -> Result<Option<u32>, sea_orm::DbErr> {
    let row = db
        .query_one(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE file_uploads
             SET processing_attempts = processing_attempts + 1, last_attempt_at = now()
             WHERE file_upload_id = $1 AND status = 'pending'
             RETURNING processing_attempts",
            [id.into()],
        ))
        .await?;
    match row {
        Some(row) => {
            let n: i32 = row.try_get("", "processing_attempts")?;
            Ok(Some(u32::try_from(n).unwrap_or(0)))
        }
        None => Ok(None),
    }
}

/// Extracts and validates the text: `.docx` and `.pdf` in a child process, `.txt` here.
/// `Err` when the child could not even be started (the attempt is retried).
async fn extract(
    settings: &ProcessingSettings,
    filename: &str,
    bytes: Vec<u8>,
) -> Result<Result<String, Rejection>, String> {
    if needs_isolation(filename) {
        return extract_in_child(
            &settings.extract_program,
            filename,
            &bytes,
            settings.extract_limits,
        )
        .await
        .map_err(|e| format!("cannot start the text extraction process: {e}"));
    }
    let filename = filename.to_owned();
    Ok(tokio::task::spawn_blocking(move || {
        let text = extract_text(&filename, &bytes)?;
        validate_content(&text)?;
        Ok(text)
    })
    .await
    .unwrap_or_else(|_| {
        Err(Rejection {
            code: ErrorCode::TextExtractionFailed,
            message: "text extraction failed on this file".into(),
            operation: "extract_text",
            details: serde_json::json!({"reason": "crashed"}),
        })
    }))
}

async fn process(shared: &Shared, id: Uuid) -> Done {
    let started = Instant::now();
    let retry = |attempts: u32, why: String| Done::Retry { attempts, why };
    let txn = match shared.outbox.begin().await {
        Ok(txn) => txn,
        Err(e) => return retry(1, e.to_string()),
    };
    match try_lock_upload(&txn, id).await {
        Ok(true) => {}
        Ok(false) => {
            info!(file_upload_id = %id, "upload is being processed by another process");
            return Done::Finished;
        }
        Err(e) => return retry(1, e.to_string()),
    }
    let attempts = match count_attempt(&shared.db, id).await {
        Ok(Some(n)) => n,
        Ok(None) => return Done::Finished,
        Err(e) => return retry(1, e.to_string()),
    };
    let upload = match file_upload::Entity::find_by_id(id).one(&shared.db).await {
        Ok(Some(upload)) if upload.status == status::PENDING => upload,
        Ok(_) => return Done::Finished,
        Err(e) => return retry(attempts, e.to_string()),
    };
    let max_attempts = shared.settings.max_attempts;

    let result = if attempts > max_attempts {
        warn!(file_upload_id = %id, attempts = attempts - 1, "upload could not be processed in its attempts; failing it");
        Err(Rejection {
            code: ErrorCode::UnknownValidationError,
            message: format!(
                "the upload could not be processed in {max_attempts} attempts; it will not be \
                 tried again"
            ),
            operation: "process_upload",
            details: serde_json::json!({
                "reason": "attempts_exhausted",
                "attempts": attempts - 1,
                "max_attempts": max_attempts,
            }),
        })
    } else {
        match raw_file::Entity::find_by_id(upload.raw_storage_id)
            .one(&shared.db)
            .await
        {
            Err(e) => return retry(attempts, e.to_string()),
            Ok(None) => Err(Rejection {
                code: ErrorCode::RawStorageFailed,
                message: "the uploaded bytes are missing from storage".into(),
                operation: "load_raw_file",
                details: serde_json::json!({"raw_file_storage_id": upload.raw_storage_id}),
            }),
            Ok(Some(raw)) => match extract(&shared.settings, &upload.filename, raw.content).await {
                Ok(result) => result,
                Err(why) => return retry(attempts, why),
            },
        }
    };

    let written = match &result {
        Ok(text) => provision(shared, txn, &upload, text).await,
        Err(rejection) => reject(shared, txn, &upload, rejection).await,
    };
    match written {
        Ok(true) => {
            let (outcome, code) = match &result {
                Ok(_) => (status::COMPLETED, ""),
                Err(r) => (status::FAILED, r.code.as_str()),
            };
            metrics::counter!(m::FILES_PROCESSED_TOTAL, "status" => outcome, "code" => code)
                .increment(1);
            metrics::histogram!(m::PROCESSING_DURATION_SECONDS)
                .record(started.elapsed().as_secs_f64());
            let reason = match &result {
                Err(r) => r.details["reason"].as_str().unwrap_or_default().to_owned(),
                Ok(_) => String::new(),
            };
            info!(
                file_upload_id = %id,
                batch_id = %upload.batch_id,
                status = outcome,
                code,
                reason,
                attempts,
                correlation_id = %upload.correlation_id,
                "upload processed"
            );
            Done::Finished
        }
        Ok(false) => Done::Finished,
        Err(e) => {
            if attempts > max_attempts {
                error!(file_upload_id = %id, error = %e, "cannot even mark the upload failed; will keep trying");
            }
            retry(attempts, e.to_string())
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
    #[error(transparent)]
    Transaction(#[from] outbox::Error),
}

/// Stores the text, completes the upload and writes `EssayContentProvisionedV1`, in `txn` (the
/// one holding the upload's lock).
async fn provision(
    shared: &Shared,
    txn: OutboxTransaction,
    upload: &file_upload::Model,
    text: &str,
) -> Result<bool, WriteError> {
    let text_storage_id = Uuid::now_v7();
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
        .add(&txn, payload.into(), upload.traceparent.clone())
        .await?;
    txn.commit().await?;
    Ok(true)
}

/// Fails the upload and writes `EssayValidationFailedV1`, in `txn` (the one holding the
/// upload's lock).
async fn reject(
    shared: &Shared,
    txn: OutboxTransaction,
    upload: &file_upload::Model,
    rejection: &Rejection,
) -> Result<bool, WriteError> {
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
        .add(&txn, payload.into(), upload.traceparent.clone())
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
