//! Route tests through `app(state).oneshot(request)`: every status code of the contract, on the
//! real PostgreSQL, and bad input changes nothing.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::StatusCode;
use common::*;
use file_service::db::{file_upload, status};
use file_service::events::{BATCH_FILE_ADDED_TOPIC, BATCH_FILE_REMOVED_TOPIC};
use file_service::http::{AppState, app};
use outbox_seaorm::entity as outbox;
use outbox_test_harness::TestDatabase;
use sea_orm::{ColumnTrait, DatabaseConnection, EntityTrait, QueryFilter};

struct Service {
    app: axum::Router,
    state: AppState,
    conn: DatabaseConnection,
    _db: TestDatabase,
    _topics: Vec<outbox_test_harness::TestTopic>,
}

async fn service(extra: &[(&str, &str)]) -> Service {
    let (db, conn) = migrated().await;
    let bootstrap = outbox_test_harness::kafka_bootstrap_servers().await;
    let (prefix, topics) = topics(&bootstrap).await;
    let mut env = vec![("FILE_SERVICE_TOPIC_PREFIX", prefix.as_str())];
    env.extend_from_slice(extra);
    let config = config(db.url(), &bootstrap, &env);
    let state = file_service::app::build(&config, conn.clone()).unwrap();
    Service {
        app: app(state.clone()),
        state,
        conn,
        _db: db,
        _topics: topics,
    }
}

async fn outbox_rows(conn: &DatabaseConnection, topic: &str) -> Vec<outbox::Model> {
    outbox::Entity::find()
        .filter(outbox::Column::EventType.eq(topic))
        .all(conn)
        .await
        .unwrap()
}

const ESSAY: &[u8] =
    b"A long enough essay about nothing in particular, written for the tests of the service.";

#[tokio::test]
async fn an_upload_is_accepted_with_its_event_in_the_same_transaction() {
    let s = service(&[]).await;
    let correlation = uuid::Uuid::new_v4();
    let mut request = upload(
        "/v1/files/batch",
        Some("teacher-1"),
        &[
            Part::Text("batch_id", "batch-1"),
            Part::Text("assignment_id", "assignment-9"),
            Part::File("one.txt", ESSAY),
            Part::File("two.txt", ESSAY),
        ],
    );
    request
        .headers_mut()
        .insert("x-correlation-id", correlation.to_string().parse().unwrap());
    request.headers_mut().insert(
        "traceparent",
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
            .parse()
            .unwrap(),
    );
    let (code, headers, body) = send(&s.app, request).await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["batch_id"], "batch-1");
    assert_eq!(body["correlation_id"], correlation.to_string());
    assert_eq!(
        headers["x-correlation-id"],
        correlation.to_string().as_str()
    );
    let files = body["files"].as_array().unwrap();
    assert_eq!(files.len(), 2);
    assert_eq!(files[0]["filename"], "one.txt");

    let uploads = file_upload::Entity::find().all(&s.conn).await.unwrap();
    assert_eq!(uploads.len(), 2);
    assert!(
        uploads
            .iter()
            .all(|u| u.assignment_id.as_deref() == Some("assignment-9"))
    );
    let added = outbox_rows(&s.conn, BATCH_FILE_ADDED_TOPIC).await;
    assert_eq!(added.len(), 2);
    for row in &added {
        assert_eq!(row.event_key, "batch-1");
        assert_eq!(row.aggregate_type, "batch");
        let envelope: serde_json::Value = serde_json::from_slice(&row.payload).unwrap();
        assert_eq!(envelope["correlation_id"], correlation.to_string());
        assert_eq!(envelope["data"]["user_id"], "teacher-1");
        assert!(
            envelope["metadata"]["traceparent"]
                .as_str()
                .unwrap()
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
        );
    }
}

