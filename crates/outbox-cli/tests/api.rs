//! The admin API through `oneshot` against the real PostgreSQL: every route and status code, a
//! missing or wrong token, a filter that matches nothing, and no router without a token.

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use http_body_util::BodyExt;
use outbox_cli::api::{self, AdminToken};
use outbox_test_harness::TestDatabase;
use sea_orm::{ConnectionTrait, DatabaseConnection};
use sea_orm_migration::MigratorTrait;
use tower::ServiceExt;

const TOKEN: &str = "test-token-0123456789";

async fn migrated() -> (TestDatabase, DatabaseConnection) {
    let db = TestDatabase::create().await;
    let conn = db.connect().await;
    outbox_seaorm::OutboxMigrator::up(&conn, None)
        .await
        .unwrap();
    conn.execute_unprepared(
        "INSERT INTO event_outbox (event_id, aggregate_type, aggregate_id, event_type, topic, event_key, payload)
         SELECT gen_random_uuid(), 'order', 'o' || n, 'T' || (n % 2), 'topic.' || (n % 2), 'k' || n, '\\x7b7d'
         FROM generate_series(1, 6) AS n;
         UPDATE event_outbox SET dead_lettered_at = now() - interval '2 hours', attempts = 10,
                last_error = 'too large' WHERE id <= 4;",
    )
    .await
    .unwrap();
    (db, conn)
}

fn app(conn: &DatabaseConnection) -> Router {
    let host = Router::new().route("/", axum::routing::get(|| async { "host" }));
    api::mount(
        host,
        "/admin/outbox",
        conn.clone(),
        Some(AdminToken::new(TOKEN).unwrap()),
    )
    .unwrap()
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (StatusCode, serde_json::Value) {
    let mut request = Request::builder().method(method).uri(uri);
    if let Some(token) = token {
        request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
    }
    let request = match body {
        Some(body) => request
            .header(header::CONTENT_TYPE, "application/json")
            .header("x-outbox-operator", "alice")
            .body(Body::from(body.to_owned())),
        None => request.body(Body::empty()),
    }
    .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&bytes).unwrap_or_else(|_| {
        serde_json::Value::String(String::from_utf8_lossy(&bytes).into_owned())
    });
    (status, value)
}

async fn dead(conn: &DatabaseConnection) -> i64 {
    conn.query_one(sea_orm::Statement::from_string(
        sea_orm::DbBackend::Postgres,
        "SELECT count(*) AS n FROM event_outbox WHERE dead_lettered_at IS NOT NULL",
    ))
    .await
    .unwrap()
    .unwrap()
    .try_get("", "n")
    .unwrap()
}

