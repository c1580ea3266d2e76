//! The inbox handlers, called directly on real `OutboxTransaction`s against the real
//! PostgreSQL: every outcome, duplicates by natural key, stale transitions, unknown batches,
//! excess content, failed files, and what each publishes (read back from `event_outbox`).

mod common;

use std::time::Duration;

use batch_orchestrator::config::Readiness;
use batch_orchestrator::consumers::{
    PROVISIONING_COMPLETED_CONSUMER, READINESS_CONSUMER, handlers,
};
use batch_orchestrator::provisioning::ProvisioningCompletedHandler;
use batch_orchestrator::readiness::ReadinessHandler;
use batch_orchestrator::registration::{register, validate};
use common::*;
use outbox::Outbox;
use outbox_core::{Handled, HandlerError, InboxHandler, InboxMessage};
use outbox_test_harness::TestDatabase;
use sea_orm::{ConnectionTrait, DatabaseConnection};
use serde_json::{Value, json};
use uuid::Uuid;

const CONTENT: &str = "huleedu.file.essay.content.provisioned.v1";
const FAILED: &str = "huleedu.file.essay.validation.failed.v1";
const COMPLETED: &str = "huleedu.batch.content.provisioning.completed.v1";
const SLOT_ASSIGNED: &str = "huleedu.els.essay.slot.assigned.v1";
const EXCESS: &str = "huleedu.els.excess.content.provisioned.v1";
const COMMAND: &str = "huleedu.batch.student.matching.initiate.command.v1";

struct Fixture {
    _db: TestDatabase,
    conn: DatabaseConnection,
    outbox: Outbox,
    readiness: ReadinessHandler,
    bos: ProvisioningCompletedHandler,
    prefix: &'static str,
}

async fn fixture(prefix: &'static str) -> Fixture {
    let (db, conn) = migrated().await;
    let outbox = Outbox::builder(conn.clone()).writer_only().unwrap();
    Fixture {
        _db: db,
        conn,
        outbox,
        readiness: ReadinessHandler::new(prefix),
        bos: ProvisioningCompletedHandler::new(prefix),
        prefix,
    }
}

impl Fixture {
    /// Registers a batch with these essay ids; returns its id and the registration's
    /// correlation id.
    async fn batch(&self, essay_ids: &[&str], class_id: Option<&str>) -> (String, Uuid) {
        let body = json!({
            "expected_essay_count": essay_ids.len(),
            "essay_ids": essay_ids,
            "course_code": "SV2",
            "user_id": "teacher-9",
            "org_id": "org-9",
            "class_id": class_id,
        });
        // The largest count the configuration allows.
        let request = validate(body.to_string().as_bytes(), 5000).unwrap();
        let correlation = Uuid::new_v4();
        let registered = register(&self.outbox, self.prefix, &request, correlation)
            .await
            .unwrap();
        (registered.batch_id, correlation)
    }

    /// Runs `handler` on a transaction of its own, committing on success.
    async fn run(
        &self,
        handler: &dyn InboxHandler<outbox::OutboxTransaction>,
        message: &InboxMessage,
    ) -> Result<Handled, HandlerError> {
        let txn = self.outbox.begin().await.unwrap();
        let result = handler.handle(&txn, message).await;
        match result {
            Ok(_) => txn.commit().await.unwrap(),
            Err(_) => txn.rollback().await.unwrap(),
        }
        result
    }

    async fn events(&self, topic: &str) -> Vec<Value> {
        events(&self.conn, &format!("{}{topic}", self.prefix))
            .await
            .into_iter()
            .map(|(_, value)| value)
            .collect()
    }