#[tokio::test]
async fn uploading_to_a_batch_path_and_reading_its_state() {
    let s = service(&[]).await;
    let (code, _, _) = send(
        &s.app,
        upload(
            "/v1/files/batch/b-7/files",
            Some("u"),
            &[Part::File("a.txt", ESSAY)],
        ),
    )
    .await;
    assert_eq!(code, StatusCode::ACCEPTED);
    let (code, _, body) = send(
        &s.app,
        upload(
            "/v1/files/batch/b-7/files",
            Some("u"),
            &[Part::Text("batch_id", "other"), Part::File("b.txt", ESSAY)],
        ),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "BATCH_ID_MISMATCH");

    // Processing happens in the background; the state shows it once done.
    let mut state = serde_json::Value::Null;
    for _ in 0..100 {
        let request = request("GET", "/v1/files/batch/b-7/state", Some("u"))
            .body(Body::empty())
            .unwrap();
        let (code, _, body) = send(&s.app, request).await;
        assert_eq!(code, StatusCode::OK);
        state = body;
        if state["files"][0]["status"] == status::COMPLETED {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state["locked"], false);
    assert_eq!(state["files"].as_array().unwrap().len(), 1);
    assert_eq!(state["files"][0]["filename"], "a.txt");
    assert_eq!(state["files"][0]["status"], "completed", "{state}");
}

#[tokio::test]
async fn bad_requests_get_a_clear_4xx_and_change_nothing() {
    let s = service(&[
        ("FILE_SERVICE_MAX_FILE_BYTES", "2000"),
        ("FILE_SERVICE_MAX_REQUEST_BYTES", "3000"),
    ])
    .await;
    let big = vec![b'a'; 2001];
    let half = vec![b'a'; 1600];
    let cases: Vec<(axum::http::Request<Body>, StatusCode, &str)> = vec![
        (
            upload(
                "/v1/files/batch",
                None,
                &[Part::Text("batch_id", "b"), Part::File("a.txt", ESSAY)],
            ),
            StatusCode::UNAUTHORIZED,
            "MISSING_USER_ID",
        ),
        (
            upload("/v1/files/batch", Some("u"), &[Part::File("a.txt", ESSAY)]),
            StatusCode::BAD_REQUEST,
            "MISSING_BATCH_ID",
        ),
        (
            upload("/v1/files/batch", Some("u"), &[Part::Text("batch_id", "b")]),
            StatusCode::BAD_REQUEST,
            "NO_FILES",
        ),
        (
            request("POST", "/v1/files/batch", Some("u"))
                .header(
                    "content-type",
                    format!("multipart/form-data; boundary={BOUNDARY}"),
                )
                .body(Body::from(
                    "--x-test-boundary-7f3a\r\nnot a header line\r\n",
                ))
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "INVALID_MULTIPART",
        ),
        (
            request("POST", "/v1/files/batch", Some("u"))
                .header("content-type", "application/json")
                .body(Body::from("{}"))
                .unwrap(),
            StatusCode::BAD_REQUEST,
            "INVALID_MULTIPART",
        ),
        (
            upload(
                "/v1/files/batch",
                Some("u"),
                &[Part::Text("batch_id", "b"), Part::File("", ESSAY)],
            ),
            StatusCode::BAD_REQUEST,
            "INVALID_MULTIPART",
        ),
        (
            upload(
                "/v1/files/batch",
                Some("u"),
                &[
                    Part::Text("batch_id", "b"),
                    Part::File("ok.txt", ESSAY),
                    Part::File("big.txt", &big),
                ],
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "FILE_TOO_LARGE",
        ),
        (
            upload(
                "/v1/files/batch",
                Some("u"),
                &[
                    Part::Text("batch_id", "b"),
                    Part::File("a.txt", &half),
                    Part::File("b.txt", &half),
                ],
            ),
            StatusCode::PAYLOAD_TOO_LARGE,
            "REQUEST_TOO_LARGE",
        ),
    ];
    for (request, expected, code) in cases {
        let (status, headers, body) = send(&s.app, request).await;
        assert_eq!(status, expected, "{body}");
        assert_eq!(body["error"]["code"], code, "{body}");
        assert!(
            body["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        assert!(headers.contains_key("x-correlation-id"));
    }
    assert_eq!(
        counts(&s.conn).await,
        (0, 0, 0),
        "bad input changes nothing"
    );
}

#[tokio::test]
async fn a_batch_of_another_user_is_forbidden_and_unknown_things_are_not_found() {
    let s = service(&[]).await;
    let (code, _, _) = send(
        &s.app,
        upload(
            "/v1/files/batch",
            Some("owner"),
            &[Part::Text("batch_id", "mine"), Part::File("a.txt", ESSAY)],
        ),
    )
    .await;
    assert_eq!(code, StatusCode::ACCEPTED);
    let before = counts(&s.conn).await;

    let (code, _, body) = send(
        &s.app,
        upload(
            "/v1/files/batch",
            Some("intruder"),
            &[Part::Text("batch_id", "mine"), Part::File("b.txt", ESSAY)],
        ),
    )
    .await;
    assert_eq!(code, StatusCode::FORBIDDEN, "{body}");
    assert_eq!(body["error"]["code"], "FORBIDDEN");
    let state = request("GET", "/v1/files/batch/mine/state", Some("intruder"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&s.app, state).await.0, StatusCode::FORBIDDEN);
    let file_id = file_upload::Entity::find()
        .one(&s.conn)
        .await
        .unwrap()
        .unwrap()
        .file_upload_id;
    let removal = request(
        "DELETE",
        &format!("/v1/files/batch/mine/files/{file_id}"),
        Some("intruder"),
    )
    .body(Body::empty())
    .unwrap();
    assert_eq!(send(&s.app, removal).await.0, StatusCode::FORBIDDEN);
    assert_eq!(counts(&s.conn).await.0, before.0);

    let unknown_batch = request("GET", "/v1/files/batch/nope/state", Some("owner"))
        .body(Body::empty())
        .unwrap();
    let (code, _, body) = send(&s.app, unknown_batch).await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "BATCH_NOT_FOUND");
    for path in [
        format!("/v1/files/batch/mine/files/{}", uuid::Uuid::new_v4()),
        "/v1/files/batch/mine/files/not-a-uuid".to_owned(),
    ] {
        let (code, _, body) = send(
            &s.app,
            request("DELETE", &path, Some("owner"))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(code, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(body["error"]["code"], "FILE_NOT_FOUND");
    }
    assert_eq!(
        outbox_rows(&s.conn, BATCH_FILE_REMOVED_TOPIC).await.len(),
        0
    );
}

#[tokio::test]
async fn deleting_a_file_marks_it_removed_with_its_real_filename() {
    let s = service(&[]).await;
    let (_, _, body) = send(
        &s.app,
        upload(
            "/v1/files/batch",
            Some("u"),
            &[
                Part::Text("batch_id", "b"),
                Part::File("My Essay.txt", ESSAY),
            ],
        ),
    )
    .await;
    let id = body["files"][0]["file_upload_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let removal = || {
        request(
            "DELETE",
            &format!("/v1/files/batch/b/files/{id}"),
            Some("u"),
        )
        .body(Body::empty())
        .unwrap()
    };
    let (code, _, body) = send(&s.app, removal()).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["filename"], "My Essay.txt");
    let removed = outbox_rows(&s.conn, BATCH_FILE_REMOVED_TOPIC).await;
    assert_eq!(removed.len(), 1);
    let envelope: serde_json::Value = serde_json::from_slice(&removed[0].payload).unwrap();
    assert_eq!(envelope["data"]["filename"], "My Essay.txt");
    assert_eq!(envelope["data"]["file_upload_id"], id);
    assert_eq!(removed[0].event_key, "b");

    assert_eq!(
        send(&s.app, removal()).await.0,
        StatusCode::NOT_FOUND,
        "gone once removed"
    );
    let state = request("GET", "/v1/files/batch/b/state", Some("u"))
        .body(Body::empty())
        .unwrap();
    let (_, _, body) = send(&s.app, state).await;
    assert!(body["files"].as_array().unwrap().is_empty());
}

#[tokio::test]
async fn the_orchestrator_decides_ownership_locks_and_existence() {
    let answers: Answers = Arc::new(Mutex::new(HashMap::new()));
    answers
        .lock()
        .unwrap()
        .insert("open".into(), (200, pipeline_state("u", &[])));
    answers.lock().unwrap().insert(
        "locked".into(),
        (
            200,
            pipeline_state("u", &[("cj_assessment", "in_progress")]),
        ),
    );
    answers
        .lock()
        .unwrap()
        .insert("theirs".into(), (200, pipeline_state("someone-else", &[])));
    answers
        .lock()
        .unwrap()
        .insert("broken".into(), (500, serde_json::json!({"error": "boom"})));
    let url = orchestrator(answers.clone()).await;
    let s = service(&[("BATCH_ORCHESTRATOR_URL", &url)]).await;

    let attempt = |batch: &str| {
        upload(
            "/v1/files/batch",
            Some("u"),
            &[Part::Text("batch_id", batch), Part::File("a.txt", ESSAY)],
        )
    };
    let expectations = [
        ("locked", StatusCode::CONFLICT, "BATCH_LOCKED"),
        ("theirs", StatusCode::FORBIDDEN, "FORBIDDEN"),
        ("unknown", StatusCode::NOT_FOUND, "BATCH_NOT_FOUND"),
        (
            "broken",
            StatusCode::SERVICE_UNAVAILABLE,
            "ORCHESTRATOR_UNAVAILABLE",
        ),
    ];
    for (batch, expected, code) in expectations {
        let (status, _, body) = send(&s.app, attempt(batch)).await;
        assert_eq!(status, expected, "{batch}: {body}");
        assert_eq!(body["error"]["code"], code);
    }
    assert_eq!(
        counts(&s.conn).await,
        (0, 0, 0),
        "refused uploads write nothing"
    );

    let (status, _, _) = send(&s.app, attempt("open")).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let state = request("GET", "/v1/files/batch/locked/state", Some("u"))
        .body(Body::empty())
        .unwrap();
    let (status, _, body) = send(&s.app, state).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["locked"], true);
    assert!(
        body["lock_reason"]
            .as_str()
            .unwrap()
            .contains("cj_assessment")
    );

    // A file of a batch that became locked cannot be removed.
    let id = file_upload::Entity::find()
        .one(&s.conn)
        .await
        .unwrap()
        .unwrap()
        .file_upload_id;
    answers.lock().unwrap().insert(
        "open".into(),
        (
            200,
            pipeline_state("u", &[("spellcheck", "completed_successfully")]),
        ),
    );
    let removal = request(
        "DELETE",
        &format!("/v1/files/batch/open/files/{id}"),
        Some("u"),
    )
    .body(Body::empty())
    .unwrap();
    assert_eq!(send(&s.app, removal).await.0, StatusCode::CONFLICT);
}

#[tokio::test]
async fn an_unreachable_orchestrator_is_a_503_with_nothing_written() {
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let s = service(&[
        ("BATCH_ORCHESTRATOR_URL", &closed),
        ("BATCH_ORCHESTRATOR_TIMEOUT_MS", "500"),
    ])
    .await;
    let (status, _, body) = send(
        &s.app,
        upload(
            "/v1/files/batch",
            Some("u"),
            &[Part::Text("batch_id", "b"), Part::File("a.txt", ESSAY)],
        ),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "ORCHESTRATOR_UNAVAILABLE");
    assert_eq!(counts(&s.conn).await, (0, 0, 0));
}

#[tokio::test]
async fn an_invalid_correlation_id_is_replaced_by_a_fresh_one() {
    let s = service(&[]).await;
    let mut request = upload(
        "/v1/files/batch",
        Some("u"),
        &[Part::Text("batch_id", "b"), Part::File("a.txt", ESSAY)],
    );
    request
        .headers_mut()
        .insert("x-correlation-id", "not-a-uuid".parse().unwrap());
    let (_, headers, body) = send(&s.app, request).await;
    let returned = headers["x-correlation-id"].to_str().unwrap();
    let fresh = uuid::Uuid::parse_str(returned).expect("a UUID");
    assert_eq!(body["correlation_id"], fresh.to_string());
    let row = outbox_rows(&s.conn, BATCH_FILE_ADDED_TOPIC).await.remove(0);
    let envelope: serde_json::Value = serde_json::from_slice(&row.payload).unwrap();
    assert_eq!(envelope["correlation_id"], fresh.to_string());
    assert!(
        envelope["metadata"].get("traceparent").is_none(),
        "no trace context, no traceparent"
    );
}

#[tokio::test]
async fn healthz_reports_the_outbox_and_metrics_render() {
    let s = service(&[]).await;
    let health = || {
        request("GET", "/healthz", None)
            .body(Body::empty())
            .unwrap()
    };
    let (code, _, body) = send(&s.app, health()).await;
    assert_eq!(
        code,
        StatusCode::SERVICE_UNAVAILABLE,
        "the relay is not running yet: {body}"
    );
    assert_eq!(body["outbox"]["relay"]["running"], false);

    send(
        &s.app,
        upload(
            "/v1/files/batch",
            Some("u"),
            &[Part::Text("batch_id", "b"), Part::File("a.txt", ESSAY)],
        ),
    )
    .await;
    s.state.outbox.start().unwrap();
    let (code, _, body) = send(&s.app, health()).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "ok");
    assert_eq!(body["database"]["ok"], true);
    assert!(body["outbox"]["pending"].is_u64());
    assert!(body["outbox"]["oldest_pending_age_seconds"].is_f64());
    s.state.outbox.stop().await.ok();

    let (code, _, text) = send(
        &s.app,
        request("GET", "/metrics", None)
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_eq!(code, StatusCode::OK);
    let text = text.as_str().unwrap();
    assert!(text.contains("file_service_http_requests_total{"), "{text}");
    assert!(
        text.contains("route=\"/v1/files/batch\""),
        "routes by template"
    );
    assert!(
        !text.contains("route=\"/v1/files/batch/b/state\""),
        "no ids in labels"
    );
    assert!(
        text.contains("outbox_events_added_total"),
        "the outbox's metrics render too"
    );
}

#[tokio::test]
async fn too_many_files_or_a_too_long_filename_is_a_400_with_nothing_written() {
    let s = service(&[
        ("FILE_SERVICE_MAX_FILES_PER_REQUEST", "2"),
        ("FILE_SERVICE_MAX_FILENAME_BYTES", "20"),
    ])
    .await;
    let before = counts(&s.conn).await;
    let (code, _, body) = send(
        &s.app,
        upload(
            "/v1/files/batch",
            Some("u"),
            &[
                Part::Text("batch_id", "b"),
                Part::File("a.txt", ESSAY),
                Part::File("b.txt", ESSAY),
                Part::File("c.txt", ESSAY),
            ],
        ),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "TOO_MANY_FILES");
    assert!(body["error"]["message"].as_str().unwrap().contains('2'));

    let long = format!("{}.txt", "n".repeat(17));
    let (code, _, body) = send(
        &s.app,
        upload(
            "/v1/files/batch/b/files",
            Some("u"),
            &[Part::File("ok.txt", ESSAY), Part::File(&long, ESSAY)],
        ),
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"]["code"], "FILENAME_TOO_LONG");
    assert_eq!(counts(&s.conn).await, before, "nothing written");

    // At the limits, both pass.
    let exactly = format!("{}.txt", "n".repeat(16));
    let (code, _, body) = send(
        &s.app,
        upload(
            "/v1/files/batch",
            Some("u"),
            &[
                Part::Text("batch_id", "b"),
                Part::File("a.txt", ESSAY),
                Part::File(&exactly, ESSAY),
            ],
        ),
    )
    .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
}

#[tokio::test]
async fn uploads_beyond_the_concurrency_limit_get_503_with_retry_after_and_nothing_written() {
    let s = service(&[("FILE_SERVICE_MAX_CONCURRENT_UPLOADS", "2")]).await;
    let before = counts(&s.conn).await;
    // Two uploads in progress hold both slots.
    let held = s
        .state
        .upload_slots
        .clone()
        .try_acquire_many_owned(2)
        .unwrap();
    let (code, headers, body) = send(
        &s.app,
        upload(
            "/v1/files/batch",
            Some("u"),
            &[Part::Text("batch_id", "b"), Part::File("a.txt", ESSAY)],
        ),
    )
    .await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["error"]["code"], "TOO_MANY_UPLOADS");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(counts(&s.conn).await, before, "nothing written");

    // Reads are not limited; a freed slot takes the next upload.
    let (code, _, _) = send(
        &s.app,
        request("GET", "/v1/files/batch/b/state", Some("u"))
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert_ne!(code, StatusCode::SERVICE_UNAVAILABLE);
    drop(held);
    let (code, _, body) = send(
        &s.app,
        upload(
            "/v1/files/batch",
            Some("u"),
            &[Part::Text("batch_id", "b"), Part::File("a.txt", ESSAY)],
        ),
    )
    .await;
    assert_eq!(code, StatusCode::ACCEPTED, "{body}");
}

#[tokio::test]
async fn a_body_that_stops_arriving_is_a_408_with_nothing_written() {
    let s = service(&[("FILE_SERVICE_REQUEST_READ_TIMEOUT_MS", "300")]).await;
    let before = counts(&s.conn).await;
    let start = multipart(&[Part::Text("batch_id", "b"), Part::File("a.txt", ESSAY)]);
    // The first half of the body, then nothing: the client went quiet.
    let half = axum::body::Bytes::from(start[..start.len() / 2].to_vec());
    let stream = futures::StreamExt::chain(
        futures::stream::once(async move { Ok::<_, std::io::Error>(half) }),
        futures::stream::pending(),
    );
    let request = request("POST", "/v1/files/batch", Some("u"))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(Body::from_stream(stream))
        .unwrap();
    let (code, _, body) = send(&s.app, request).await;
    assert_eq!(code, StatusCode::REQUEST_TIMEOUT, "{body}");
    assert_eq!(body["error"]["code"], "REQUEST_TIMEOUT");
    assert_eq!(counts(&s.conn).await, before, "nothing written");
}

#[tokio::test]
async fn an_event_the_broker_would_refuse_for_its_size_is_refused_before_it_is_written() {
    let s = service(&[("FILE_SERVICE_MAX_EVENT_BYTES", "4096")]).await;
    let before = counts(&s.conn).await;
    // The user id goes into BatchFileAddedV1: 5,000 bytes of it make the event too large.
    let user = "u".repeat(5000);
    let (code, _, body) = send(
        &s.app,
        upload(
            "/v1/files/batch",
            Some(&user),
            &[Part::Text("batch_id", "b"), Part::File("a.txt", ESSAY)],
        ),
    )
    .await;
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "EVENT_TOO_LARGE");
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("4096"), "{message}");
    assert!(message.contains("batch.file.added"), "{message}");
    assert_eq!(counts(&s.conn).await, before, "nothing written");
}
