//! Helpers shared by the File Service's integration tests.
#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use file_service::config::Config;
use file_service::db::Migrator;
use http_body_util::BodyExt;
use outbox_seaorm::entity as outbox;
use outbox_test_harness::TestDatabase;
use sea_orm::{DatabaseConnection, EntityTrait, PaginatorTrait};
use sea_orm_migration::MigratorTrait;
use tower::ServiceExt;

pub mod hostile;

pub const BOUNDARY: &str = "x-test-boundary-7f3a";

/// A configuration for `db_url` with the given extra variables.
pub fn config(db_url: &str, bootstrap: &str, extra: &[(&str, &str)]) -> Config {
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    env.insert("DATABASE_URL".into(), db_url.into());
    env.insert("KAFKA_BOOTSTRAP_SERVERS".into(), bootstrap.into());
    env.insert("OUTBOX_POLL_INTERVAL_MS".into(), "100".into());
    env.insert("OUTBOX_STATS_INTERVAL_MS".into(), "200".into());
    for (k, v) in extra {
        env.insert((*k).into(), (*v).into());
    }
    let mut config = Config::from_env(&env).expect("test configuration");
    // The processor runs `.docx`/`.pdf` extraction as a child: the real binary, not this test.
    config.extract_program = env!("CARGO_BIN_EXE_file-service").into();
    config
}

/// A topic prefix of the test's own, and the service's four topics created under it (deleted
/// when the returned values drop).
pub async fn topics(bootstrap: &str) -> (String, Vec<outbox_test_harness::TestTopic>) {
    let prefix = format!("{}.", outbox_test_harness::unique_name("fs"));
    let mut topics = Vec::new();
    for topic in file_service::events::TOPICS {
        topics.push(
            outbox_test_harness::TestTopic::create_named(bootstrap, &format!("{prefix}{topic}"), 3)
                .await,
        );
    }
    (prefix, topics)
}

/// A migrated database of the test's own.
pub async fn migrated() -> (TestDatabase, DatabaseConnection) {
    let db = TestDatabase::create().await;
    let conn = db.connect().await;
    Migrator::up(&conn, None).await.expect("migrations");
    (db, conn)
}

/// A multipart body part.
pub enum Part<'a> {
    Text(&'a str, &'a str),
    File(&'a str, &'a [u8]),
}

/// Encodes `parts` as multipart/form-data with [`BOUNDARY`].
pub fn multipart(parts: &[Part<'_>]) -> Vec<u8> {
    let mut body = Vec::new();
    for part in parts {
        body.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        match part {
            Part::Text(name, value) => {
                body.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
                        .as_bytes(),
                );
            }
            Part::File(filename, bytes) => {
                body.extend_from_slice(
                    format!(
                        "Content-Disposition: form-data; name=\"files\"; filename=\"{filename}\"\r\n\
                         Content-Type: application/octet-stream\r\n\r\n"
                    )
                    .as_bytes(),
                );
                body.extend_from_slice(bytes);
                body.extend_from_slice(b"\r\n");
            }
        }
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

/// A request builder with the gateway's user header.
pub fn request(method: &str, uri: &str, user: Option<&str>) -> axum::http::request::Builder {
    let mut builder = Request::builder().method(method).uri(uri);
    if let Some(user) = user {
        builder = builder.header("x-user-id", user);
    }
    builder
}

/// A multipart upload request.
pub fn upload(uri: &str, user: Option<&str>, parts: &[Part<'_>]) -> Request<Body> {
    request("POST", uri, user)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(Body::from(multipart(parts)))
        .expect("request")
}

/// Sends one request through the router without a socket.
pub async fn send(
    app: &Router,
    request: Request<Body>,
) -> (StatusCode, axum::http::HeaderMap, serde_json::Value) {
    let response = app.clone().oneshot(request).await.expect("response");
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    let json = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
    });
    (status, headers, json)
}

/// Rows in `file_uploads`, `raw_files` and `event_outbox`.
pub async fn counts(conn: &DatabaseConnection) -> (u64, u64, u64) {
    use file_service::db::{file_upload, raw_file};
    (
        file_upload::Entity::find().count(conn).await.unwrap(),
        raw_file::Entity::find().count(conn).await.unwrap(),
        outbox::Entity::find().count(conn).await.unwrap(),
    )
}

/// What the stub orchestrator answers for a batch: status code and JSON body.
pub type Answers = Arc<Mutex<HashMap<String, (u16, serde_json::Value)>>>;

/// A Batch Orchestrator on a free local port answering from `answers` (404 for unknown
/// batches). Returns its base URL.
pub async fn orchestrator(answers: Answers) -> String {
    use axum::extract::{Path, State};
    use axum::routing::get;
    let app = Router::new()
        .route(
            "/internal/v1/batches/{batch_id}/pipeline-state",
            get(
                |State(answers): State<Answers>, Path(batch_id): Path<String>| async move {
                    let answer = answers.lock().unwrap().get(&batch_id).cloned();
                    match answer {
                        Some((code, body)) => {
                            (StatusCode::from_u16(code).unwrap(), axum::Json(body))
                        }
                        None => (
                            StatusCode::NOT_FOUND,
                            axum::Json(serde_json::json!({"error": "not found"})),
                        ),
                    }
                },
            ),
        )
        .with_state(answers);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    url
}

/// The orchestrator's answer for a batch owned by `user` with the phases in `states`.
pub fn pipeline_state(user: &str, states: &[(&str, &str)]) -> serde_json::Value {
    let mut phases = serde_json::Map::new();
    for phase in ["spellcheck", "ai_feedback", "cj_assessment", "nlp"] {
        let status = states
            .iter()
            .find(|(p, _)| *p == phase)
            .map_or("pending", |(_, s)| *s);
        phases.insert(phase.into(), serde_json::json!({"status": status}));
    }
    serde_json::json!({"user_id": user, "pipeline_state": phases})
}

/// A sample essay from `samples/`.
pub fn sample(name: &str) -> Vec<u8> {
    std::fs::read(format!("{}/samples/{name}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

/// A test fixture from `tests/fixtures/`.
pub fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!(
        "{}/tests/fixtures/{name}",
        env!("CARGO_MANIFEST_DIR")
    ))
    .unwrap()
}
