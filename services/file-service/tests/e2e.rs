//! End to end: the real `file-service` binary against the real PostgreSQL and Kafka, with faults
//! made for real (the broker stopped, the service killed with SIGKILL, a failing text store).

mod common;

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use file_service::events::{
    BATCH_FILE_ADDED_TOPIC, BATCH_FILE_REMOVED_TOPIC, ESSAY_CONTENT_PROVISIONED_TOPIC,
    ESSAY_VALIDATION_FAILED_TOPIC,
};
use outbox_test_harness::{KafkaNode, Received, TestDatabase, TestTopic, consume_until_quiet};
use sea_orm::{ConnectionTrait, DatabaseConnection, TransactionTrait};
use serde_json::Value;

/// The service binary running as a child process on a free port.
struct Running {
    child: Child,
    port: u16,
    log: PathBuf,
    client: reqwest::Client,
}

struct Setup {
    db: TestDatabase,
    bootstrap: String,
    prefix: String,
    _topics: Vec<TestTopic>,
}

impl Setup {
    async fn new(bootstrap: &str) -> Self {
        let db = TestDatabase::create().await;
        let (prefix, topics) = topics(bootstrap).await;
        Self {
            db,
            bootstrap: bootstrap.to_owned(),
            prefix,
            _topics: topics,
        }
    }

    fn start(&self, extra: &[(&str, &str)]) -> Running {
        let port = outbox_test_harness::free_port();
        let log = std::env::temp_dir().join(format!("file-service-{port}.log"));
        let out = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_file-service"));
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", self.db.url())
            .env("KAFKA_BOOTSTRAP_SERVERS", &self.bootstrap)
            .env("FILE_SERVICE_HTTP_PORT", port.to_string())
            .env("FILE_SERVICE_MIGRATE_ON_START", "true")
            .env("FILE_SERVICE_TOPIC_PREFIX", &self.prefix)
            .env("OUTBOX_POLL_INTERVAL_MS", "100")
            .env("OUTBOX_STATS_INTERVAL_MS", "250")
            .env("OUTBOX_SHUTDOWN_TIMEOUT_MS", "10000")
            .env("RUST_LOG", "info")
            .env("LOG_FORMAT", "json");
        for (k, v) in extra {
            command.env(k, v);
        }
        let child = command
            .stdout(Stdio::from(out.try_clone().unwrap()))
            .stderr(Stdio::from(out))
            .spawn()
            .unwrap();
        Running {
            child,
            port,
            log,
            client: reqwest::Client::new(),
        }
    }
}

