//! `outbox relay`: the relay as a sidecar beside any service whose database has `event_outbox`,
//! whatever language the service is written in. Run one beside every replica: the PostgreSQL
//! advisory lock elects one active relay, the others stand by and take over within
//! `OUTBOX_LEADER_RETRY_INTERVAL_MS`.
//!
//! It serves `GET /healthz` (200 while the database answers and the relay runs, 503 otherwise,
//! with the backlog and the relay's state), `GET /metrics` (Prometheus) and, with
//! `OUTBOX_ADMIN_TOKEN` set, the admin API under `/admin/outbox`. On SIGTERM or ctrl-c it stops
//! taking requests, finishes the batch in flight (sent, acknowledged by Kafka and in the
//! database), flushes the producer and exits 0.

use std::sync::OnceLock;
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use outbox::Outbox;
use outbox_core::OutboxError;
use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection};
use tracing::{error, info, warn};

use crate::env::RelayConfig;

/// Why the sidecar could not start or stop cleanly.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RelayError {
    /// The database could not be reached or refused a statement.
    #[error("database error: {0}")]
    Database(#[from] sea_orm::DbErr),
    /// The database has no outbox table.
    #[error(
        "the database has no event_outbox table: run `outbox migrate up` (or apply `outbox migrate sql`) first"
    )]
    NotMigrated,
    /// The relay or the publisher failed.
    #[error("outbox error: {0}")]
    Outbox(#[from] outbox_core::OutboxError),
    /// The Kafka producer could not be created.
    #[error("kafka error: {0}")]
    Kafka(#[from] outbox_kafka::Error),
    /// The admin API could not be built.
    #[error("admin api error: {0}")]
    Admin(#[from] crate::ops::OpsError),
    /// The HTTP listener failed.
    #[error("http server error: {0}")]
    Io(#[from] std::io::Error),
}

/// Connects to `url` with the pool settings every `outbox` command uses.
pub async fn connect(
    url: &str,
    max_connections: u32,
) -> Result<DatabaseConnection, sea_orm::DbErr> {
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(max_connections)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(10))
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false);
    Database::connect(options).await
}

/// The process's Prometheus recorder, installed on first use.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Another recorder may already be installed (a test); then this one renders nothing.
            let _ = metrics::set_global_recorder(recorder);
            outbox_core::metrics::describe();
            handle
        })
        .clone()
}

#[derive(Clone)]
struct SidecarState {
    outbox: Outbox,
    metrics: PrometheusHandle,
}

async fn healthz(State(state): State<SidecarState>) -> Response {
    health(&state.outbox).await
}

/// The `/healthz` response of a service running the outbox's relay: `200` with
/// `{"status": "ok", ...}` while the database answers and the relay runs, else `503` with
/// `"unavailable"`; the body reports the backlog (pending, oldest pending age, dead letters) and
/// the relay (running, leader, last poll, events relayed, last error). Each database call is
/// bounded to 2 s. The sidecar and the File Service answer with it.
pub async fn health(outbox: &Outbox) -> Response {
    let database = tokio::time::timeout(
        Duration::from_secs(2),
        outbox.connection().execute_unprepared("SELECT 1"),
    )
    .await;
    let database_ok = matches!(database, Ok(Ok(_)));
    let stats = if database_ok {
        tokio::time::timeout(Duration::from_secs(2), outbox.stats())
            .await
            .ok()
            .and_then(Result::ok)
    } else {
        None
    };
    let relay = outbox.status().unwrap_or_default();
    let healthy = database_ok && relay.running;
    let body = serde_json::json!({
        "status": if healthy { "ok" } else { "unavailable" },
        "database": {"ok": database_ok},
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
    });
    let status = if healthy {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn render_metrics(State(state): State<SidecarState>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        state.metrics.render(),
    )
        .into_response()
}

/// Returns on SIGTERM or ctrl-c (logging which was requested): the graceful-shutdown signal of
/// the sidecar and of the File Service.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            error!(error = %e, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                error!(error = %e, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = terminate => {}
    }
    info!("shutdown requested");
}

/// Runs the sidecar until SIGTERM or ctrl-c, then stops the relay cleanly.
pub async fn run(config: RelayConfig) -> Result<(), RelayError> {
    let metrics = metrics_handle();
    let db = connect(&config.common.database_url, 8).await?;
    if db
        .execute_unprepared("SELECT 1 FROM event_outbox LIMIT 0")
        .await
        .is_err()
    {
        return Err(RelayError::NotMigrated);
    }
    let outbox = Outbox::builder(db.clone())
        .kafka(config.kafka.clone())
        .settings(config.relay.clone())
        .build()
        .map_err(OutboxError::from)?;
    let state = SidecarState {
        outbox: outbox.clone(),
        metrics,
    };
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/metrics", get(render_metrics))
        .with_state(state);
    let admin = config.admin_token.is_some();
    let app = crate::api::mount(app, "/admin/outbox", db, config.admin_token.clone())?;
    let listener = tokio::net::TcpListener::bind(config.http_addr).await?;
    outbox.start().map_err(OutboxError::from)?;
    info!(
        address = %listener.local_addr()?,
        admin_api = admin,
        "outbox sidecar listening"
    );
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await;
    let stopped = outbox.stop().await.map_err(OutboxError::from);
    served?;
    match stopped {
        Ok(()) => {
            info!("outbox sidecar stopped");
            Ok(())
        }
        Err(e) => {
            warn!(error = %e, "the relay did not stop cleanly; unsent events stay in the outbox");
            Err(e.into())
        }
    }
}