    async fn slots(&self, batch_id: &str) -> Vec<(String, String, Option<String>)> {
        self.conn
            .query_all(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                format!(
                    "SELECT essay_id, status, file_upload_id FROM essay_slots
                     WHERE batch_id = '{batch_id}' ORDER BY essay_id"
                ),
            ))
            .await
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r.try_get_by_index(0).unwrap(),
                    r.try_get_by_index(1).unwrap(),
                    r.try_get_by_index(2).unwrap(),
                )
            })
            .collect()
    }

    async fn status(&self, batch_id: &str) -> String {
        text(
            &self.conn,
            &format!("SELECT status FROM batches WHERE id = '{batch_id}'"),
        )
        .await
        .unwrap()
    }

    fn message(&self, topic: &str, data: Value, correlation: Uuid) -> InboxMessage {
        message(&format!("{}{topic}", self.prefix), data, correlation)
    }
}

/// A message as the outbox relay publishes it: the envelope, and its id in a header.
fn message(topic: &str, data: Value, correlation: Uuid) -> InboxMessage {
    let event_id = Uuid::now_v7();
    let envelope = json!({
        "event_id": event_id,
        "event_type": topic,
        "event_timestamp": "2026-01-01T10:00:00Z",
        "source_service": "file-service",
        "correlation_id": correlation,
        "schema_version": 1,
        "data": data,
    });
    InboxMessage {
        topic: topic.to_owned(),
        payload: Some(envelope.to_string().into_bytes()),
        headers: vec![("event_id".into(), event_id.to_string().into_bytes())],
        ..InboxMessage::default()
    }
}

fn content(batch_id: &str, upload: &str, text: &str) -> Value {
    json!({
        "event": "essay.content.provisioned",
        "entity_id": batch_id,
        "file_upload_id": upload,
        "original_file_name": format!("{upload}.txt"),
        "raw_file_storage_id": Uuid::new_v4(),
        "text_storage_id": text,
        "file_size_bytes": 120,
        "content_md5_hash": "d41d8cd98f00b204e9800998ecf8427e",
        "correlation_id": Uuid::new_v4(),
        "timestamp": "2026-01-01T10:00:00Z",
    })
}

fn failure(batch_id: &str, upload: &str) -> Value {
    json!({
        "event": "essay.validation.failed",
        "entity_id": batch_id,
        "file_upload_id": upload,
        "original_file_name": format!("{upload}.pdf"),
        "raw_file_storage_id": "STORAGE_FAILED",
        "validation_error_code": "CONTENT_TOO_SHORT",
        "validation_error_detail": {"error_code": "CONTENT_TOO_SHORT", "message": "short"},
        "file_size_bytes": 12,
        "correlation_id": Uuid::new_v4(),
        "timestamp": "2026-01-01T10:00:00Z",
    })
}

/// The completion event's envelope, read from the outbox, as the consumer would get it.
fn delivered(topic: &str, envelope: &Value) -> InboxMessage {
    InboxMessage {
        topic: topic.to_owned(),
        payload: Some(envelope.to_string().into_bytes()),
        headers: vec![(
            "event_id".into(),
            envelope["event_id"].as_str().unwrap().as_bytes().to_vec(),
        )],
        ..InboxMessage::default()
    }
}

