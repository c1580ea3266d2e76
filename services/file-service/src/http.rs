//! The HTTP API: routes, request context, errors.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::multipart::MultipartRejection;
use axum::extract::{DefaultBodyLimit, FromRequestParts, Multipart, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use chrono::{DateTime, SubsecRound, Utc};
use metrics_exporter_prometheus::PrometheusHandle;
use outbox::Outbox;
use sea_orm::{
    ActiveValue::Set, ColumnTrait, ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait,
    QueryFilter, QueryOrder, Statement,
};
use serde::Serialize;
use tracing::{info, warn};
use uuid::Uuid;

use crate::access::{AccessError, BatchAccess, claim_locally};
use crate::db::{file_upload, raw_file, status};
use crate::events::{BatchFileAddedV1, BatchFileRemovedV1, FileEventWriter};
use crate::metrics as m;
use crate::processing::{Processor, md5_hex};

/// The caller's user id, set by the API gateway.
pub const USER_ID_HEADER: &str = "x-user-id";
/// The request's correlation id, propagated into every event.
pub const CORRELATION_ID_HEADER: &str = "x-correlation-id";
/// W3C trace context.
pub const TRACEPARENT_HEADER: &str = "traceparent";

/// Longest accepted `batch_id` or `assignment_id`.
const MAX_ID_LEN: usize = 255;

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The service's database pool.
    pub db: DatabaseConnection,
    /// Writes the service's events to the outbox.
    pub events: Arc<dyn FileEventWriter>,
    /// Ownership and lock state of batches.
    pub access: Arc<dyn BatchAccess>,
    /// Background processing of uploads.
    pub processor: Processor,
    /// The outbox: transactions whose commit wakes the relay; the relay's state and the backlog
    /// for `/healthz`.
    pub outbox: Arc<Outbox>,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// Largest accepted file.
    pub max_file_bytes: usize,
    /// Largest accepted request body.
    pub max_request_bytes: usize,
    /// Request limits beyond sizes.
    pub limits: RequestLimits,
    /// One permit per upload request being handled; none left means 503 with `Retry-After`.
    pub upload_slots: Arc<tokio::sync::Semaphore>,
}

/// Bounds on upload requests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestLimits {
    /// Upload requests handled at once.
    pub max_concurrent_uploads: usize,
    /// `files` parts in one request.
    pub max_files_per_request: usize,
    /// Longest file name, in bytes.
    pub max_filename_bytes: usize,
    /// Time allowed to receive an upload's body.
    pub read_timeout: Duration,
}

impl Default for RequestLimits {
    fn default() -> Self {
        Self {
            max_concurrent_uploads: 8,
            max_files_per_request: 50,
            max_filename_bytes: 255,
            read_timeout: Duration::from_secs(30),
        }
    }
}

/// Seconds a client is told to wait (`Retry-After`) when every upload slot is taken.
pub const UPLOAD_RETRY_AFTER_SECS: u64 = 1;

/// An error answer: `{"error": {"code": "...", "message": "..."}}`.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    retry_after: Option<u64>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            retry_after: None,
        }
    }

    fn bad_request(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, message)
    }

    fn internal(error: impl std::fmt::Display) -> Self {
        warn!(error = %error, "request failed");
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "SERVICE_UNAVAILABLE",
            "a dependency of the service failed; nothing was changed, try again",
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, Json(body)).into_response();
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<AccessError> for ApiError {
    fn from(error: AccessError) -> Self {
        match error {
            AccessError::Forbidden { .. } => {
                Self::new(StatusCode::FORBIDDEN, "FORBIDDEN", error.to_string())
            }
            AccessError::Locked { .. } => {
                Self::new(StatusCode::CONFLICT, "BATCH_LOCKED", error.to_string())
            }
            AccessError::NotFound { .. } => {
                Self::new(StatusCode::NOT_FOUND, "BATCH_NOT_FOUND", error.to_string())
            }
            AccessError::Unavailable(_) => Self::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "ORCHESTRATOR_UNAVAILABLE",
                format!("{error}; nothing was changed, try again"),
            ),
            AccessError::Database(e) => Self::internal(e),
        }
    }
}

impl From<sea_orm::DbErr> for ApiError {
    fn from(error: sea_orm::DbErr) -> Self {
        Self::internal(error)
    }
}

impl From<outbox::Error> for ApiError {
    fn from(error: outbox::Error) -> Self {
        outbox_core::OutboxError::from(error).into()
    }
}

