//! Helpers shared by the Batch Orchestrator's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use batch_orchestrator::config::Config;
use batch_orchestrator::db::Migrator;
use batch_orchestrator::http::AppState;
use http_body_util::BodyExt;
use outbox_seaorm::entity as outbox_rows;
use outbox_test_harness::TestDatabase;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, EntityTrait, QueryOrder, Statement};
use sea_orm_migration::MigratorTrait;
use serde_json::{Value, json};
use tower::ServiceExt;

/// A configuration for `db_url` with the given extra variables.
pub fn config(db_url: &str, bootstrap: &str, extra: &[(&str, &str)]) -> Config {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert("DATABASE_URL".into(), db_url.into());
    env.insert("KAFKA_BOOTSTRAP_SERVERS".into(), bootstrap.into());
    env.insert("OUTBOX_POLL_INTERVAL_MS".into(), "100".into());
    for (k, v) in extra {
        env.insert((*k).into(), (*v).into());
    }
    Config::from_env(&env).expect("test configuration")
}

/// A migrated database of the test's own.
pub async fn migrated() -> (TestDatabase, DatabaseConnection) {
    let db = TestDatabase::create().await;
    let conn = db.connect().await;
    Migrator::up(&conn, None).await.expect("migrations");
    (db, conn)
}

/// A service on a migrated database of its own (relay not started).
pub struct Service {
    pub db: TestDatabase,
    pub conn: DatabaseConnection,
    pub state: AppState,
    pub app: Router,
}

/// Builds the service on a fresh database with the given extra variables.
pub async fn service(extra: &[(&str, &str)]) -> Service {
    let (db, conn) = migrated().await;
    let bootstrap = outbox_test_harness::kafka_bootstrap_servers().await;
    let config = config(db.url(), &bootstrap, extra);
    let state = batch_orchestrator::app::build(&config, conn.clone()).expect("build");
    let app = batch_orchestrator::http::app(state.clone());
    Service {
        db,
        conn,
        state,
        app,
    }
}

/// Sends one request through the router without a socket.
pub async fn send(app: &Router, request: Request<Body>) -> (StatusCode, HeaderMap, Value) {
    let response = app.clone().oneshot(request).await.expect("response");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let json = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    (status, headers, json)
}

/// `POST /v1/batches/register` with `body` (raw bytes).
pub fn register_request(body: impl Into<Body>, correlation: Option<&str>) -> Request<Body> {
    let mut builder = Request::builder()
        .method("POST")
        .uri("/v1/batches/register")
        .header("content-type", "application/json");
    if let Some(id) = correlation {
        builder = builder.header("x-correlation-id", id);
    }
    builder.body(body.into()).expect("request")
}

/// A `GET` request.
pub fn get(uri: &str) -> Request<Body> {
    Request::builder()
        .uri(uri)
        .body(Body::empty())
        .expect("request")
}

/// A valid registration body: `count` essays, GUEST unless `class_id` is given.
pub fn registration(count: u32, class_id: Option<&str>) -> Value {
    json!({
        "expected_essay_count": count,
        "course_code": "ENG5",
        "user_id": "teacher-1",
        "org_id": "org-1",
        "class_id": class_id,
    })
}

/// Registers a batch through the route and returns its id.
pub async fn register(app: &Router, body: &Value) -> String {
    let (status, _, answer) = send(app, register_request(body.to_string(), None)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    answer["batch_id"].as_str().expect("batch_id").to_owned()
}

/// Rows of `event_outbox`, oldest first.
pub async fn outbox_rows(conn: &DatabaseConnection) -> Vec<outbox_rows::Model> {
    outbox_rows::Entity::find()
        .order_by_asc(outbox_rows::Column::Id)
        .all(conn)
        .await
        .expect("outbox rows")
}

/// The outbox rows of `topic` (exact name), payloads parsed.
pub async fn events(conn: &DatabaseConnection, topic: &str) -> Vec<(outbox_rows::Model, Value)> {
    outbox_rows(conn)
        .await
        .into_iter()
        .filter(|row| row.topic == topic)
        .map(|row| {
            let value = serde_json::from_slice(&row.payload).expect("json payload");
            (row, value)
        })
        .collect()
}

/// One number from `sql`.
pub async fn scalar(conn: &DatabaseConnection, sql: &str) -> i64 {
    let row = conn
        .query_one(Statement::from_string(DbBackend::Postgres, sql.to_owned()))
        .await
        .expect("query")
        .expect("a row");
    row.try_get_by_index::<i64>(0).expect("a bigint")
}

/// One text value from `sql` (NULL as `None`).
pub async fn text(conn: &DatabaseConnection, sql: &str) -> Option<String> {
    let row = conn
        .query_one(Statement::from_string(DbBackend::Postgres, sql.to_owned()))
        .await
        .expect("query")
        .expect("a row");
    row.try_get_by_index::<Option<String>>(0).expect("text")
}

/// Rows in `batches`, `essay_slots` and `event_outbox`.
pub async fn counts(conn: &DatabaseConnection) -> (i64, i64, i64) {
    (
        scalar(conn, "SELECT count(*) FROM batches").await,
        scalar(conn, "SELECT count(*) FROM essay_slots").await,
        scalar(conn, "SELECT count(*) FROM event_outbox").await,
    )
}
