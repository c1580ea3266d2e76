//! The admin API: an axum router any service mounts (for example under `/admin/outbox`), with
//! the same operations as the `outbox` commands.
//!
//! | method and path | what | answers |
//! |---|---|---|
//! | `GET /stats` | the backlog | 200 `{"pending", "oldest_pending_age_seconds", "dead_lettered"}` |
//! | `GET /dead-letters?topic=&key=&event_type=&aggregate_type=&aggregate_id=&since=&until=&older_than=&after=&limit=` | a page of dead letters in id order (`limit` 1-1000, default 50) | 200 `{"dead_letters": [...], "next_after"}` |
//! | `GET /dead-letters/{id}` | one dead letter with headers and payload | 200, or 404 |
//! | `POST /dead-letters/replay` | make dead letters pending again | 200 `{"action", "dry_run", "count"}` |
//! | `POST /dead-letters/discard` | delete dead letters | 200 `{"action", "dry_run", "count"}` |
//!
//! The replay and discard bodies name rows, `{"ids": [42, 43]}`, or select them,
//! `{"all": true, "filter": {"topic": "...", "older_than": "2h"}}`; `"dry_run": true` changes
//! nothing and counts. Every request needs `Authorization: Bearer <OUTBOX_ADMIN_TOKEN>` (401
//! otherwise). Errors are JSON, `{"error": {"code": "...", "message": "..."}}`: 400 for a bad
//! query, path or body, 401, 404 for an unknown id or route, 405, 413 for a body over 64 KiB,
//! 415 for a body that is not JSON, 503 when the database fails. Every replay and discard is
//! logged with the caller (the `X-Outbox-Operator` header, else `unknown`) and the count.
//!
//! Without a token there is no admin API: [`mount`] leaves the router as it was.
//!
//! ```no_run
//! # async fn example(db: sea_orm::DatabaseConnection) -> Result<(), Box<dyn std::error::Error>> {
//! use outbox_cli::api;
//! use outbox_cli::env::{ProcessEnv, admin_token};
//!
//! let app: axum::Router = axum::Router::new().route("/", axum::routing::get(|| async { "hello" }));
//! // Mounted only when OUTBOX_ADMIN_TOKEN is set.
//! let app = api::mount(app, "/admin/outbox", db, admin_token(&ProcessEnv)?)?;
//! # let _ = app; Ok(()) }
//! ```

use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use sea_orm::DatabaseConnection;
use serde::Deserialize;
use tracing::warn;

use crate::ops::{Action, Age, Filter, Operations, OpsError, Target};

/// The largest request body the API reads.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// A bearer token for the admin API: 16 characters or more, printable ASCII without spaces.
/// Never printed: its `Debug` hides it.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(Arc<str>);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(..)")
    }
}

impl AdminToken {
    /// Checks and wraps a token.
    pub fn new(token: impl Into<String>) -> Result<Self, String> {
        let token = token.into();
        if token.len() < 16 {
            return Err("must be at least 16 characters".into());
        }
        if !token.bytes().all(|b| b.is_ascii_graphic()) {
            return Err("may hold only printable ASCII without spaces".into());
        }
        Ok(Self(token.into()))
    }

    /// Compares in time that does not depend on where the first difference is.
    fn matches(&self, candidate: &[u8]) -> bool {
        let expected = self.0.as_bytes();
        if candidate.len() != expected.len() {
            return false;
        }
        expected
            .iter()
            .zip(candidate)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
    }
}

#[derive(Clone)]
struct AdminState {
    ops: Arc<Operations>,
    token: AdminToken,
}

/// A JSON error answer.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({"error": {"code": self.code, "message": self.message}});
        let mut response = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

impl From<OpsError> for ApiError {
    fn from(error: OpsError) -> Self {
        match error {
            OpsError::Invalid(message) => {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_request", message)
            }
            OpsError::NotFound(id) => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no dead letter has id {id}"),
            ),
            other => {
                warn!(error = %other, "outbox admin request failed");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "database_unavailable",
                    other.to_string(),
                )
            }
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(rejection: QueryRejection) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_query",
            rejection.body_text(),
        )
    }
}

impl From<PathRejection> for ApiError {
    fn from(rejection: PathRejection) -> Self {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_path",
            rejection.body_text(),
        )
    }
}

impl From<JsonRejection> for ApiError {
    fn from(rejection: JsonRejection) -> Self {
        let status = rejection.status();
        let code = match status {
            StatusCode::PAYLOAD_TOO_LARGE => "body_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "not_json",
            _ => "invalid_body",
        };
        // Axum answers 422 for JSON of the wrong shape; to a client both are a bad body.
        let status = if status == StatusCode::UNPROCESSABLE_ENTITY {
            StatusCode::BAD_REQUEST
        } else {
            status
        };
        ApiError::new(status, code, rejection.body_text())
    }
}