impl From<outbox_core::OutboxError> for ApiError {
    fn from(error: outbox_core::OutboxError) -> Self {
        match error {
            // The only invalid events the service builds are ones too large for the broker.
            outbox_core::OutboxError::InvalidEvent(why) => {
                warn!(error = %why, "event refused before it was written");
                Self::new(StatusCode::PAYLOAD_TOO_LARGE, "EVENT_TOO_LARGE", why)
            }
            other => Self::internal(other),
        }
    }
}

/// The request's correlation id: the caller's `X-Correlation-ID` when it is a UUID, else a new
/// one. Also returned as a response header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CorrelationId(pub Uuid);

async fn correlation(mut request: Request, next: Next) -> Response {
    let id = request
        .headers()
        .get(CORRELATION_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| Uuid::parse_str(v.trim()).ok())
        .unwrap_or_else(Uuid::new_v4);
    request.extensions_mut().insert(CorrelationId(id));
    let mut response = next.run(request).await;
    if let Ok(value) = HeaderValue::from_str(&id.to_string()) {
        response
            .headers_mut()
            .insert(HeaderName::from_static(CORRELATION_ID_HEADER), value);
    }
    response
}

/// The W3C `traceparent` for work done on behalf of a request that carried one: the same trace,
/// a new span id for this service. `None` when the request had no (valid) trace context.
pub fn child_traceparent(incoming: &str) -> Option<String> {
    let parts: Vec<&str> = incoming.trim().split('-').collect();
    let [version, trace_id, parent_id, flags] = parts.as_slice() else {
        return None;
    };
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    let valid = hex(version, 2)
        && *version != "ff"
        && hex(trace_id, 32)
        && trace_id.bytes().any(|b| b != b'0')
        && hex(parent_id, 16)
        && parent_id.bytes().any(|b| b != b'0')
        && hex(flags, 2);
    if !valid {
        return None;
    }
    let span_id = &Uuid::new_v4().simple().to_string()[..16];
    Some(format!(
        "00-{}-{span_id}-{}",
        trace_id.to_ascii_lowercase(),
        flags.to_ascii_lowercase()
    ))
}

/// Who is calling, in which request.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `X-User-ID`.
    pub user_id: String,
    /// The correlation id.
    pub correlation_id: Uuid,
    /// The traceparent for this service's work, when the request carried trace context.
    pub traceparent: Option<String>,
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let user_id = parts
            .headers
            .get(USER_ID_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                ApiError::new(
                    StatusCode::UNAUTHORIZED,
                    "MISSING_USER_ID",
                    "the X-User-ID header is required",
                )
            })?
            .to_owned();
        let correlation_id = parts
            .extensions
            .get::<CorrelationId>()
            .map_or_else(Uuid::new_v4, |c| c.0);
        let traceparent = parts
            .headers
            .get(TRACEPARENT_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(child_traceparent);
        Ok(Self {
            user_id,
            correlation_id,
            traceparent,
        })
    }
}

/// The service's router; `app(state).oneshot(request)` serves one request without a socket.
pub fn app(state: AppState) -> Router {
    let limit = state.max_request_bytes;
    Router::new()
        .route("/v1/files/batch", post(upload_new_batch))
        .route("/v1/files/batch/{batch_id}/files", post(upload_to_batch))
        .route("/v1/files/batch/{batch_id}/state", get(batch_state))
        .route(
            "/v1/files/batch/{batch_id}/files/{file_upload_id}",
            delete(remove_file),
        )
        .route("/healthz", get(healthz))
        .route("/metrics", get(render_metrics))
        .route_layer(from_fn(m::track))
        .layer(DefaultBodyLimit::max(limit))
        .layer(from_fn(correlation))
        .with_state(state)
}

/// One file of an upload request.
struct UploadedFile {
    filename: String,
    bytes: Vec<u8>,
}

/// An upload request's form.
struct UploadForm {
    batch_id: Option<String>,
    assignment_id: Option<String>,
    files: Vec<UploadedFile>,
}

fn multipart_error(
    error: axum::extract::multipart::MultipartError,
    max_request: usize,
) -> ApiError {
    if error.status() == StatusCode::PAYLOAD_TOO_LARGE {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "REQUEST_TOO_LARGE",
            format!("the request body is over the {max_request} byte limit"),
        )
    } else {
        ApiError::bad_request(
            "INVALID_MULTIPART",
            format!("malformed multipart body: {}", error.body_text()),
        )
    }
}

