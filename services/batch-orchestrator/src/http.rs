//! The HTTP API: routes, the correlation id, errors.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, Path, Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{Next, from_fn};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use metrics_exporter_prometheus::PrometheusHandle;
use outbox::Outbox;
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use serde_json::{Value, json};
use tracing::{info, warn};
use uuid::Uuid;

use crate::metrics as m;
use crate::pipeline::PipelineState;
use crate::registration::{Invalid, register, validate};

/// The request's correlation id header.
pub const CORRELATION_ID_HEADER: &str = "x-correlation-id";

/// The service's name in `/healthz`.
pub const SERVICE_NAME: &str = "batch-orchestrator";

/// What `/healthz` reports about the inbox's consumers.
pub trait ConsumerHealth: Send + Sync {
    /// Whether every consumer runs, and details for the body.
    fn report(&self) -> (bool, Value);
}

impl ConsumerHealth for outbox::Inbox {
    fn report(&self) -> (bool, Value) {
        let status = self.status();
        let assignment: Vec<Value> = self
            .assignment()
            .into_iter()
            .map(|(topic, partition)| json!({"topic": topic, "partition": partition}))
            .collect();
        (
            status.running,
            json!({
                "running": status.running,
                "topics": self.topics(),
                "assignment": assignment,
                "consumed": status.consumed,
                "duplicates": status.duplicates,
                "rejected": status.rejected,
                "last_error": status.last_error,
                "last_message_at": status.last_message_at,
            }),
        )
    }
}

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    /// The outbox: transactions whose commit wakes the relay, the relay's state, the database.
    pub outbox: Outbox,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// The topic prefix of produced events.
    pub topic_prefix: String,
    /// The most essays one registration may expect.
    pub max_essays: u32,
    /// The largest request body.
    pub max_request_bytes: usize,
    /// The inbox's consumers, once they run; `None` leaves them out of `/healthz`.
    pub consumers: Option<Arc<dyn ConsumerHealth>>,
}

/// An error answer: `{"error": {"code": "...", "message": "..."}}`, with `details` for
/// validation errors.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    details: Option<Value>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            details: None,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(details) = self.details {
            error["details"] = details;
        }
        (self.status, Json(json!({ "error": error }))).into_response()
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

/// The service's router; `app(state).oneshot(request)` serves one request without a socket.
pub fn app(state: AppState) -> Router {
    let limit = state.max_request_bytes;
    Router::new()
        .route("/v1/batches/register", post(register_batch))
        .route(
            "/internal/v1/batches/{batch_id}/pipeline-state",
            get(pipeline_state),
        )
        .route("/v1/batches/{batch_id}/status", get(batch_status))
        .route("/healthz", get(healthz))
        .route("/metrics", get(render_metrics))
        .route_layer(from_fn(m::track))
        .layer(DefaultBodyLimit::max(limit))
        .layer(from_fn(correlation))
        .with_state(state)
}

async fn register_batch(
    State(state): State<AppState>,
    Extension(CorrelationId(correlation_id)): Extension<CorrelationId>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "REQUEST_TOO_LARGE",
                format!(
                    "the request body is over the {} byte limit",
                    state.max_request_bytes
                ),
            )
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "INVALID_BODY", e.body_text())
        }
    })?;
    let request = validate(&body, state.max_essays).map_err(|invalid| match invalid {
        Invalid::NotJson(message) => {
            ApiError::new(StatusCode::BAD_REQUEST, "INVALID_JSON", message)
        }
        Invalid::Fields(errors) => ApiError {
            details: serde_json::to_value(errors).ok(),
            ..ApiError::new(
                StatusCode::BAD_REQUEST,
                "VALIDATION_ERROR",
                "Validation Error",
            )
        },
    })?;
    let registered = register(&state.outbox, &state.topic_prefix, &request, correlation_id)
        .await
        .map_err(|e| {
            warn!(error = %e, "batch registration failed; nothing was written");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "REGISTRATION_FAILED",
                "Failed to register batch.",
            )
        })?;
    metrics::counter!(m::BATCHES_REGISTERED_TOTAL).increment(1);
    info!(
        batch_id = %registered.batch_id,
        essays = registered.essay_ids.len(),
        correlation_id = %correlation_id,
        "batch registered"
    );
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({
            "batch_id": registered.batch_id,
            "correlation_id": correlation_id,
            "status": "registered",
        })),
    )
        .into_response())
}

/// A batch row as the read routes need it.
struct BatchRow {
    status: String,
    pipeline_configuration: Option<String>,
    processing_metadata: Option<String>,
    total_essays: Option<i32>,
}