impl Running {
    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/healthz` answers 200.
    async fn ready(&mut self) {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the service exited ({status}):\n{}", self.log());
            }
            if let Ok(response) = self.client.get(self.url("/healthz")).send().await
                && response.status() == 200
            {
                return;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "the service did not become healthy:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn upload(&self, user: &str, batch: &str, files: &[(&str, Vec<u8>)]) -> (u16, Value) {
        let mut parts = vec![Part::Text("batch_id", batch)];
        for (name, bytes) in files {
            parts.push(Part::File(name, bytes));
        }
        let response = self
            .client
            .post(self.url("/v1/files/batch"))
            .header("x-user-id", user)
            .header(
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            )
            .header(
                "content-type",
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .body(multipart(&parts))
            .send()
            .await
            .unwrap();
        (
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        )
    }

    async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self.client.get(self.url(path)).send().await.unwrap();
        (
            response.status().as_u16(),
            response.json().await.unwrap_or(Value::Null),
        )
    }

    async fn metrics(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then the exit status.
    fn terminate(&mut self) -> std::process::ExitStatus {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        self.child.wait().unwrap()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn read(setup: &Setup, topic: &str, expected: usize) -> Vec<Received> {
    consume_until_quiet(
        &setup.bootstrap,
        &format!("{}{topic}", setup.prefix),
        expected,
        Duration::from_secs(60),
        Duration::from_millis(1500),
    )
    .await
}

fn envelope(message: &Received) -> Value {
    message.json()
}

fn ids(body: &Value) -> Vec<String> {
    body["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["file_upload_id"].as_str().unwrap().to_owned())
        .collect()
}

fn check_headers(message: &Received, topic: &str) {
    let value = envelope(message);
    assert_eq!(message.header("event_id"), value["event_id"].as_str());
    assert_eq!(message.header("event_type"), Some(topic));
    assert_eq!(message.header("content-type"), Some("application/json"));
    assert!(message.header("aggregate_id").is_some());
    let traceparent = message.header("traceparent").unwrap();
    assert!(traceparent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"));
    assert_eq!(value["metadata"]["traceparent"], traceparent);
    assert_eq!(value["event_type"], topic);
    assert_eq!(value["source_service"], "file-service");
    assert_eq!(value["schema_version"], 1);
    assert_eq!(value["data"]["correlation_id"], value["correlation_id"]);
}

#[tokio::test]
async fn valid_txt_docx_and_pdf_uploads_are_announced_with_the_contracts_keys_and_fields() {
    let bootstrap = outbox_test_harness::kafka_bootstrap_servers().await;
    let setup = Setup::new(&bootstrap).await;
    let mut service = setup.start(&[]);
    service.ready().await;

    let files = [
        ("reading.txt", sample("reading.txt")),
        ("sleep.docx", sample("sleep.docx")),
        ("climate.pdf", sample("climate.pdf")),
    ];
    let (status, body) = service.upload("teacher", "batch-e2e", &files).await;
    assert_eq!(status, 202, "{body}");
    let upload_ids = ids(&body);

    let added = read(&setup, BATCH_FILE_ADDED_TOPIC, 3).await;
    assert_eq!(added.len(), 3);
    for message in &added {
        check_headers(message, BATCH_FILE_ADDED_TOPIC);
        assert_eq!(message.key.as_deref(), Some("batch-e2e"));
        let data = &envelope(message)["data"];
        assert_eq!(data["event"], "batch.file.added");
        assert_eq!(data["batch_id"], "batch-e2e");
        assert_eq!(data["user_id"], "teacher");
        assert!(upload_ids.contains(&data["file_upload_id"].as_str().unwrap().to_owned()));
    }

    let provisioned = read(&setup, ESSAY_CONTENT_PROVISIONED_TOPIC, 3).await;
    assert_eq!(provisioned.len(), 3, "{}", service.log());
    let mut seen = HashSet::new();
    for message in &provisioned {
        check_headers(message, ESSAY_CONTENT_PROVISIONED_TOPIC);
        let data = envelope(message)["data"].clone();
        let upload_id = data["file_upload_id"].as_str().unwrap().to_owned();
        assert_eq!(
            message.key.as_deref(),
            Some(upload_id.as_str()),
            "keyed by upload"
        );
        assert_eq!(message.header("aggregate_type"), Some("file_upload"));
        assert_eq!(data["event"], "essay.content.provisioned");
        assert_eq!(data["entity_id"], "batch-e2e");
        let name = data["original_file_name"].as_str().unwrap();
        let bytes = &files.iter().find(|(n, _)| *n == name).unwrap().1;
        assert_eq!(data["file_size_bytes"], bytes.len());
        assert_eq!(
            data["content_md5_hash"],
            file_service::processing::md5_hex(bytes)
        );
        for field in ["raw_file_storage_id", "text_storage_id", "timestamp"] {
            assert!(data[field].is_string(), "{field}");
        }
        assert!(seen.insert(upload_id));
    }
    assert_eq!(seen.len(), 3, "one outcome per upload");
    assert!(
        read(&setup, ESSAY_VALIDATION_FAILED_TOPIC, 0)
            .await
            .is_empty()
    );

    let exit = service.terminate();
    assert!(
        exit.success(),
        "SIGTERM stops the service cleanly:\n{}",
        service.log()
    );
}

#[tokio::test]
async fn each_validation_failure_is_announced_with_its_code_and_delete_with_the_real_filename() {
    let bootstrap = outbox_test_harness::kafka_bootstrap_servers().await;
    let setup = Setup::new(&bootstrap).await;
    let mut service = setup.start(&[]);
    service.ready().await;

    let exactly = |n: usize| format!("  {}  ", "x".repeat(n)).into_bytes();
    let cases: Vec<(&str, Vec<u8>, Option<&str>)> = vec![
        (
            "too-short.txt",
            sample("too-short.txt"),
            Some("CONTENT_TOO_SHORT"),
        ),
        ("empty.txt", Vec::new(), Some("EMPTY_CONTENT")),
        ("blank.txt", b"   \n\t  ".to_vec(), Some("EMPTY_CONTENT")),
        ("long.txt", exactly(50_001), Some("CONTENT_TOO_LONG")),
        (
            "drawing.png",
            sample("drawing.png"),
            Some("TEXT_EXTRACTION_FAILED"),
        ),
        (
            "not-really.pdf",
            fixture("not-really.pdf"),
            Some("TEXT_EXTRACTION_FAILED"),
        ),
        (
            "secret.pdf",
            fixture("encrypted.pdf"),
            Some("ENCRYPTED_FILE_UNSUPPORTED"),
        ),
        ("fifty.txt", exactly(50), None),
        ("fifty-thousand.txt", exactly(50_000), None),
    ];
    let files: Vec<(&str, Vec<u8>)> = cases.iter().map(|(n, b, _)| (*n, b.clone())).collect();
    let (status, body) = service.upload("u", "batch-v", &files).await;
    assert_eq!(status, 202, "{body}");

    let failed = read(&setup, ESSAY_VALIDATION_FAILED_TOPIC, 7).await;
    let provisioned = read(&setup, ESSAY_CONTENT_PROVISIONED_TOPIC, 2).await;
    let mut codes: HashMap<String, String> = HashMap::new();
    for message in &failed {
        check_headers(message, ESSAY_VALIDATION_FAILED_TOPIC);
        let data = envelope(message)["data"].clone();
        assert_eq!(data["event"], "essay.validation.failed");
        assert_eq!(
            data["validation_error_detail"]["error_code"],
            data["validation_error_code"]
        );
        assert_eq!(data["validation_error_detail"]["service"], "file-service");
        assert!(
            data["validation_error_detail"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty())
        );
        assert_eq!(message.key.as_deref(), data["file_upload_id"].as_str());
        codes.insert(
            data["original_file_name"].as_str().unwrap().to_owned(),
            data["validation_error_code"].as_str().unwrap().to_owned(),
        );
    }
    for (name, _, code) in &cases {
        match code {
            Some(code) => assert_eq!(codes.get(*name).map(String::as_str), Some(*code), "{name}"),
            None => assert!(
                provisioned
                    .iter()
                    .any(|m| envelope(m)["data"]["original_file_name"] == *name),
                "{name} passes"
            ),
        }
    }
    assert_eq!(failed.len(), 7);
    assert_eq!(provisioned.len(), 2);

    let short_id = ids(&body)[0].clone();
    let response = service
        .client
        .delete(service.url(&format!("/v1/files/batch/batch-v/files/{short_id}")))
        .header("x-user-id", "u")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let removed = read(&setup, BATCH_FILE_REMOVED_TOPIC, 1).await;
    assert_eq!(removed.len(), 1);
    let data = envelope(&removed[0])["data"].clone();
    assert_eq!(data["filename"], "too-short.txt", "the real filename");
    assert_eq!(data["file_upload_id"], short_id);
    assert_eq!(removed[0].key.as_deref(), Some("batch-v"));
    service.terminate();
}

#[tokio::test]
async fn another_user_gets_403_and_a_locked_batch_409_from_the_running_service() {
    let bootstrap = outbox_test_harness::kafka_bootstrap_servers().await;
    let setup = Setup::new(&bootstrap).await;
    let answers: Answers = Arc::new(Mutex::new(HashMap::new()));
    answers
        .lock()
        .unwrap()
        .insert("mine".into(), (200, pipeline_state("owner", &[])));
    answers.lock().unwrap().insert(
        "busy".into(),
        (
            200,
            pipeline_state("owner", &[("nlp", "dispatch_initiated")]),
        ),
    );
    let orchestrator_url = orchestrator(answers).await;
    let mut service = setup.start(&[("BATCH_ORCHESTRATOR_URL", &orchestrator_url)]);
    service.ready().await;

    let essay = vec![("reading.txt", sample("reading.txt"))];
    assert_eq!(service.upload("owner", "mine", &essay).await.0, 202);
    let (status, body) = service.upload("stranger", "mine", &essay).await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "FORBIDDEN");
    let (status, body) = service.upload("owner", "busy", &essay).await;
    assert_eq!(status, 409);
    assert_eq!(body["error"]["code"], "BATCH_LOCKED");
    let added = read(&setup, BATCH_FILE_ADDED_TOPIC, 1).await;
    assert_eq!(added.len(), 1, "refused uploads announce nothing");

    // Bad input against the running binary: clear 4xx, nothing written.
    let response = service
        .client
        .post(service.url("/v1/files/batch"))
        .header("x-user-id", "owner")
        .header("content-type", "multipart/form-data; boundary=nope")
        .body("garbage")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    service.terminate();
}

async fn metric(service: &Running, name: &str) -> Option<f64> {
    let text = service.metrics().await;
    text.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn with_kafka_down_uploads_succeed_and_every_event_arrives_once_after_it_returns() {
    let node = KafkaNode::start().await;
    let setup = Setup::new(&node.bootstrap()).await;
    let mut service = setup.start(&[]);
    service.ready().await;

    node.stop().await;
    let files = vec![
        ("reading.txt", sample("reading.txt")),
        ("sleep.docx", sample("sleep.docx")),
        ("too-short.txt", sample("too-short.txt")),
    ];
    let (status, body) = service.upload("u", "batch-down", &files).await;
    assert_eq!(status, 202, "uploads do not need Kafka: {body}");

    // Six events wait in the outbox (three added, three outcomes), visible in both endpoints.
    let started = Instant::now();
    loop {
        let (_, health) = service.get_json("/healthz").await;
        let pending = metric(&service, "outbox_events_pending")
            .await
            .unwrap_or_default();
        if health["outbox"]["pending"] == 6 && pending >= 6.0 {
            assert!(
                health["outbox"]["oldest_pending_age_seconds"]
                    .as_f64()
                    .unwrap()
                    >= 0.0
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{health}\n{}",
            service.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    node.start_again().await;
    let added = read(&setup, BATCH_FILE_ADDED_TOPIC, 3).await;
    let provisioned = read(&setup, ESSAY_CONTENT_PROVISIONED_TOPIC, 2).await;
    let failed = read(&setup, ESSAY_VALIDATION_FAILED_TOPIC, 1).await;
    assert_eq!(
        (added.len(), provisioned.len(), failed.len()),
        (3, 2, 1),
        "each once"
    );
    let (_, health) = service.get_json("/healthz").await;
    let started = Instant::now();
    let mut health = health;
    while health["outbox"]["pending"] != 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "{health}");
        tokio::time::sleep(Duration::from_millis(200)).await;
        health = service.get_json("/healthz").await.1;
    }
    service.terminate();
}

async fn exec(conn: &DatabaseConnection, sql: &str) {
    conn.execute_unprepared(sql).await.unwrap();
}

async fn outbox_count(conn: &DatabaseConnection, event_type: &str, upload: &str) -> i64 {
    conn.query_one(sea_orm::Statement::from_sql_and_values(
        sea_orm::DbBackend::Postgres,
        "SELECT count(*) AS n FROM event_outbox WHERE event_type = $1 AND event_key = $2",
        [event_type.into(), upload.into()],
    ))
    .await
    .unwrap()
    .unwrap()
    .try_get("", "n")
    .unwrap()
}

async fn upload_status(conn: &DatabaseConnection, upload: &str) -> (String, Option<String>) {
    let row = conn
        .query_one(sea_orm::Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            "SELECT status, error_code FROM file_uploads WHERE file_upload_id = $1::uuid",
            [upload.into()],
        ))
        .await
        .unwrap()
        .unwrap();
    (
        row.try_get("", "status").unwrap(),
        row.try_get("", "error_code").unwrap(),
    )
}

#[tokio::test]
async fn a_failing_text_store_writes_no_event_then_retries_or_fails_the_upload_with_its_event() {
    let bootstrap = outbox_test_harness::kafka_bootstrap_servers().await;
    let setup = Setup::new(&bootstrap).await;
    // Five attempts (about three seconds of backoff) outlast the broken store's first 1.5 s.
    let mut service = setup.start(&[("FILE_SERVICE_MAX_PROCESSING_ATTEMPTS", "5")]);
    service.ready().await;
    let conn = setup.db.connect().await;
    let break_store = "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS
         $$ BEGIN RAISE EXCEPTION 'text store unavailable'; END $$;
         CREATE TRIGGER refuse BEFORE INSERT ON extracted_texts FOR EACH ROW EXECUTE FUNCTION refuse();";
    exec(&conn, break_store).await;

    let (_, body) = service
        .upload("u", "batch-f", &[("reading.txt", sample("reading.txt"))])
        .await;
    let first = ids(&body)[0].clone();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        upload_status(&conn, &first).await.0,
        "pending",
        "{}",
        service.log()
    );
    assert_eq!(
        outbox_count(&conn, ESSAY_CONTENT_PROVISIONED_TOPIC, &first).await,
        0
    );
    assert!(
        service
            .log()
            .contains("upload processing failed; will retry")
    );

    // The store recovers: the retry provisions the essay, once.
    exec(&conn, "DROP TRIGGER refuse ON extracted_texts").await;
    let started = Instant::now();
    while upload_status(&conn, &first).await.0 != "completed" {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{}",
            service.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let provisioned = read(&setup, ESSAY_CONTENT_PROVISIONED_TOPIC, 1).await;
    assert_eq!(provisioned.len(), 1);

    // The store stays broken: after its attempts the upload is failed, with its event.
    exec(&conn, "CREATE TRIGGER refuse BEFORE INSERT ON extracted_texts FOR EACH ROW EXECUTE FUNCTION refuse()").await;
    let (_, body) = service
        .upload("u", "batch-f", &[("again.txt", sample("reading.txt"))])
        .await;
    let second = ids(&body)[0].clone();
    let started = Instant::now();
    while upload_status(&conn, &second).await.0 == "pending" {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "{}",
            service.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        upload_status(&conn, &second).await,
        (
            "failed".to_owned(),
            Some("UNKNOWN_VALIDATION_ERROR".to_owned())
        )
    );
    assert_eq!(
        outbox_count(&conn, ESSAY_CONTENT_PROVISIONED_TOPIC, &second).await,
        0
    );
    let failed = read(&setup, ESSAY_VALIDATION_FAILED_TOPIC, 1).await;
    assert_eq!(failed.len(), 1);
    assert_eq!(envelope(&failed[0])["data"]["file_upload_id"], second);
    service.terminate();
}

#[tokio::test]
async fn uploads_pending_when_the_service_is_killed_are_processed_once_after_restart() {
    let bootstrap = outbox_test_harness::kafka_bootstrap_servers().await;
    let setup = Setup::new(&bootstrap).await;
    let mut service = setup.start(&[]);
    service.ready().await;
    let conn = setup.db.connect().await;

    // Hold the text store so processing cannot finish before the kill.
    let blocker = conn.begin().await.unwrap();
    blocker
        .execute_unprepared("LOCK TABLE extracted_texts IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let files: Vec<(&str, Vec<u8>)> = (0..3)
        .map(|_| ("reading.txt", sample("reading.txt")))
        .collect();
    let (status, body) = service.upload("u", "batch-k", &files).await;
    assert_eq!(status, 202);
    let uploads = ids(&body);
    tokio::time::sleep(Duration::from_millis(500)).await;
    service.kill();
    blocker.rollback().await.unwrap();
    for upload in &uploads {
        assert_eq!(
            upload_status(&conn, upload).await.0,
            "pending",
            "killed before processing"
        );
    }

    let mut restarted = setup.start(&[]);
    restarted.ready().await;
    let started = Instant::now();
    for upload in &uploads {
        while upload_status(&conn, upload).await.0 == "pending" {
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{}",
                restarted.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let provisioned = read(&setup, ESSAY_CONTENT_PROVISIONED_TOPIC, 3).await;
    let mut per_upload: HashMap<String, HashSet<String>> = HashMap::new();
    for message in &provisioned {
        per_upload
            .entry(message.key.clone().unwrap())
            .or_default()
            .insert(message.header("event_id").unwrap().to_owned());
    }
    assert_eq!(per_upload.len(), 3, "every pending upload was processed");
    assert!(
        per_upload.values().all(|events| events.len() == 1),
        "exactly one outcome event per upload: {per_upload:?}"
    );
    restarted.terminate();
}