async fn text_field(
    field: axum::extract::multipart::Field<'_>,
    name: &str,
    max_request: usize,
) -> Result<String, ApiError> {
    let value = field
        .text()
        .await
        .map_err(|e| multipart_error(e, max_request))?;
    let value = value.trim().to_owned();
    if value.len() > MAX_ID_LEN {
        return Err(ApiError::bad_request(
            "INVALID_FIELD",
            format!("{name} is longer than {MAX_ID_LEN} characters"),
        ));
    }
    Ok(value)
}

/// Reads the whole form before anything is written, so bad input changes nothing.
async fn read_form(
    multipart: Result<Multipart, MultipartRejection>,
    max_file: usize,
    max_request: usize,
    limits: RequestLimits,
) -> Result<UploadForm, ApiError> {
    let mut multipart = multipart.map_err(|e| {
        ApiError::bad_request(
            "INVALID_MULTIPART",
            format!("expected a multipart/form-data body: {}", e.body_text()),
        )
    })?;
    let mut form = UploadForm {
        batch_id: None,
        assignment_id: None,
        files: Vec::new(),
    };
    while let Some(mut field) = multipart
        .next_field()
        .await
        .map_err(|e| multipart_error(e, max_request))?
    {
        match field.name() {
            Some("batch_id") => {
                form.batch_id = Some(text_field(field, "batch_id", max_request).await?)
            }
            Some("assignment_id") => {
                form.assignment_id = Some(text_field(field, "assignment_id", max_request).await?)
                    .filter(|a| !a.is_empty());
            }
            Some("files") => {
                let filename = field
                    .file_name()
                    .map(str::trim)
                    .filter(|f| !f.is_empty())
                    .ok_or_else(|| {
                        ApiError::bad_request(
                            "INVALID_MULTIPART",
                            "every `files` part needs a filename",
                        )
                    })?
                    .to_owned();
                if filename.len() > limits.max_filename_bytes {
                    return Err(ApiError::bad_request(
                        "FILENAME_TOO_LONG",
                        format!(
                            "a file name is {} bytes long; at most {} are allowed",
                            filename.len(),
                            limits.max_filename_bytes
                        ),
                    ));
                }
                if form.files.len() >= limits.max_files_per_request {
                    return Err(ApiError::bad_request(
                        "TOO_MANY_FILES",
                        format!(
                            "at most {} files may be sent in one request",
                            limits.max_files_per_request
                        ),
                    ));
                }
                let mut bytes = Vec::new();
                while let Some(chunk) = field
                    .chunk()
                    .await
                    .map_err(|e| multipart_error(e, max_request))?
                {
                    if bytes.len() + chunk.len() > max_file {
                        return Err(ApiError::new(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            "FILE_TOO_LARGE",
                            format!("{filename} is over the {max_file} byte limit for a file"),
                        ));
                    }
                    bytes.extend_from_slice(&chunk);
                }
                form.files.push(UploadedFile { filename, bytes });
            }
            // Fields the contract does not name are ignored, as the Python service did.
            _ => while let Ok(Some(_)) = field.chunk().await {},
        }
    }
    Ok(form)
}

/// One accepted file in an upload answer.
#[derive(Debug, Serialize)]
struct AcceptedFile {
    file_upload_id: Uuid,
    filename: String,
}

/// The 202 answer of an upload.
#[derive(Debug, Serialize)]
struct UploadAccepted {
    batch_id: String,
    correlation_id: Uuid,
    files: Vec<AcceptedFile>,
}

/// Takes an upload slot, or refuses with 503 and `Retry-After` before reading anything.
fn upload_slot(state: &AppState) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    state.upload_slots.clone().try_acquire_owned().map_err(|_| {
        metrics::counter!(m::UPLOADS_REFUSED_BUSY_TOTAL).increment(1);
        let mut error = ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "TOO_MANY_UPLOADS",
            format!(
                "{} uploads are being handled; nothing was changed, try again shortly",
                state.limits.max_concurrent_uploads
            ),
        );
        error.retry_after = Some(UPLOAD_RETRY_AFTER_SECS);
        error
    })
}

/// Reads the form within the request read timeout (408 past it).
async fn read_form_in_time(
    state: &AppState,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<UploadForm, ApiError> {
    let limits = state.limits;
    tokio::time::timeout(
        limits.read_timeout,
        read_form(
            multipart,
            state.max_file_bytes,
            state.max_request_bytes,
            limits,
        ),
    )
    .await
    .unwrap_or_else(|_| {
        Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "REQUEST_TIMEOUT",
            format!(
                "the request body did not arrive within {} ms; nothing was changed",
                limits.read_timeout.as_millis()
            ),
        ))
    })
}