/// The query of `GET /dead-letters`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    topic: Option<String>,
    key: Option<String>,
    event_type: Option<String>,
    aggregate_type: Option<String>,
    aggregate_id: Option<String>,
    since: Option<chrono::DateTime<chrono::Utc>>,
    until: Option<chrono::DateTime<chrono::Utc>>,
    older_than: Option<Age>,
    after: Option<i64>,
    limit: Option<u64>,
}

/// The body of the replay and discard routes.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SelectionBody {
    #[serde(default)]
    ids: Vec<i64>,
    #[serde(default)]
    all: bool,
    #[serde(default)]
    filter: Filter,
    #[serde(default)]
    dry_run: bool,
}

async fn stats(State(state): State<AdminState>) -> Result<Response, ApiError> {
    Ok(Json(state.ops.stats().await?).into_response())
}

async fn list(
    State(state): State<AdminState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(query) = query?;
    let filter = Filter {
        topic: query.topic,
        key: query.key,
        event_type: query.event_type,
        aggregate_type: query.aggregate_type,
        aggregate_id: query.aggregate_id,
        since: query.since,
        until: query.until,
        older_than: query.older_than,
    };
    let page = state
        .ops
        .list(&filter, query.after, query.limit.unwrap_or(50))
        .await?;
    Ok(Json(page).into_response())
}

async fn show(
    State(state): State<AdminState>,
    id: Result<Path<i64>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = id?;
    Ok(Json(state.ops.show(id).await?).into_response())
}

/// Who asked, for the log: the `X-Outbox-Operator` header (printable, at most 100 characters).
fn caller(headers: &HeaderMap) -> String {
    headers
        .get("x-outbox-operator")
        .and_then(|v| v.to_str().ok())
        .map(|v| crate::commands::sanitize(v.trim(), 100))
        .filter(|v| !v.is_empty())
        .map_or_else(|| "api:unknown".to_owned(), |v| format!("api:{v}"))
}

async fn apply(
    state: AdminState,
    action: Action,
    headers: HeaderMap,
    body: Result<Json<SelectionBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    let target = Target::new(body.ids, body.all, body.filter)?;
    let outcome = state
        .ops
        .apply(action, &target, body.dry_run, &caller(&headers))
        .await?;
    Ok(Json(outcome).into_response())
}

async fn replay(
    State(state): State<AdminState>,
    headers: HeaderMap,
    body: Result<Json<SelectionBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    apply(state, Action::Replay, headers, body).await
}

async fn discard(
    State(state): State<AdminState>,
    headers: HeaderMap,
    body: Result<Json<SelectionBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    apply(state, Action::Discard, headers, body).await
}

async fn authorize(State(state): State<AdminState>, request: Request, next: Next) -> Response {
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.as_bytes().strip_prefix(b"Bearer "));
    match presented {
        Some(token) if state.token.matches(token) => next.run(request).await,
        Some(_) => {
            warn!(path = %request.uri().path(), "outbox admin request with a wrong token");
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "wrong bearer token",
            )
            .into_response()
        }
        None => ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "send Authorization: Bearer <OUTBOX_ADMIN_TOKEN>",
        )
        .into_response(),
    }
}

async fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such admin route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method",
    )
}

/// The admin router over the outbox in `db`, every route behind `token`.
pub fn router<S>(db: DatabaseConnection, token: AdminToken) -> Result<Router<S>, OpsError>
where
    S: Clone + Send + Sync + 'static,
{
    let state = AdminState {
        ops: Arc::new(Operations::new(db)?),
        token,
    };
    Ok(Router::new()
        .route("/stats", get(stats))
        .route("/dead-letters", get(list))
        .route("/dead-letters/{id}", get(show))
        .route("/dead-letters/replay", post(replay))
        .route("/dead-letters/discard", post(discard))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            authorize,
        ))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state))
}

/// Nests the admin router under `path` when a token is configured; without one, returns `app`
/// unchanged (no open admin by default).
pub fn mount<S>(
    app: Router<S>,
    path: &str,
    db: DatabaseConnection,
    token: Option<AdminToken>,
) -> Result<Router<S>, OpsError>
where
    S: Clone + Send + Sync + 'static,
{
    match token {
        Some(token) => Ok(app.nest(path, router(db, token)?)),
        None => Ok(app),
    }
}