fn ids(body: &serde_json::Value) -> Vec<i64> {
    body["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn reads_answer_stats_pages_and_single_dead_letters() {
    let (_db, conn) = migrated().await;
    let app = app(&conn);
    let t = Some(TOKEN);

    let (status, stats) = call(&app, "GET", "/admin/outbox/stats", t, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (stats["pending"].clone(), stats["dead_lettered"].clone()),
        (2.into(), 4.into())
    );

    let (status, page) = call(&app, "GET", "/admin/outbox/dead-letters?limit=3", t, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(ids(&page), [1, 2, 3]);
    assert_eq!(page["next_after"], 3);
    let (_, next) = call(
        &app,
        "GET",
        "/admin/outbox/dead-letters?limit=3&after=3",
        t,
        None,
    )
    .await;
    assert_eq!(ids(&next), [4]);
    assert_eq!(next["next_after"], serde_json::Value::Null);

    let (_, topic) = call(
        &app,
        "GET",
        "/admin/outbox/dead-letters?topic=topic.1&older_than=1h",
        t,
        None,
    )
    .await;
    assert_eq!(ids(&topic), [1, 3]);
    let (_, key) = call(
        &app,
        "GET",
        "/admin/outbox/dead-letters?key=k2&event_type=T0",
        t,
        None,
    )
    .await;
    assert_eq!(ids(&key), [2]);
    let (status, nothing) = call(
        &app,
        "GET",
        "/admin/outbox/dead-letters?key=nobody",
        t,
        None,
    )
    .await;
    assert_eq!(
        status,
        StatusCode::OK,
        "a filter that matches nothing is an empty page"
    );
    assert!(ids(&nothing).is_empty());

    let (status, one) = call(&app, "GET", "/admin/outbox/dead-letters/2", t, None).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (one["id"].clone(), one["payload_text"].clone()),
        (2.into(), "{}".into())
    );
    for missing in ["5", "999"] {
        let (status, body) = call(
            &app,
            "GET",
            &format!("/admin/outbox/dead-letters/{missing}"),
            t,
            None,
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{missing}");
        assert_eq!(body["error"]["code"], "not_found");
    }
}

#[tokio::test]
async fn replay_and_discard_change_what_they_select_and_dry_runs_nothing() {
    let (_db, conn) = migrated().await;
    let app = app(&conn);
    let t = Some(TOKEN);

    let (status, dry) = call(
        &app,
        "POST",
        "/admin/outbox/dead-letters/discard",
        t,
        Some(r#"{"all": true, "filter": {"topic": "topic.0"}, "dry_run": true}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        dry,
        serde_json::json!({"action": "discard", "dry_run": true, "count": 2})
    );
    assert_eq!(dead(&conn).await, 4);

    let (status, none) = call(
        &app,
        "POST",
        "/admin/outbox/dead-letters/replay",
        t,
        Some(r#"{"all": true, "filter": {"key": "nobody"}}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        none["count"], 0,
        "a filter that matches nothing changes nothing"
    );
    assert_eq!(dead(&conn).await, 4);

    let (status, replayed) = call(
        &app,
        "POST",
        "/admin/outbox/dead-letters/replay",
        t,
        Some(r#"{"ids": [1, 5]}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        replayed,
        serde_json::json!({"action": "replay", "dry_run": false, "count": 1})
    );

    let (status, discarded) = call(
        &app,
        "POST",
        "/admin/outbox/dead-letters/discard",
        t,
        Some(r#"{"all": true, "filter": {"event_type": "T0", "older_than": "1h"}}"#),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(discarded["count"], 2, "rows 2 and 4");
    assert_eq!(dead(&conn).await, 1, "row 3 is left");
}

#[tokio::test]
async fn a_missing_or_wrong_token_is_refused_on_every_route() {
    let (_db, conn) = migrated().await;
    let app = app(&conn);
    let routes = [
        ("GET", "/admin/outbox/stats", None),
        ("GET", "/admin/outbox/dead-letters", None),
        ("GET", "/admin/outbox/dead-letters/1", None),
        (
            "POST",
            "/admin/outbox/dead-letters/replay",
            Some(r#"{"all": true}"#),
        ),
        (
            "POST",
            "/admin/outbox/dead-letters/discard",
            Some(r#"{"all": true}"#),
        ),
        ("GET", "/admin/outbox/no-such-route", None),
    ];
    let wrong = "test-token-0123456780";
    for (method, uri, body) in routes {
        for token in [None, Some(wrong), Some("short"), Some("")] {
            let (status, answer) = call(&app, method, uri, token, body).await;
            assert_eq!(
                status,
                StatusCode::UNAUTHORIZED,
                "{method} {uri} with {token:?}"
            );
            assert_eq!(answer["error"]["code"], "unauthorized");
        }
    }
    assert_eq!(dead(&conn).await, 4, "nothing replayed or discarded");
    // The host's own routes need no token.
    let (status, _) = call(&app, "GET", "/", None, None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn bad_requests_get_json_errors_and_change_nothing() {
    let (_db, conn) = migrated().await;
    let app = app(&conn);
    let t = Some(TOKEN);
    let cases: &[(&str, &str, Option<&str>, StatusCode, &str)] = &[
        (
            "GET",
            "/admin/outbox/dead-letters?limit=0",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "GET",
            "/admin/outbox/dead-letters?limit=5000",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "GET",
            "/admin/outbox/dead-letters?older_than=soon",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "GET",
            "/admin/outbox/dead-letters?colour=red",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "GET",
            "/admin/outbox/dead-letters?since=yesterday",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_query",
        ),
        (
            "GET",
            "/admin/outbox/dead-letters?topic=",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "GET",
            "/admin/outbox/dead-letters/abc",
            None,
            StatusCode::BAD_REQUEST,
            "invalid_path",
        ),
        (
            "POST",
            "/admin/outbox/dead-letters/replay",
            Some("{}"),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "POST",
            "/admin/outbox/dead-letters/replay",
            Some(r#"{"filter": {"topic": "topic.0"}}"#),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "POST",
            "/admin/outbox/dead-letters/discard",
            Some(r#"{"ids": [1], "all": true}"#),
            StatusCode::BAD_REQUEST,
            "invalid_request",
        ),
        (
            "POST",
            "/admin/outbox/dead-letters/discard",
            Some(r#"{"all": true, "purge": true}"#),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "POST",
            "/admin/outbox/dead-letters/discard",
            Some(r#"{"ids": "all"}"#),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "POST",
            "/admin/outbox/dead-letters/discard",
            Some("not json"),
            StatusCode::BAD_REQUEST,
            "invalid_body",
        ),
        (
            "DELETE",
            "/admin/outbox/dead-letters/1",
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            "GET",
            "/admin/outbox/dead-letters/replay",
            None,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        ),
        (
            "GET",
            "/admin/outbox/nothing-here",
            None,
            StatusCode::NOT_FOUND,
            "not_found",
        ),
    ];
    for (method, uri, body, expected, code) in cases {
        let (status, answer) = call(&app, method, uri, t, *body).await;
        assert_eq!(status, *expected, "{method} {uri} {body:?}: {answer}");
        assert_eq!(
            answer["error"]["code"], *code,
            "{method} {uri} {body:?}: {answer}"
        );
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
    }

    // Not JSON at all, and a body over the limit.
    let request = Request::post("/admin/outbox/dead-letters/discard")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(r#"{"all": true}"#))
        .unwrap();
    let response = app.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let ids: Vec<String> = (0..20_000).map(|i| i.to_string()).collect();
    let huge = format!(r#"{{"ids": [{}]}}"#, ids.join(","));
    assert!(huge.len() > api::MAX_BODY_BYTES);
    let (status, answer) = call(
        &app,
        "POST",
        "/admin/outbox/dead-letters/discard",
        t,
        Some(&huge),
    )
    .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert_eq!(answer["error"]["code"], "body_too_large");
    assert_eq!(dead(&conn).await, 4, "nothing changed");
}

#[tokio::test]
async fn a_failing_database_answers_503() {
    // A database without the outbox table: every statement fails.
    let db = TestDatabase::create().await;
    let conn = db.connect().await;
    let app = app(&conn);
    for (method, uri, body) in [
        ("GET", "/admin/outbox/stats", None),
        ("GET", "/admin/outbox/dead-letters", None),
        ("GET", "/admin/outbox/dead-letters/1", None),
        (
            "POST",
            "/admin/outbox/dead-letters/replay",
            Some(r#"{"all": true}"#),
        ),
        (
            "POST",
            "/admin/outbox/dead-letters/discard",
            Some(r#"{"ids": [1], "dry_run": true}"#),
        ),
    ] {
        let (status, answer) = call(&app, method, uri, Some(TOKEN), body).await;
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{method} {uri}: {answer}"
        );
        assert_eq!(answer["error"]["code"], "database_unavailable");
    }
}

#[tokio::test]
async fn without_a_token_nothing_is_mounted() {
    let (_db, conn) = migrated().await;
    let host = Router::new().route("/", axum::routing::get(|| async { "host" }));
    let app = api::mount(host, "/admin/outbox", conn.clone(), None).unwrap();
    for token in [None, Some(TOKEN)] {
        let (status, _) = call(&app, "GET", "/admin/outbox/stats", token, None).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
    }
    assert!(AdminToken::new("short").is_err());
    assert!(AdminToken::new("sixteen chars ok").is_err(), "no spaces");
    assert_eq!(
        format!("{:?}", AdminToken::new(TOKEN).unwrap()),
        "AdminToken(..)"
    );
}

/// Collects log output for one test.
#[derive(Clone, Default)]
struct Logs(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Logs {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn every_replay_and_discard_is_logged_with_its_caller_and_count() {
    let (_db, conn) = migrated().await;
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let app = app(&conn);
    let t = Some(TOKEN);
    call(
        &app,
        "POST",
        "/admin/outbox/dead-letters/replay",
        t,
        Some(r#"{"ids": [1, 2]}"#),
    )
    .await;
    call(
        &app,
        "POST",
        "/admin/outbox/dead-letters/discard",
        t,
        Some(r#"{"all": true, "filter": {"topic": "topic.1"}, "dry_run": true}"#),
    )
    .await;
    let text = String::from_utf8(logs.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<serde_json::Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .filter(|l: &serde_json::Value| l["caller"].is_string())
        .collect();
    assert_eq!(lines.len(), 2, "{text}");
    assert_eq!(lines[0]["caller"], "api:alice");
    assert_eq!(lines[0]["count"], 2);
    assert_eq!(lines[0]["action"], "Replay");
    assert_eq!(
        lines[1]["count"], 1,
        "one topic.1 dead letter left after the replay"
    );
    assert_eq!(lines[1]["dry_run"], true);
    assert!(!text.contains(TOKEN), "the token is never logged");
}
