//! Every route and status code, against the real PostgreSQL (and Kafka for the relay).

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use common::*;
use sea_orm::ConnectionTrait;
use serde_json::{Value, json};
use uuid::Uuid;

#[tokio::test]
async fn registration_writes_the_batch_its_slots_and_one_event_in_one_transaction() {
    let s = service(&[("BATCH_ORCHESTRATOR_SERVICE_TOPIC_PREFIX", "p.")]).await;
    let correlation = Uuid::new_v4();
    let mut body = registration(3, Some("class-7"));
    body["student_prompt_ref"] =
        json!({"references": {"student_prompt_text": {"storage_id": "s1", "path": "p1"}}});
    body["unknown_field"] = json!("ignored");
    let (status, headers, answer) = send(
        &s.app,
        register_request(body.to_string(), Some(&correlation.to_string())),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["status"], "registered");
    assert_eq!(answer["correlation_id"], correlation.to_string());
    assert_eq!(
        headers["x-correlation-id"],
        correlation.to_string().as_str()
    );
    let batch_id = answer["batch_id"].as_str().unwrap().to_owned();
    assert!(Uuid::parse_str(&batch_id).is_ok());

    let conn = &s.conn;
    let q = |sql: &str| sql.replace("$B", &batch_id);
    assert_eq!(
        text(conn, &q("SELECT status FROM batches WHERE id = '$B'"))
            .await
            .as_deref(),
        Some("awaiting_content_validation")
    );
    assert_eq!(
        text(
            conn,
            &q("SELECT correlation_id FROM batches WHERE id = '$B'")
        )
        .await,
        Some(correlation.to_string()),
        "the request's id, not the batch's"
    );
    assert_eq!(
        text(conn, &q("SELECT name FROM batches WHERE id = '$B'"))
            .await
            .as_deref(),
        Some("ENG5 - teacher-1")
    );
    assert_eq!(
        scalar(
            conn,
            &q("SELECT version::bigint FROM batches WHERE id = '$B'")
        )
        .await,
        2
    );
    assert_eq!(
        text(
            conn,
            &q("SELECT processing_metadata->>'class_id' FROM batches WHERE id = '$B'")
        )
        .await
        .as_deref(),
        Some("class-7")
    );
    let slots: Vec<String> = conn
        .query_all(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            q("SELECT essay_id FROM essay_slots WHERE batch_id = '$B' AND status = 'available' ORDER BY essay_id"),
        ))
        .await
        .unwrap()
        .iter()
        .map(|r| r.try_get_by_index(0).unwrap())
        .collect();
    assert_eq!(slots.len(), 3, "the generated essay ids are stored");

    let events = events(conn, "p.huleedu.batch.essays.registered.v1").await;
    assert_eq!(events.len(), 1);
    assert_eq!(outbox_rows(conn).await.len(), 1);
    let (row, envelope) = &events[0];
    assert_eq!(row.event_key, batch_id);
    assert_eq!(row.aggregate_type, "batch");
    assert_eq!(envelope["event_id"], row.event_id.to_string());
    assert_eq!(envelope["event_type"], "huleedu.batch.essays.registered.v1");
    assert_eq!(envelope["source_service"], "batch-service");
    assert_eq!(envelope["correlation_id"], correlation.to_string());
    assert_eq!(envelope["schema_version"], 1);
    let data = &envelope["data"];
    assert_eq!(data["event"], "batch.essays.registered");
    assert_eq!(data["entity_id"], batch_id);
    assert_eq!(data["expected_essay_count"], 3);
    let mut ids: Vec<String> = data["essay_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect();
    ids.sort();
    assert_eq!(ids, slots, "the event's ids are the stored ones");
    assert_eq!(data["course_code"], "ENG5");
    assert_eq!(data["user_id"], "teacher-1");
    assert_eq!(data["org_id"], "org-1");
    assert_eq!(data["class_id"], "class-7");
    assert_eq!(
        data["student_prompt_ref"]["references"]["student_prompt_text"]["storage_id"],
        "s1"
    );
    let metadata = &data["metadata"];
    assert_eq!(metadata["entity_id"], batch_id);
    assert_eq!(metadata["entity_type"], "batch");
    assert_eq!(metadata["event"], "batch.essays.registered");
    assert_eq!(metadata["error_info"], json!({}));
    assert!(metadata["parent_id"].is_null() && metadata["processing_stage"].is_null());
}

