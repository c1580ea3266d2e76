//! The service consuming for real: the File Service's events published to Kafka, applied once
//! each through the inbox (the same bytes delivered twice, a poison message beside them), the
//! readiness module's events relayed to Kafka and consumed again by the provisioning-completed
//! handler, the batch's status read back over HTTP and the command read back from Kafka.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use batch_orchestrator::app::{Running, start};
use common::*;
use outbox_test_harness::{TestTopic, consume, consume_until_quiet, unique_name};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use uuid::Uuid;

const TOPICS: [&str; 7] = [
    "huleedu.batch.essays.registered.v1",
    "huleedu.batch.student.matching.initiate.command.v1",
    "huleedu.els.essay.slot.assigned.v1",
    "huleedu.els.excess.content.provisioned.v1",
    "huleedu.batch.content.provisioning.completed.v1",
    "huleedu.file.essay.content.provisioned.v1",
    "huleedu.file.essay.validation.failed.v1",
];

/// Publishes `payload` with an `event_id` header, as the outbox's relay does.
async fn publish(
    producer: &FutureProducer,
    topic: &str,
    key: &str,
    event_id: Uuid,
    payload: &[u8],
) {
    let id = event_id.to_string();
    producer
        .send(
            FutureRecord::to(topic)
                .key(key)
                .payload(payload)
                .headers(OwnedHeaders::new().insert(Header {
                    key: "event_id",
                    value: Some(id.as_bytes()),
                })),
            Duration::from_secs(10),
        )
        .await
        .expect("published");
}

/// The File Service's `EssayContentProvisionedV1` envelope.
fn provisioned(batch_id: &str, upload: Uuid, event_id: Uuid) -> Vec<u8> {
    json!({
        "event_id": event_id,
        "event_type": "huleedu.file.essay.content.provisioned.v1",
        "event_timestamp": "2026-01-01T10:00:00.000000Z",
        "source_service": "file-service",
        "correlation_id": Uuid::new_v4(),
        "schema_version": 1,
        "metadata": {},
        "data": {
            "event": "essay.content.provisioned",
            "entity_id": batch_id,
            "file_upload_id": upload,
            "original_file_name": format!("{upload}.txt"),
            "raw_file_storage_id": Uuid::new_v4(),
            "text_storage_id": Uuid::new_v4(),
            "file_size_bytes": 300,
            "content_md5_hash": "0123456789abcdef0123456789abcdef",
            "correlation_id": Uuid::new_v4(),
            "timestamp": "2026-01-01T10:00:00.000000Z",
        },
    })
    .to_string()
    .into_bytes()
}