async fn load_batch(outbox: &Outbox, batch_id: &str) -> Result<Option<BatchRow>, sea_orm::DbErr> {
    // Ids are generated uuids (36 characters): a longer one cannot exist.
    if batch_id.len() > 36 {
        return Ok(None);
    }
    let row = outbox
        .connection()
        .query_one(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT status, pipeline_configuration::text AS pipeline_configuration,
                    processing_metadata::text AS processing_metadata, total_essays
             FROM batches WHERE id = $1",
            [batch_id.into()],
        ))
        .await?;
    row.map(|row| {
        Ok(BatchRow {
            status: row.try_get("", "status")?,
            pipeline_configuration: row.try_get("", "pipeline_configuration")?,
            processing_metadata: row.try_get("", "processing_metadata")?,
            total_essays: row.try_get("", "total_essays")?,
        })
    })
    .transpose()
}

fn parsed_pipeline(row: &BatchRow) -> Option<Value> {
    let raw = row.pipeline_configuration.as_deref()?;
    serde_json::from_str::<PipelineState>(raw)
        .ok()
        .map(|state| state.to_json())
}

fn metadata(row: &BatchRow) -> Option<serde_json::Map<String, Value>> {
    serde_json::from_str(row.processing_metadata.as_deref()?).ok()
}

async fn pipeline_state(
    State(state): State<AppState>,
    Path(batch_id): Path<String>,
) -> Result<Response, ApiError> {
    let failed = |e: sea_orm::DbErr| {
        warn!(error = %e, "pipeline state read failed");
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "Failed to get internal pipeline state",
        )
    };
    let not_found = || {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "PIPELINE_STATE_NOT_FOUND",
            "Pipeline state not found for batch",
        )
    };
    let row = load_batch(&state.outbox, &batch_id)
        .await
        .map_err(failed)?
        .ok_or_else(not_found)?;
    let pipeline = parsed_pipeline(&row).ok_or_else(not_found)?;
    // The File Service reads `user_id` as a string: a row without one is a fault of this
    // service, not an unknown batch.
    let user_id = metadata(&row)
        .and_then(|m| m.get("user_id")?.as_str().map(str::to_owned))
        .ok_or_else(|| {
            warn!(batch_id, "batch without a readable user_id");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL_ERROR",
                "Failed to get internal pipeline state",
            )
        })?;
    Ok(Json(json!({
        "batch_id": batch_id,
        "user_id": user_id,
        "pipeline_state": pipeline,
    }))
    .into_response())
}

async fn batch_status(
    State(state): State<AppState>,
    Path(batch_id): Path<String>,
) -> Result<Response, ApiError> {
    let row = load_batch(&state.outbox, &batch_id)
        .await
        .map_err(|e| {
            warn!(error = %e, "batch status read failed");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL_ERROR",
                "Failed to get batch status",
            )
        })?
        .ok_or_else(|| {
            ApiError::new(StatusCode::NOT_FOUND, "BATCH_NOT_FOUND", "Batch not found")
        })?;
    let metadata = metadata(&row).unwrap_or_default();
    Ok(Json(json!({
        "batch_id": batch_id,
        "status": row.status,
        "batch_context": {
            "course_code": metadata.get("course_code"),
            "expected_essay_count": row.total_essays,
            "user_id": metadata.get("user_id"),
        },
        "pipeline_state": parsed_pipeline(&row),
    }))
    .into_response())
}

/// `200` while the database answers, the relay runs and (once wired) every consumer runs;
/// else `503`. Each database call is bounded to 2 s.
async fn healthz(State(state): State<AppState>) -> Response {
    let outbox = &state.outbox;
    let database_ok = matches!(
        tokio::time::timeout(
            Duration::from_secs(2),
            outbox.connection().execute_unprepared("SELECT 1"),
        )
        .await,
        Ok(Ok(_))
    );
    let stats = if database_ok {
        tokio::time::timeout(Duration::from_secs(2), outbox.stats())
            .await
            .ok()
            .and_then(Result::ok)
    } else {
        None
    };
    let relay = outbox.status().unwrap_or_default();
    let (consumers_ok, consumers) = match &state.consumers {
        Some(consumers) => consumers.report(),
        None => (true, Value::Null),
    };
    let healthy = database_ok && relay.running && consumers_ok;
    let body = json!({
        "service": SERVICE_NAME,
        "status": if healthy { "healthy" } else { "unhealthy" },
        "message": if healthy {
            "Batch Orchestrator is healthy"
        } else {
            "Batch Orchestrator is unhealthy: see checks and dependencies"
        },
        "version": env!("CARGO_PKG_VERSION"),
        "checks": {
            "service_responsive": true,
            "dependencies_available": healthy,
        },
        "dependencies": {
            "database": {"status": if database_ok { "healthy" } else { "unhealthy" }},
            "outbox": {
                "pending": stats.as_ref().map(|s| s.pending),
                "oldest_pending_age_seconds": stats.as_ref().map(|s| s.oldest_pending_age.map_or(0.0, |a| a.as_secs_f64())),
                "dead_lettered": stats.as_ref().map(|s| s.dead_lettered),
                "relay": {
                    "running": relay.running,
                    "leader": relay.leader,
                    "last_poll_at": relay.last_poll_at,
                    "relayed": relay.relayed,
                    "last_error": relay.last_error,
                },
            },
            "inbox": consumers,
        },
        "environment": null,
    });
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn render_metrics(State(state): State<AppState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}