async fn upload_new_batch(
    State(state): State<AppState>,
    caller: Caller,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let _slot = upload_slot(&state)?;
    let form = read_form_in_time(&state, multipart).await?;
    let batch_id = form
        .batch_id
        .clone()
        .filter(|b| !b.is_empty())
        .ok_or_else(|| {
            ApiError::bad_request("MISSING_BATCH_ID", "the form needs a batch_id field")
        })?;
    upload(state, caller, batch_id, form).await
}

async fn upload_to_batch(
    State(state): State<AppState>,
    Path(batch_id): Path<String>,
    caller: Caller,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Response, ApiError> {
    let _slot = upload_slot(&state)?;
    let form = read_form_in_time(&state, multipart).await?;
    if form
        .batch_id
        .as_deref()
        .is_some_and(|b| !b.is_empty() && b != batch_id)
    {
        return Err(ApiError::bad_request(
            "BATCH_ID_MISMATCH",
            "the form's batch_id differs from the one in the path",
        ));
    }
    upload(state, caller, batch_id, form).await
}

async fn upload(
    state: AppState,
    caller: Caller,
    batch_id: String,
    form: UploadForm,
) -> Result<Response, ApiError> {
    if batch_id.trim().is_empty() || batch_id.len() > MAX_ID_LEN {
        return Err(ApiError::bad_request(
            "INVALID_BATCH_ID",
            "batch_id must be 1 to 255 characters",
        ));
    }
    if form.files.is_empty() {
        return Err(ApiError::bad_request(
            "NO_FILES",
            "the form needs at least one `files` part",
        ));
    }
    state
        .access
        .check_upload(&batch_id, &caller.user_id)
        .await?;

    let now: DateTime<Utc> = Utc::now().trunc_subsecs(6);
    let txn = state.outbox.begin().await?;
    if state.access.claims_locally() {
        claim_locally(&txn, &batch_id, &caller.user_id).await?;
    }
    let mut accepted = Vec::with_capacity(form.files.len());
    for file in form.files {
        let file_upload_id = Uuid::now_v7();
        let raw_storage_id = Uuid::now_v7();
        let size = i64::try_from(file.bytes.len()).unwrap_or(i64::MAX);
        let md5 = md5_hex(&file.bytes);
        raw_file::Entity::insert(raw_file::ActiveModel {
            storage_id: Set(raw_storage_id),
            content: Set(file.bytes),
            stored_at: Set(now.into()),
        })
        .exec_without_returning(&txn)
        .await?;
        file_upload::Entity::insert(file_upload::ActiveModel {
            file_upload_id: Set(file_upload_id),
            batch_id: Set(batch_id.clone()),
            user_id: Set(caller.user_id.clone()),
            assignment_id: Set(form.assignment_id.clone()),
            filename: Set(file.filename.clone()),
            file_size_bytes: Set(size),
            content_md5: Set(md5),
            raw_storage_id: Set(raw_storage_id),
            text_storage_id: Set(None),
            status: Set(status::PENDING.to_owned()),
            error_code: Set(None),
            error_message: Set(None),
            correlation_id: Set(caller.correlation_id),
            traceparent: Set(caller.traceparent.clone()),
            uploaded_at: Set(now.into()),
            processed_at: Set(None),
            removed_at: Set(None),
            processing_attempts: Set(0),
            last_attempt_at: Set(None),
        })
        .exec_without_returning(&txn)
        .await?;
        let event = BatchFileAddedV1 {
            event: "batch.file.added".into(),
            batch_id: batch_id.clone(),
            file_upload_id,
            filename: file.filename.clone(),
            user_id: caller.user_id.clone(),
            correlation_id: caller.correlation_id,
            timestamp: now,
        };
        state
            .events
            .add(&txn, event.into(), caller.traceparent.clone())
            .await?;
        accepted.push(AcceptedFile {
            file_upload_id,
            filename: file.filename,
        });
    }
    txn.commit().await?;
    for file in &accepted {
        state.processor.enqueue(file.file_upload_id);
    }
    metrics::counter!(m::UPLOADS_ACCEPTED_TOTAL).increment(accepted.len() as u64);
    info!(
        batch_id = %batch_id,
        user_id = %caller.user_id,
        correlation_id = %caller.correlation_id,
        files = accepted.len(),
        "files uploaded"
    );
    let body = UploadAccepted {
        batch_id,
        correlation_id: caller.correlation_id,
        files: accepted,
    };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// One upload in a batch's state.
#[derive(Debug, Serialize)]
struct FileState {
    file_upload_id: Uuid,
    filename: String,
    status: String,
    file_size_bytes: i64,
    validation_error_code: Option<String>,
    validation_error_message: Option<String>,
    uploaded_at: DateTime<Utc>,
    processed_at: Option<DateTime<Utc>>,
}

async fn batch_state(
    State(state): State<AppState>,
    Path(batch_id): Path<String>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let view = state.access.check_read(&batch_id, &caller.user_id).await?;
    let uploads = file_upload::Entity::find()
        .filter(file_upload::Column::BatchId.eq(batch_id.as_str()))
        .filter(file_upload::Column::Status.ne(status::REMOVED))
        .order_by_asc(file_upload::Column::UploadedAt)
        .order_by_asc(file_upload::Column::FileUploadId)
        .all(&state.db)
        .await?;
    let files: Vec<FileState> = uploads
        .into_iter()
        .map(|u| FileState {
            file_upload_id: u.file_upload_id,
            filename: u.filename,
            status: u.status,
            file_size_bytes: u.file_size_bytes,
            validation_error_code: u.error_code,
            validation_error_message: u.error_message,
            uploaded_at: u.uploaded_at.with_timezone(&Utc),
            processed_at: u.processed_at.map(|t| t.with_timezone(&Utc)),
        })
        .collect();
    let body = serde_json::json!({
        "batch_id": batch_id,
        "locked": view.locked,
        "lock_reason": view.lock_reason,
        "files": files,
    });
    Ok(Json(body).into_response())
}

async fn remove_file(
    State(state): State<AppState>,
    Path((batch_id, file_upload_id)): Path<(String, String)>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "FILE_NOT_FOUND",
            format!("batch {batch_id} has no file {file_upload_id}"),
        )
    };
    let id = Uuid::parse_str(&file_upload_id).map_err(|_| not_found())?;
    state
        .access
        .check_remove(&batch_id, &caller.user_id)
        .await?;

    let now: DateTime<Utc> = Utc::now().trunc_subsecs(6);
    let txn = state.outbox.begin().await?;
    let removed = txn
        .query_one(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "UPDATE file_uploads SET status = 'removed', removed_at = $3
             WHERE file_upload_id = $1 AND batch_id = $2 AND status <> 'removed'
             RETURNING filename",
            [id.into(), batch_id.clone().into(), now.into()],
        ))
        .await?;
    let Some(row) = removed else {
        txn.rollback().await?;
        return Err(not_found());
    };
    let filename: String = row.try_get("", "filename")?;
    let event = BatchFileRemovedV1 {
        event: "batch.file.removed".into(),
        batch_id: batch_id.clone(),
        file_upload_id: id,
        filename: filename.clone(),
        user_id: caller.user_id.clone(),
        correlation_id: caller.correlation_id,
        timestamp: now,
    };
    state
        .events
        .add(&txn, event.into(), caller.traceparent.clone())
        .await?;
    txn.commit().await?;
    metrics::counter!(m::FILES_REMOVED_TOTAL).increment(1);
    info!(
        batch_id = %batch_id,
        file_upload_id = %id,
        user_id = %caller.user_id,
        correlation_id = %caller.correlation_id,
        "file removed"
    );
    let body = serde_json::json!({
        "batch_id": batch_id,
        "file_upload_id": id,
        "filename": filename,
        "status": status::REMOVED,
        "correlation_id": caller.correlation_id,
    });
    Ok(Json(body).into_response())
}

async fn healthz(State(state): State<AppState>) -> Response {
    outbox_cli::relay::health(&state.outbox).await
}

async fn render_metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::child_traceparent;

    #[test]
    fn a_valid_traceparent_continues_its_trace_with_a_new_span() {
        let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let child = child_traceparent(incoming).unwrap();
        assert!(child.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
        assert!(child.ends_with("-01"));
        assert_ne!(child, incoming, "a span of our own");
        assert_eq!(child.len(), incoming.len());
    }

    #[test]
    fn invalid_trace_context_is_ignored() {
        for bad in [
            "",
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473x-00f067aa0ba902b7-01",
        ] {
            assert_eq!(child_traceparent(bad), None, "{bad}");
        }
    }
}