#[tokio::test]
async fn content_takes_the_lowest_free_slot_and_the_last_one_completes_the_batch() {
    let f = fixture("p.").await;
    let (batch, registration) = f.batch(&["essay-b", "essay-a"], None).await;
    let upload_correlation = Uuid::new_v4();
    let handled = f
        .run(
            &f.readiness,
            &f.message(CONTENT, content(&batch, "u1", "t1"), upload_correlation),
        )
        .await
        .unwrap();
    assert_eq!(handled, Handled::applied());
    assert_eq!(
        f.slots(&batch).await,
        vec![
            ("essay-a".into(), "assigned".into(), Some("u1".into())),
            ("essay-b".into(), "available".into(), None),
        ]
    );
    let assigned = f.events(SLOT_ASSIGNED).await;
    assert_eq!(assigned.len(), 1);
    let rows = events(&f.conn, &format!("p.{SLOT_ASSIGNED}")).await;
    assert_eq!(rows[0].0.event_key, "essay-a", "keyed by the essay");
    assert_eq!(rows[0].0.aggregate_type, "essay");
    let envelope = &assigned[0];
    assert_eq!(envelope["event_type"], SLOT_ASSIGNED);
    assert_eq!(envelope["source_service"], "batch-service");
    assert_eq!(envelope["correlation_id"], upload_correlation.to_string());
    let data = &envelope["data"];
    assert_eq!(data["event"], "essay.slot.assigned");
    assert_eq!(data["batch_id"], batch);
    assert_eq!(data["essay_id"], "essay-a");
    assert_eq!(data["file_upload_id"], "u1");
    assert_eq!(data["text_storage_id"], "t1");
    assert_eq!(data["original_file_name"], "u1.txt");
    assert_eq!(data["correlation_id"], upload_correlation.to_string());
    assert!(f.events(COMPLETED).await.is_empty(), "a slot is still free");

    f.run(
        &f.readiness,
        &f.message(CONTENT, content(&batch, "u2", "t2"), Uuid::new_v4()),
    )
    .await
    .unwrap();
    let completed = f.events(COMPLETED).await;
    assert_eq!(completed.len(), 1);
    let rows = events(&f.conn, &format!("p.{COMPLETED}")).await;
    assert_eq!(rows[0].0.event_key, batch);
    let envelope = &completed[0];
    assert_eq!(envelope["correlation_id"], registration.to_string());
    let data = &envelope["data"];
    assert_eq!(data["event"], "batch.content.provisioning.completed");
    assert_eq!(data["batch_id"], batch);
    assert_eq!(data["provisioned_count"], 2);
    assert_eq!(data["expected_count"], 2);
    assert_eq!(data["course_code"], "SV2");
    assert_eq!(data["user_id"], "teacher-9");
    assert_eq!(
        data["essays_for_processing"],
        json!([{"essay_id": "essay-a", "text_storage_id": "t1"},
               {"essay_id": "essay-b", "text_storage_id": "t2"}])
    );
    assert_eq!(
        scalar(
            &f.conn,
            &format!(
                "SELECT count(*) FROM batches WHERE id = '{batch}' AND provisioning_completed_at IS NOT NULL"
            )
        )
        .await,
        1
    );
}

#[tokio::test]
async fn a_resent_file_is_a_duplicate_upload_and_changes_nothing() {
    let f = fixture("").await;
    let (batch, _) = f.batch(&["e1", "e2", "e3"], None).await;
    f.run(
        &f.readiness,
        &f.message(CONTENT, content(&batch, "u1", "t1"), Uuid::new_v4()),
    )
    .await
    .unwrap();
    f.run(
        &f.readiness,
        &f.message(FAILED, failure(&batch, "u9"), Uuid::new_v4()),
    )
    .await
    .unwrap();
    let before = (f.slots(&batch).await, outbox_rows(&f.conn).await.len());
    // Python producers give a re-sent event a new event_id: the natural key catches it.
    for resent in [
        f.message(CONTENT, content(&batch, "u1", "t1"), Uuid::new_v4()),
        f.message(CONTENT, content(&batch, "u-other", "t1"), Uuid::new_v4()),
        f.message(FAILED, failure(&batch, "u9"), Uuid::new_v4()),
        f.message(FAILED, failure(&batch, "u1"), Uuid::new_v4()),
    ] {
        let handled = f.run(&f.readiness, &resent).await.unwrap();
        assert_eq!(handled.as_str(), "duplicate_upload");
    }
    assert_eq!(
        (f.slots(&batch).await, outbox_rows(&f.conn).await.len()),
        before
    );
}

#[tokio::test]
async fn events_for_an_unknown_batch_are_recorded_as_such_and_change_nothing() {
    let f = fixture("").await;
    let unknown = Uuid::new_v4().to_string();
    for message in [
        f.message(CONTENT, content(&unknown, "u1", "t1"), Uuid::new_v4()),
        f.message(FAILED, failure(&unknown, "u1"), Uuid::new_v4()),
    ] {
        let handled = f.run(&f.readiness, &message).await.unwrap();
        assert_eq!(handled.as_str(), "unknown_batch");
    }
    let completion = f.message(
        COMPLETED,
        json!({"batch_id": unknown, "essays_for_processing": []}),
        Uuid::new_v4(),
    );
    assert_eq!(
        f.run(&f.bos, &completion).await.unwrap().as_str(),
        "unknown_batch"
    );
    assert_eq!(counts(&f.conn).await, (0, 0, 0));
}

