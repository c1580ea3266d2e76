//! The chain for real: the File Service asks this Batch Orchestrator, over HTTP
//! (`BATCH_ORCHESTRATOR_URL`), who owns a batch and whether it is locked; its essay events reach
//! the Batch Orchestrator through Kafka and its inbox; the batch becomes ready for pipelines.
//! Both services run in this process on real sockets, against the real PostgreSQL and Kafka.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;
use outbox_test_harness::{TestDatabase, TestTopic, kafka_bootstrap_servers, unique_name};
use sea_orm::ConnectionTrait;
use sea_orm_migration::MigratorTrait;
use serde_json::{Value, json};

const BOUNDARY: &str = "chain-boundary-5d1c";

/// A multipart upload of `.txt` files to `batch_id`.
fn upload_body(batch_id: &str, files: &[(&str, String)]) -> Vec<u8> {
    let mut body = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"batch_id\"\r\n\r\n{batch_id}\r\n"
    )
    .into_bytes();
    for (name, text) in files {
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"files\"; \
                 filename=\"{name}\"\r\nContent-Type: text/plain\r\n\r\n{text}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    body
}

async fn serve(router: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await });
    format!("http://{address}")
}

fn essay(words: usize) -> String {
    (0..words)
        .map(|i| ["the", "essay", "argues", "that", "sleep", "matters"][i % 6])
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_file_service_asks_this_orchestrator_and_its_events_make_the_batch_ready() {
    let bootstrap = kafka_bootstrap_servers().await;
    let prefix = format!("{}.", unique_name("chain"));
    let mut topics = Vec::new();
    for topic in file_service::events::TOPICS
        .iter()
        .chain(batch_orchestrator::events::PUBLISHED_TOPICS.iter())
    {
        topics.push(TestTopic::create_named(&bootstrap, &format!("{prefix}{topic}"), 2).await);
    }

    // The Batch Orchestrator: relay, inbox and HTTP.
    let (bos_db, bos_conn) = migrated().await;
    let bos_config = config(
        bos_db.url(),
        &bootstrap,
        &[
            ("BATCH_ORCHESTRATOR_SERVICE_TOPIC_PREFIX", &prefix),
            (
                "BATCH_ORCHESTRATOR_SERVICE_KAFKA_CONSUMER_GROUP_ID",
                &unique_name("bos"),
            ),
        ],
    );
    let bos = batch_orchestrator::app::start(&bos_config, bos_conn.clone()).unwrap();
    let bos_url = serve(batch_orchestrator::http::app(bos.state.clone())).await;

    // The File Service, asking it for owners and locks.
    let fs_db = TestDatabase::create().await;
    let fs_conn = fs_db.connect().await;
    file_service::db::Migrator::up(&fs_conn, None)
        .await
        .unwrap();
    let mut env: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in [
        ("DATABASE_URL", fs_db.url()),
        ("KAFKA_BOOTSTRAP_SERVERS", bootstrap.as_str()),
        ("FILE_SERVICE_TOPIC_PREFIX", prefix.as_str()),
        ("BATCH_ORCHESTRATOR_URL", bos_url.as_str()),
        ("OUTBOX_POLL_INTERVAL_MS", "100"),
    ] {
        env.insert(k.into(), v.into());
    }
    let fs_config = file_service::config::Config::from_env(&env).unwrap();
    let fs = file_service::app::build(&fs_config, fs_conn.clone()).unwrap();
    fs.outbox.start().unwrap();
    let fs_url = serve(file_service::http::app(fs.clone())).await;

    let client = reqwest::Client::new();
    let registered: Value = client
        .post(format!("{bos_url}/v1/batches/register"))
        .json(&json!({"expected_essay_count": 2, "course_code": "ENG5", "user_id": "teacher-1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let batch_id = registered["batch_id"].as_str().unwrap().to_owned();
    let upload = |user: &'static str, files: Vec<(&'static str, String)>| {
        let request = client
            .post(format!("{fs_url}/v1/files/batch"))
            .header("X-User-ID", user)
            .header(
                "Content-Type",
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .body(upload_body(&batch_id, &files));
        async move { request.send().await.unwrap().status().as_u16() }
    };

    // Another teacher's upload is refused: the Batch Orchestrator says who owns the batch.
    assert_eq!(upload("teacher-2", vec![("a.txt", essay(120))]).await, 403);
    assert_eq!(
        upload(
            "teacher-1",
            vec![("sleep.txt", essay(120)), ("short.txt", essay(3))]
        )
        .await,
        202
    );

    // The File Service's events (one essay provisioned, one failed validation) fill both slots.
    let mut status = String::new();
    for _ in 0..600 {
        let body: Value = client
            .get(format!("{bos_url}/v1/batches/{batch_id}/status"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        status = body["status"].as_str().unwrap_or_default().to_owned();
        if status != "awaiting_content_validation" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, "ready_for_pipeline_execution");
    assert_eq!(
        scalar(
            &bos_conn,
            "SELECT count(*) FROM essay_slots WHERE status = 'assigned'"
        )
        .await,
        1
    );

    // A pipeline phase in progress locks the batch: the File Service refuses further uploads.
    bos_conn
        .execute_unprepared(&format!(
            "UPDATE batches SET pipeline_configuration = jsonb_set(pipeline_configuration::jsonb, \
             '{{spellcheck,status}}', '\"in_progress\"')::json WHERE id = '{batch_id}'"
        ))
        .await
        .unwrap();
    assert_eq!(
        upload("teacher-1", vec![("late.txt", essay(120))]).await,
        409
    );

    bos.stop().await.unwrap();
    fs.outbox.stop().await.unwrap();
    drop(topics);
}