async fn wait_for_status(s: &Service, batch_id: &str, want: &str) -> Value {
    let mut last = Value::Null;
    for _ in 0..300 {
        let (status, _, body) = send(&s.app, get(&format!("/v1/batches/{batch_id}/status"))).await;
        assert_eq!(status, StatusCode::OK);
        if body["status"] == want {
            return body;
        }
        last = body;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("batch {batch_id} never reached {want}: {last}");
}

#[tokio::test]
async fn file_service_events_flow_through_the_inbox_to_a_ready_and_a_matching_batch() {
    let bootstrap = outbox_test_harness::kafka_bootstrap_servers().await;
    let prefix = format!("{}.", unique_name("bos_chain"));
    let mut topics = Vec::new();
    for topic in TOPICS {
        topics.push(TestTopic::create_named(&bootstrap, &format!("{prefix}{topic}"), 3).await);
    }
    let group = unique_name("bos_chain_group");
    let mut s = service(&[
        ("BATCH_ORCHESTRATOR_SERVICE_TOPIC_PREFIX", &prefix),
        ("BATCH_ORCHESTRATOR_SERVICE_KAFKA_CONSUMER_GROUP_ID", &group),
    ])
    .await;
    let config = config(
        s.db.url(),
        &bootstrap,
        &[
            ("BATCH_ORCHESTRATOR_SERVICE_TOPIC_PREFIX", &prefix),
            ("BATCH_ORCHESTRATOR_SERVICE_KAFKA_CONSUMER_GROUP_ID", &group),
        ],
    );
    let running: Running = start(&config, s.conn.clone()).expect("service started");
    s.app = batch_orchestrator::http::app(running.state.clone());

    let regular = register(&s.app, &registration(2, Some("class-1"))).await;
    let guest = register(&s.app, &registration(1, None)).await;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let content_topic = format!("{prefix}huleedu.file.essay.content.provisioned.v1");
    let first = (Uuid::new_v4(), Uuid::now_v7());
    let first_bytes = provisioned(&regular, first.0, first.1);
    publish(
        &producer,
        &content_topic,
        &first.0.to_string(),
        first.1,
        &first_bytes,
    )
    .await;
    // The same bytes again (a relay's redelivery), and a message nobody can parse.
    publish(
        &producer,
        &content_topic,
        &first.0.to_string(),
        first.1,
        &first_bytes,
    )
    .await;
    publish(
        &producer,
        &content_topic,
        "poison",
        Uuid::now_v7(),
        b"{not json",
    )
    .await;
    for batch in [&regular, &guest] {
        let (upload, id) = (Uuid::new_v4(), Uuid::now_v7());
        publish(
            &producer,
            &content_topic,
            &upload.to_string(),
            id,
            &provisioned(batch, upload, id),
        )
        .await;
    }

    let ready = wait_for_status(&s, &guest, "ready_for_pipeline_execution").await;
    assert_eq!(ready["batch_context"]["expected_essay_count"], 1);
    wait_for_status(&s, &regular, "awaiting_student_validation").await;

    let command_topic = format!("{prefix}huleedu.batch.student.matching.initiate.command.v1");
    let commands = consume(&bootstrap, &command_topic, 1, Duration::from_secs(30)).await;
    assert_eq!(commands.len(), 1);
    assert_eq!(commands[0].key.as_deref(), Some(regular.as_str()));
    let command: Value = commands[0].json();
    assert_eq!(command["data"]["entity_id"], regular);
    assert_eq!(
        command["data"]["essays_to_process"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(commands[0].header("event_id"), command["event_id"].as_str());

    let assigned = consume_until_quiet(
        &bootstrap,
        &format!("{prefix}huleedu.els.essay.slot.assigned.v1"),
        3,
        Duration::from_secs(30),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(
        assigned.len(),
        3,
        "the redelivered file took one slot, not two"
    );
    let completed = consume_until_quiet(
        &bootstrap,
        &format!("{prefix}huleedu.batch.content.provisioning.completed.v1"),
        2,
        Duration::from_secs(30),
        Duration::from_secs(2),
    )
    .await;
    assert_eq!(completed.len(), 2, "one completion per batch");

    // The inbox's record: the poison message rejected and kept, everything else applied once.
    let outcome = |consumer: &str, outcome: &str| {
        format!(
            "SELECT count(*) FROM event_inbox WHERE consumer = '{consumer}' AND outcome = '{outcome}'"
        )
    };
    assert_eq!(scalar(&s.conn, &outcome("readiness", "applied")).await, 3);
    assert_eq!(scalar(&s.conn, &outcome("readiness", "rejected")).await, 1);
    assert_eq!(
        scalar(&s.conn, &outcome("provisioning_completed", "applied")).await,
        2
    );
    let status = running.inbox.status();
    assert!(status.duplicates >= 1, "{status:?}");
    assert_eq!(status.rejected, 1, "{status:?}");

    let (code, _, health) = send(&s.app, get("/healthz")).await;
    assert_eq!(code, StatusCode::OK, "{health}");
    assert_eq!(health["dependencies"]["inbox"]["running"], true);
    assert_eq!(health["dependencies"]["inbox"]["rejected"], 1);

    running.stop().await.unwrap();
    let (code, _, health) = send(&s.app, get("/healthz")).await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE, "{health}");
    drop(topics);
}