#[tokio::test]
async fn content_beyond_the_slots_is_excess_and_does_not_complete_twice() {
    let f = fixture("").await;
    let (batch, _) = f.batch(&["e1"], None).await;
    f.run(
        &f.readiness,
        &f.message(CONTENT, content(&batch, "u1", "t1"), Uuid::new_v4()),
    )
    .await
    .unwrap();
    assert_eq!(f.events(COMPLETED).await.len(), 1);
    let correlation = Uuid::new_v4();
    let handled = f
        .run(
            &f.readiness,
            &f.message(CONTENT, content(&batch, "u2", "t2"), correlation),
        )
        .await
        .unwrap();
    assert_eq!(handled.as_str(), "excess_content");
    let excess = f.events(EXCESS).await;
    assert_eq!(excess.len(), 1);
    let data = &excess[0]["data"];
    assert_eq!(data["event"], "excess.content.provisioned");
    assert_eq!(data["batch_id"], batch);
    assert_eq!(data["original_file_name"], "u2.txt");
    assert_eq!(data["text_storage_id"], "t2");
    assert_eq!(data["reason"], "NO_AVAILABLE_SLOT");
    assert_eq!(data["correlation_id"], correlation.to_string());
    assert_eq!(
        f.slots(&batch).await,
        vec![("e1".into(), "assigned".into(), Some("u1".into()))],
        "slots unchanged"
    );
    assert_eq!(f.events(COMPLETED).await.len(), 1, "completed once");

    // A failure with no free slot is only recorded in the inbox.
    let rows = outbox_rows(&f.conn).await.len();
    let handled = f
        .run(
            &f.readiness,
            &f.message(FAILED, failure(&batch, "u3"), Uuid::new_v4()),
        )
        .await
        .unwrap();
    assert_eq!(handled.as_str(), "excess_failure");
    assert_eq!(outbox_rows(&f.conn).await.len(), rows);
    assert_eq!(f.slots(&batch).await.len(), 1);
}

#[tokio::test]
async fn a_failed_file_uses_up_a_slot_and_can_complete_the_batch() {
    let f = fixture("").await;
    let (batch, _) = f.batch(&["e1", "e2"], Some("class-1")).await;
    f.run(
        &f.readiness,
        &f.message(CONTENT, content(&batch, "u1", "t1"), Uuid::new_v4()),
    )
    .await
    .unwrap();
    let handled = f
        .run(
            &f.readiness,
            &f.message(FAILED, failure(&batch, "u2"), Uuid::new_v4()),
        )
        .await
        .unwrap();
    assert_eq!(handled, Handled::applied());
    assert_eq!(
        f.slots(&batch).await,
        vec![
            ("e1".into(), "assigned".into(), Some("u1".into())),
            ("e2".into(), "failed".into(), Some("u2".into())),
        ]
    );
    assert_eq!(
        text(
            &f.conn,
            &format!("SELECT validation_error_code FROM essay_slots WHERE batch_id = '{batch}' AND essay_id = 'e2'")
        )
        .await
        .as_deref(),
        Some("CONTENT_TOO_SHORT")
    );
    let completed = f.events(COMPLETED).await;
    assert_eq!(
        completed.len(),
        1,
        "a failed file completes the batch (ELS never did)"
    );
    let data = &completed[0]["data"];
    assert_eq!(data["provisioned_count"], 1);
    assert_eq!(
        data["expected_count"], 2,
        "the registered count, not the ready one"
    );
    assert_eq!(
        data["essays_for_processing"],
        json!([{"essay_id": "e1", "text_storage_id": "t1"}])
    );
}

