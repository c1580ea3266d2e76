//! The binary: configuration errors, `migrate`, and `serve` from start to a graceful stop.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use outbox_test_harness::TestDatabase;

const BIN: &str = env!("CARGO_BIN_EXE_batch-orchestrator");

fn run(db_url: Option<&str>, env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut command = Command::new(BIN);
    command.env_clear().env("RUST_LOG", "warn").args(args);
    if let Some(url) = db_url {
        command.env("DATABASE_URL", url);
    }
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().unwrap()
}

#[test]
fn a_missing_or_malformed_variable_stops_the_service_naming_it() {
    let missing = run(None, &[], &["serve"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("DATABASE_URL"));
    for (name, value) in [
        ("BATCH_ORCHESTRATOR_SERVICE_PORT", "port"),
        ("BATCH_ORCHESTRATOR_SERVICE_READINESS", "maybe"),
        ("BATCH_ORCHESTRATOR_SERVICE_MAX_ESSAYS", "-1"),
    ] {
        let bad = run(Some("postgres://x@localhost/db"), &[(name, value)], &[]);
        assert_eq!(bad.status.code(), Some(2), "{name}");
        assert!(
            String::from_utf8_lossy(&bad.stderr).contains(name),
            "{bad:?}"
        );
    }
}

#[tokio::test]
async fn migrate_creates_the_outbox_inbox_and_service_tables_and_reverts_its_own() {
    let db = TestDatabase::create().await;
    let url = db.url().to_owned();
    let unmigrated = tokio::task::spawn_blocking({
        let url = url.clone();
        move || {
            run(
                Some(&url),
                &[("BATCH_ORCHESTRATOR_SERVICE_PORT", "0")],
                &["serve"],
            )
        }
    })
    .await
    .unwrap();
    assert!(!unmigrated.status.success());
    assert!(String::from_utf8_lossy(&unmigrated.stderr).contains("migrate up"));

    let up = run(Some(&url), &[], &["migrate", "up"]);
    assert!(up.status.success(), "{up:?}");
    let status =
        String::from_utf8_lossy(&run(Some(&url), &[], &["migrate", "status"]).stdout).into_owned();
    for name in [
        "m20261127_000001_create_event_outbox",
        "m20261130_000002_create_event_inbox",
        "m20261130_000101_create_batch_orchestrator_tables",
        "m20261207_000001_compress_outbox_payloads_lz4",
    ] {
        assert!(status.contains(&format!("Applied\t{name}")), "{status}");
    }
    let down = run(Some(&url), &[], &["migrate", "down"]);
    assert!(down.status.success(), "{down:?}");
    let status =
        String::from_utf8_lossy(&run(Some(&url), &[], &["migrate", "status"]).stdout).into_owned();
    assert!(
        status.contains("Pending\tm20261207_000001_compress_outbox_payloads_lz4"),
        "{status}"
    );
    assert!(status.contains("Applied\tm20261130_000101_create_batch_orchestrator_tables"));
}

#[tokio::test]
async fn serve_answers_until_sigterm_then_stops_cleanly() {
    let db = TestDatabase::create().await;
    let port = outbox_test_harness::free_port();
    let bootstrap = outbox_test_harness::kafka_bootstrap_servers().await;
    // The relay's graceful stop finishes the batch in flight: the registration's topic exists.
    let prefix = format!("{}.", outbox_test_harness::unique_name("bos_cli"));
    let child = tokio::process::Command::new(BIN)
        .env_clear()
        .env("RUST_LOG", "warn")
        .env("DATABASE_URL", db.url())
        .env("KAFKA_BOOTSTRAP_SERVERS", &bootstrap)
        .env("BATCH_ORCHESTRATOR_SERVICE_PORT", port.to_string())
        .env("BATCH_ORCHESTRATOR_SERVICE_MIGRATE_ON_START", "true")
        .env("BATCH_ORCHESTRATOR_SERVICE_CREATE_TOPICS", "true")
        .env("BATCH_ORCHESTRATOR_SERVICE_TOPIC_PREFIX", &prefix)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}");
    let mut healthy = false;
    for _ in 0..150 {
        if let Ok(response) = client.get(format!("{url}/healthz")).send().await
            && response.status() == 200
        {
            healthy = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(healthy, "the service never answered /healthz with 200");
    let registered = format!("{prefix}huleedu.batch.essays.registered.v1");
    let response = client
        .post(format!("{url}/v1/batches/register"))
        .json(&serde_json::json!({"expected_essay_count": 1, "course_code": "SV1", "user_id": "t"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 202);
    let batch: serde_json::Value = response.json().await.unwrap();
    let received =
        outbox_test_harness::consume(&bootstrap, &registered, 1, Duration::from_secs(30)).await;
    assert_eq!(received.len(), 1, "the relay published the registration");
    assert_eq!(received[0].key.as_deref(), batch["batch_id"].as_str());

    let pid = child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    drop(client);
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .expect("stopped within 30 s")
        .unwrap();
    assert!(
        output.status.success(),
        "exit status {:?}: {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &bootstrap)
            .create()
            .unwrap();
    let created: Vec<String> = [
        "huleedu.batch.essays.registered.v1",
        "huleedu.batch.student.matching.initiate.command.v1",
        "huleedu.els.essay.slot.assigned.v1",
        "huleedu.els.excess.content.provisioned.v1",
        "huleedu.batch.content.provisioning.completed.v1",
        "huleedu.file.essay.content.provisioned.v1",
        "huleedu.file.essay.validation.failed.v1",
    ]
    .iter()
    .map(|t| format!("{prefix}{t}"))
    .collect();
    let names: Vec<&str> = created.iter().map(String::as_str).collect();
    let _ = admin
        .delete_topics(&names, &rdkafka::admin::AdminOptions::new())
        .await;
}