#[tokio::test]
async fn a_missing_or_invalid_correlation_id_is_replaced_and_client_essay_ids_are_kept() {
    let s = service(&[]).await;
    let mut body = registration(2, None);
    body["essay_ids"] = json!(["essay-b", "essay-a"]);
    for header in [None, Some("not-a-uuid")] {
        let (status, headers, answer) =
            send(&s.app, register_request(body.to_string(), header)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
        let fresh = answer["correlation_id"].as_str().unwrap();
        assert!(Uuid::parse_str(fresh).is_ok());
        assert_eq!(headers["x-correlation-id"], fresh);
        let batch_id = answer["batch_id"].as_str().unwrap();
        assert_eq!(
            text(
                &s.conn,
                &format!(
                    "SELECT string_agg(essay_id, ',' ORDER BY essay_id) FROM essay_slots WHERE batch_id = '{batch_id}'"
                )
            )
            .await
            .as_deref(),
            Some("essay-a,essay-b")
        );
    }
}

#[tokio::test]
async fn every_bad_body_gets_a_400_and_changes_nothing() {
    let s = service(&[("BATCH_ORCHESTRATOR_SERVICE_MAX_ESSAYS", "5")]).await;
    let with = |patch: Value| {
        let mut body = registration(2, None);
        for (k, v) in patch.as_object().unwrap() {
            body[k] = v.clone();
        }
        body.to_string()
    };
    let cases: Vec<(String, &str, Option<&str>)> = vec![
        (String::new(), "INVALID_JSON", None),
        ("{}".into(), "INVALID_JSON", None),
        ("{\"expected_essay_count\": 2,".into(), "INVALID_JSON", None),
        ("[1, 2]".into(), "INVALID_JSON", None),
        (
            with(json!({"expected_essay_count": 0})),
            "VALIDATION_ERROR",
            Some("expected_essay_count"),
        ),
        (
            with(json!({"expected_essay_count": "two"})),
            "VALIDATION_ERROR",
            Some("expected_essay_count"),
        ),
        (
            with(json!({"expected_essay_count": 6})),
            "VALIDATION_ERROR",
            Some("expected_essay_count"),
        ),
        (
            with(json!({"essay_ids": ["only-one"]})),
            "VALIDATION_ERROR",
            Some("essay_ids"),
        ),
        (
            with(json!({"essay_ids": []})),
            "VALIDATION_ERROR",
            Some("essay_ids"),
        ),
        (
            with(json!({"essay_ids": ["a", "a"]})),
            "VALIDATION_ERROR",
            Some("essay_ids"),
        ),
        (
            with(json!({"essay_ids": ["a", "x".repeat(37)]})),
            "VALIDATION_ERROR",
            Some("essay_ids"),
        ),
        (
            with(json!({"course_code": "ENG4"})),
            "VALIDATION_ERROR",
            Some("course_code"),
        ),
        (
            with(json!({"user_id": null})),
            "VALIDATION_ERROR",
            Some("user_id"),
        ),
        (
            with(json!({"class_id": 12})),
            "VALIDATION_ERROR",
            Some("class_id"),
        ),
        (
            with(json!({"cj_default_temperature": -0.1})),
            "VALIDATION_ERROR",
            Some("cj_default_temperature"),
        ),
        (
            with(json!({"assignment_id": "a".repeat(101)})),
            "VALIDATION_ERROR",
            Some("assignment_id"),
        ),
        (
            with(json!({"student_prompt_ref": "s1"})),
            "VALIDATION_ERROR",
            Some("student_prompt_ref"),
        ),
    ];
    for (body, code, field) in cases {
        let (status, _, answer) = send(&s.app, register_request(body.clone(), None)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{body}: {answer}");
        assert!(answer["error"]["message"].is_string());
        if let Some(field) = field {
            let details = answer["error"]["details"].as_array().unwrap();
            assert!(
                details
                    .iter()
                    .any(|d| d["loc"][0] == field && d["msg"].is_string()),
                "{body}: {answer}"
            );
        }
    }
    assert_eq!(counts(&s.conn).await, (0, 0, 0));
}

#[tokio::test]
async fn a_body_over_the_limit_gets_413_and_changes_nothing() {
    let s = service(&[("BATCH_ORCHESTRATOR_SERVICE_MAX_REQUEST_BYTES", "2048")]).await;
    let mut body = registration(1, None);
    body["padding"] = json!("x".repeat(4096));
    let (status, _, answer) = send(&s.app, register_request(body.to_string(), None)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{answer}");
    assert_eq!(answer["error"]["code"], "REQUEST_TOO_LARGE");
    assert_eq!(counts(&s.conn).await, (0, 0, 0));
}

#[tokio::test]
async fn a_failure_inside_the_transaction_gets_500_and_writes_nothing() {
    let s = service(&[]).await;
    // The outbox insert, the last write of the transaction, fails.
    s.conn
        .execute_unprepared(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
                 $$ BEGIN RAISE EXCEPTION 'outbox unavailable'; END $$;
             CREATE TRIGGER refuse BEFORE INSERT ON event_outbox
                 FOR EACH ROW EXECUTE FUNCTION refuse();",
        )
        .await
        .unwrap();
    let (status, _, answer) = send(
        &s.app,
        register_request(registration(2, None).to_string(), None),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{answer}");
    assert_eq!(answer["error"]["message"], "Failed to register batch.");
    assert_eq!(
        counts(&s.conn).await,
        (0, 0, 0),
        "no batch without its event"
    );
}

#[tokio::test]
async fn pipeline_state_has_the_contract_shape_and_404s_when_unreadable() {
    let s = service(&[]).await;
    let batch_id = register(&s.app, &registration(2, None)).await;
    let (status, _, answer) = send(
        &s.app,
        get(&format!("/internal/v1/batches/{batch_id}/pipeline-state")),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["batch_id"], batch_id);
    assert_eq!(answer["user_id"], "teacher-1");
    let state = &answer["pipeline_state"];
    assert_eq!(state["batch_id"], batch_id);
    assert_eq!(state["requested_pipelines"], json!(["spellcheck"]));
    let zero =
        json!({"total": 0, "pending_dispatch_or_processing": 0, "successful": 0, "failed": 0});
    for (phase, status) in [
        ("spellcheck", "pending_dependencies"),
        ("nlp", "skipped_by_user_config"),
        ("ai_feedback", "skipped_by_user_config"),
        ("cj_assessment", "skipped_by_user_config"),
    ] {
        assert_eq!(
            state[phase],
            json!({"status": status, "essay_counts": zero, "started_at": null,
                   "completed_at": null, "error_info": null, "progress_percentage": null}),
            "{phase}"
        );
    }
    let last_updated = state["last_updated"].as_str().unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(last_updated).is_ok() && last_updated.ends_with('Z')
    );

    // A phase status written by a test (nothing in the slice changes one) is served as stored:
    // the File Service's lock rule reads it.
    s.conn
        .execute_unprepared(&format!(
            "UPDATE batches SET pipeline_configuration = json_build_object(
                 'batch_id', id, 'requested_pipelines', json_build_array('spellcheck'),
                 'spellcheck', json_build_object('status', 'in_progress'),
                 'last_updated', '2026-01-01T10:00:00.123456Z') WHERE id = '{batch_id}'"
        ))
        .await
        .unwrap();
    let (status, _, answer) = send(
        &s.app,
        get(&format!("/internal/v1/batches/{batch_id}/pipeline-state")),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        answer["pipeline_state"]["spellcheck"]["status"],
        "in_progress"
    );
    assert_eq!(
        answer["pipeline_state"]["nlp"]["status"],
        "requested_by_user"
    );
    assert_eq!(
        answer["pipeline_state"]["last_updated"],
        "2026-01-01T10:00:00.123456Z"
    );

    let not_found = |answer: &Value| {
        assert_eq!(
            answer["error"]["code"], "PIPELINE_STATE_NOT_FOUND",
            "{answer}"
        );
        assert_eq!(
            answer["error"]["message"],
            "Pipeline state not found for batch"
        );
    };
    for id in [Uuid::new_v4().to_string(), "x".repeat(300)] {
        let (status, _, answer) = send(
            &s.app,
            get(&format!("/internal/v1/batches/{id}/pipeline-state")),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        not_found(&answer);
    }
    for bad in [
        "NULL",
        "'{\"batch_id\": 1}'",
        "'{\"batch_id\": \"b\", \"requested_pipelines\": [], \"last_updated\": \"2026-01-01T00:00:00Z\", \"nlp\": {\"status\": \"locked\"}}'",
    ] {
        s.conn
            .execute_unprepared(&format!(
                "UPDATE batches SET pipeline_configuration = {bad} WHERE id = '{batch_id}'"
            ))
            .await
            .unwrap();
        let (status, _, answer) = send(
            &s.app,
            get(&format!("/internal/v1/batches/{batch_id}/pipeline-state")),
        )
        .await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{bad}");
        not_found(&answer);
    }
}

#[tokio::test]
async fn status_reports_the_batch_and_its_status() {
    let s = service(&[]).await;
    let batch_id = register(&s.app, &registration(4, None)).await;
    let (status, _, answer) = send(&s.app, get(&format!("/v1/batches/{batch_id}/status"))).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["batch_id"], batch_id);
    assert_eq!(answer["status"], "awaiting_content_validation");
    assert_eq!(
        answer["batch_context"],
        json!({"course_code": "ENG5", "expected_essay_count": 4, "user_id": "teacher-1"})
    );
    assert_eq!(
        answer["pipeline_state"]["spellcheck"]["status"],
        "pending_dependencies"
    );

    let (status, _, answer) = send(
        &s.app,
        get(&format!("/v1/batches/{}/status", Uuid::new_v4())),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(answer["error"]["code"], "BATCH_NOT_FOUND");
    assert_eq!(answer["error"]["message"], "Batch not found");
}

#[tokio::test]
async fn read_routes_answer_500_when_the_database_fails() {
    let s = service(&[]).await;
    let batch_id = register(&s.app, &registration(1, None)).await;
    s.conn
        .execute_unprepared("ALTER TABLE batches RENAME TO batches_elsewhere")
        .await
        .unwrap();
    let (status, _, answer) = send(
        &s.app,
        get(&format!("/internal/v1/batches/{batch_id}/pipeline-state")),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{answer}");
    assert_eq!(
        answer["error"]["message"],
        "Failed to get internal pipeline state"
    );
    let (status, _, _) = send(&s.app, get(&format!("/v1/batches/{batch_id}/status"))).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let (status, _, answer) = send(
        &s.app,
        register_request(registration(1, None).to_string(), None),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{answer}");
}

#[tokio::test]
async fn healthz_is_503_until_the_relay_runs_and_metrics_carry_no_batch_id() {
    // The registration's topic exists, so the relay delivers its event and stops cleanly: a
    // missing topic kept the event in flight for librdkafka's 30 s metadata wait, as long as
    // the relay's graceful stop.
    let bootstrap = outbox_test_harness::kafka_bootstrap_servers().await;
    let prefix = format!("{}.", outbox_test_harness::unique_name("bos_health"));
    let topic = format!("{prefix}huleedu.batch.essays.registered.v1");
    let _topic = outbox_test_harness::TestTopic::create_named(&bootstrap, &topic, 1).await;
    let s = service(&[("BATCH_ORCHESTRATOR_SERVICE_TOPIC_PREFIX", &prefix)]).await;
    let (status, _, body) = send(&s.app, get("/healthz")).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(body["status"], "unhealthy");
    assert_eq!(body["dependencies"]["database"]["status"], "healthy");
    assert_eq!(body["dependencies"]["outbox"]["relay"]["running"], false);

    s.state.outbox.start().unwrap();
    let (status, _, body) = send(&s.app, get("/healthz")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["service"], "batch-orchestrator");
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["checks"]["dependencies_available"], true);
    assert!(body["version"].is_string() && body["message"].is_string());

    let batch_id = register(&s.app, &registration(1, None)).await;
    let (status, headers, body) = send(&s.app, get("/metrics")).await;
    assert_eq!(status, StatusCode::OK);
    assert!(
        headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = body.as_str().unwrap();
    assert!(
        text.contains("batch_orchestrator_http_requests_total"),
        "{text}"
    );
    assert!(text.contains("route=\"/v1/batches/register\""), "{text}");
    assert!(
        !text.contains(&batch_id) && !text.contains("batch_id=\""),
        "no metric is labelled with a batch id: {text}"
    );
    s.state.outbox.stop().await.unwrap();
}

#[tokio::test]
async fn the_relay_delivers_the_registration_to_kafka_with_its_event_id() {
    let bootstrap = outbox_test_harness::kafka_bootstrap_servers().await;
    let prefix = format!("{}.", outbox_test_harness::unique_name("bos"));
    let topic = format!("{prefix}huleedu.batch.essays.registered.v1");
    let _topic = outbox_test_harness::TestTopic::create_named(&bootstrap, &topic, 1).await;
    let s = service(&[("BATCH_ORCHESTRATOR_SERVICE_TOPIC_PREFIX", &prefix)]).await;
    s.state.outbox.start().unwrap();
    let batch_id = register(&s.app, &registration(2, None)).await;
    let received =
        outbox_test_harness::consume(&bootstrap, &topic, 1, Duration::from_secs(30)).await;
    s.state.outbox.stop().await.unwrap();
    assert_eq!(received.len(), 1);
    let message = &received[0];
    assert_eq!(message.key.as_deref(), Some(batch_id.as_str()));
    let envelope: Value = message.json();
    assert_eq!(message.header("event_id"), envelope["event_id"].as_str());
    assert_eq!(envelope["data"]["entity_id"], batch_id);
}