#[tokio::test]
async fn a_regular_batch_awaits_student_validation_and_gets_one_matching_command() {
    let f = fixture("p.").await;
    let (batch, _) = f.batch(&["e1", "e2"], Some("class-1")).await;
    for (upload, text) in [("u1", "t1"), ("u2", "t2")] {
        f.run(
            &f.readiness,
            &f.message(CONTENT, content(&batch, upload, text), Uuid::new_v4()),
        )
        .await
        .unwrap();
    }
    let completion = delivered(&format!("p.{COMPLETED}"), &f.events(COMPLETED).await[0]);
    let completion_correlation: Value = serde_json::from_slice::<Value>(
        completion.payload.as_ref().unwrap(),
    )
    .unwrap()["correlation_id"]
        .clone();
    assert_eq!(
        f.run(&f.bos, &completion).await.unwrap(),
        Handled::applied()
    );
    assert_eq!(f.status(&batch).await, "awaiting_student_validation");
    assert_eq!(
        scalar(
            &f.conn,
            &format!("SELECT count(*) FROM batch_essays WHERE batch_id = '{batch}' AND content_reference->>'type' = 'text_content'")
        )
        .await,
        2
    );
    let commands = f.events(COMMAND).await;
    assert_eq!(commands.len(), 1);
    let rows = events(&f.conn, &format!("p.{COMMAND}")).await;
    assert_eq!(rows[0].0.event_key, batch);
    let envelope = &commands[0];
    assert_eq!(envelope["event_type"], COMMAND);
    assert_eq!(envelope["source_service"], "batch-service");
    assert_eq!(
        envelope["correlation_id"], completion_correlation,
        "the consumed envelope's"
    );
    assert_eq!(
        envelope["metadata"],
        json!({"user_id": "teacher-9", "org_id": "org-9"})
    );
    let data = &envelope["data"];
    assert_eq!(
        data["event_name"],
        "batch.student.matching.initiate.command"
    );
    assert_eq!(data["entity_id"], batch);
    assert_eq!(data["entity_type"], "batch");
    assert!(data["parent_id"].is_null());
    assert_eq!(data["class_id"], "class-1");
    assert_eq!(data["course_code"], "SV2");
    assert_eq!(
        data["essays_to_process"],
        json!([{"essay_id": "e1", "text_storage_id": "t1", "spellcheck_metrics": null},
               {"essay_id": "e2", "text_storage_id": "t2", "spellcheck_metrics": null}])
    );

    // Re-sent with a new event id (the Python relay's habit): the guard makes it stale.
    let resent = f.message(
        COMPLETED,
        json!({"batch_id": batch, "essays_for_processing": [{"essay_id": "e1", "text_storage_id": "t1"}]}),
        Uuid::new_v4(),
    );
    assert_eq!(f.run(&f.bos, &resent).await.unwrap().as_str(), "stale");
    // Further along, it cannot be moved back either.
    f.conn
        .execute_unprepared(&format!(
            "UPDATE batches SET status = 'student_validation_completed' WHERE id = '{batch}'"
        ))
        .await
        .unwrap();
    assert_eq!(f.run(&f.bos, &completion).await.unwrap().as_str(), "stale");
    assert_eq!(f.status(&batch).await, "student_validation_completed");
    assert_eq!(f.events(COMMAND).await.len(), 1, "one command in all");
    assert_eq!(
        scalar(
            &f.conn,
            &format!("SELECT count(*) FROM batch_essays WHERE batch_id = '{batch}'")
        )
        .await,
        2
    );
}

#[tokio::test]
async fn a_guest_batch_becomes_ready_without_a_command() {
    let f = fixture("").await;
    let (batch, _) = f.batch(&["e1"], None).await;
    let completion = f.message(
        COMPLETED,
        json!({"event": "batch.content.provisioning.completed", "batch_id": batch,
               "provisioned_count": 1, "expected_count": 1,
               "essays_for_processing": [{"essay_id": "e1", "text_storage_id": "t1", "student_name": null}]}),
        Uuid::new_v4(),
    );
    assert_eq!(
        f.run(&f.bos, &completion).await.unwrap(),
        Handled::applied()
    );
    assert_eq!(f.status(&batch).await, "ready_for_pipeline_execution");
    assert_eq!(
        text(
            &f.conn,
            &format!("SELECT content_reference::text FROM batch_essays WHERE batch_id = '{batch}' AND essay_id = 'e1'")
        )
        .await
        .map(|t| serde_json::from_str::<Value>(&t).unwrap()),
        Some(json!({"text_storage_id": "t1", "type": "text_content"}))
    );
    assert!(f.events(COMMAND).await.is_empty());
}

#[tokio::test]
async fn a_batch_whose_every_file_failed_ends_content_ingestion_failed() {
    let f = fixture("").await;
    let (batch, _) = f.batch(&["e1", "e2"], Some("class-1")).await;
    for upload in ["u1", "u2"] {
        f.run(
            &f.readiness,
            &f.message(FAILED, failure(&batch, upload), Uuid::new_v4()),
        )
        .await
        .unwrap();
    }
    let completed = f.events(COMPLETED).await;
    assert_eq!(completed.len(), 1);
    assert_eq!(completed[0]["data"]["provisioned_count"], 0);
    assert_eq!(completed[0]["data"]["essays_for_processing"], json!([]));
    let completion = delivered(COMPLETED, &completed[0]);
    assert_eq!(
        f.run(&f.bos, &completion).await.unwrap(),
        Handled::applied()
    );
    assert_eq!(f.status(&batch).await, "content_ingestion_failed");
    assert!(
        f.events(COMMAND).await.is_empty(),
        "no command for zero essays"
    );
    assert_eq!(
        scalar(&f.conn, "SELECT count(*) FROM batch_essays").await,
        0
    );
}

#[tokio::test]
async fn unparsable_messages_are_permanent_errors_and_write_nothing() {
    let f = fixture("").await;
    let (batch, _) = f.batch(&["e1"], None).await;
    let rows = outbox_rows(&f.conn).await.len();
    let raw = |topic: &str, payload: &[u8]| InboxMessage {
        topic: topic.to_owned(),
        payload: Some(payload.to_vec()),
        headers: vec![("event_id".into(), Uuid::now_v7().to_string().into_bytes())],
        ..InboxMessage::default()
    };
    let mut missing_upload = content(&batch, "u1", "t1");
    missing_upload
        .as_object_mut()
        .unwrap()
        .remove("file_upload_id");
    let cases: Vec<(&dyn InboxHandler<outbox::OutboxTransaction>, InboxMessage)> = vec![
        (&f.readiness, raw(CONTENT, b"not json")),
        (&f.readiness, InboxMessage { payload: None, ..raw(CONTENT, b"") }),
        (&f.readiness, f.message(CONTENT, missing_upload, Uuid::new_v4())),
        (&f.readiness, f.message(CONTENT, content(&batch, &"u".repeat(300), "t1"), Uuid::new_v4())),
        (&f.readiness, f.message(FAILED, json!({"entity_id": batch}), Uuid::new_v4())),
        (&f.readiness, f.message("huleedu.file.batch.file.added.v1", json!({}), Uuid::new_v4())),
        (&f.bos, raw(COMPLETED, b"{\"data\": {\"batch_id\": {\"id\": 5}}}")),
        (&f.bos, f.message(COMPLETED, json!({"batch_id": batch, "essays_for_processing": [{"essay_id": "x".repeat(37), "text_storage_id": "t"}]}), Uuid::new_v4())),
    ];
    for (handler, message) in cases {
        let error = f.run(handler, &message).await.unwrap_err();
        assert!(!error.is_transient(), "{error}");
    }
    assert_eq!(outbox_rows(&f.conn).await.len(), rows);
    assert_eq!(f.slots(&batch).await[0].1, "available");
    assert_eq!(f.status(&batch).await, "awaiting_content_validation");
}

#[tokio::test]
async fn two_files_of_one_batch_at_once_take_different_slots() {
    let f = fixture("").await;
    let (batch, _) = f.batch(&["e1", "e2"], None).await;
    let first = f.outbox.begin().await.unwrap();
    f.readiness
        .handle(
            &first,
            &f.message(CONTENT, content(&batch, "u1", "t1"), Uuid::new_v4()),
        )
        .await
        .unwrap();
    // The second file's transaction runs while the first is open: it must wait for it.
    let second = tokio::spawn({
        let outbox = f.outbox.clone();
        let readiness = f.readiness.clone();
        let message = f.message(CONTENT, content(&batch, "u2", "t2"), Uuid::new_v4());
        async move {
            let txn = outbox.begin().await.unwrap();
            let handled = readiness.handle(&txn, &message).await.unwrap();
            txn.commit().await.unwrap();
            handled
        }
    });
    let database = f._db.name().to_owned();
    let mut waiting = false;
    for _ in 0..200 {
        let blocked = scalar(
            &f.conn,
            &format!(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = '{database}' AND wait_event_type = 'Lock'"
            ),
        )
        .await;
        if blocked > 0 {
            waiting = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(waiting, "the second transaction waits on the batch's lock");
    first.commit().await.unwrap();
    assert_eq!(second.await.unwrap(), Handled::applied());
    assert_eq!(
        f.slots(&batch).await,
        vec![
            ("e1".into(), "assigned".into(), Some("u1".into())),
            ("e2".into(), "assigned".into(), Some("u2".into())),
        ]
    );
    assert_eq!(f.events(SLOT_ASSIGNED).await.len(), 2);
    assert_eq!(f.events(COMPLETED).await.len(), 1);
}

#[test]
fn readiness_els_registers_only_the_provisioning_completed_handler() {
    let internal = config(
        "postgres://u@localhost/db",
        "127.0.0.1:9092",
        &[("BATCH_ORCHESTRATOR_SERVICE_TOPIC_PREFIX", "p.")],
    );
    assert_eq!(internal.readiness, Readiness::Internal);
    let consumers = handlers(&internal);
    assert_eq!(consumers.len(), 2);
    assert_eq!(consumers[0].name, READINESS_CONSUMER);
    assert_eq!(
        consumers[0].topics,
        vec![format!("p.{CONTENT}"), format!("p.{FAILED}")]
    );
    assert_eq!(consumers[1].name, PROVISIONING_COMPLETED_CONSUMER);
    assert_eq!(consumers[1].topics, vec![format!("p.{COMPLETED}")]);

    let els = config(
        "postgres://u@localhost/db",
        "127.0.0.1:9092",
        &[("BATCH_ORCHESTRATOR_SERVICE_READINESS", "els")],
    );
    let consumers = handlers(&els);
    assert_eq!(consumers.len(), 1);
    assert_eq!(consumers[0].name, PROVISIONING_COMPLETED_CONSUMER);
    assert_eq!(consumers[0].topics, vec![COMPLETED.to_owned()]);
}

#[tokio::test]
async fn the_largest_batch_allowed_keeps_every_event_under_kafkas_message_limit() {
    let f = fixture("").await;
    let ids: Vec<String> = (0..5000).map(|_| Uuid::new_v4().to_string()).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let (batch, _) = f.batch(&refs, Some("class-1")).await;
    let essays: Vec<Value> = ids
        .iter()
        .map(|id| json!({"essay_id": id, "text_storage_id": "s".repeat(64)}))
        .collect();
    let completion = f.message(
        COMPLETED,
        json!({"batch_id": batch, "essays_for_processing": essays}),
        Uuid::new_v4(),
    );
    assert_eq!(
        f.run(&f.bos, &completion).await.unwrap(),
        Handled::applied()
    );
    let largest = outbox_rows(&f.conn)
        .await
        .iter()
        .map(|row| row.payload.len())
        .max()
        .unwrap();
    assert!(largest < 1_000_000, "largest event: {largest} bytes");
    assert_eq!(f.events(COMMAND).await.len(), 1);
}
