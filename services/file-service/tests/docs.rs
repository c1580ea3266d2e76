//! The docs cannot drift: the implementation guide's code is the repository's code, every SQL
//! statement and command of the operations playbook runs against the real services, and the alert
//! rules and the dashboard name only metrics the library records.

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use outbox_core::{OutboxError, RelayStore};
use outbox_seaorm::PostgresOutbox;
use sea_orm::ConnectionTrait;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Fenced blocks of `language` in `markdown`, each with the line before its fence.
fn blocks<'a>(markdown: &'a str, language: &str) -> Vec<(&'a str, String)> {
    let lines: Vec<&str> = markdown.lines().collect();
    let mut found = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i].trim_start();
        if line == format!("```{language}") {
            let indent = lines[i].len() - line.len();
            let before = if i > 0 { lines[i - 1] } else { "" };
            let mut body = Vec::new();
            i += 1;
            while i < lines.len() && lines[i].trim_start() != "```" {
                body.push(lines[i].get(indent..).unwrap_or("").to_owned());
                i += 1;
            }
            found.push((before, body.join("\n") + "\n"));
        }
        i += 1;
    }
    found
}

/// The lines between `ANCHOR: name` and `ANCHOR_END: name` in `path`, dedented.
fn anchor(path: &str, name: &str) -> String {
    let text = read(path);
    let lines: Vec<&str> = text.lines().collect();
    let start = lines
        .iter()
        .position(|l| l.trim_end().ends_with(&format!("ANCHOR: {name}")))
        .unwrap_or_else(|| panic!("{path} has no ANCHOR: {name}"))
        + 1;
    let end = lines
        .iter()
        .position(|l| l.trim_end().ends_with(&format!("ANCHOR_END: {name}")))
        .unwrap_or_else(|| panic!("{path} has no ANCHOR_END: {name}"));
    let kept: Vec<&str> = lines[start..end]
        .iter()
        .copied()
        .filter(|l| !l.contains("ANCHOR: ") && !l.contains("ANCHOR_END: "))
        .collect();
    let indent = kept
        .iter()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    let mut body: Vec<String> = kept
        .iter()
        .map(|l| l.get(indent..).unwrap_or("").to_owned())
        .collect();
    while body.first().is_some_and(|l| l.is_empty()) {
        body.remove(0);
    }
    while body.last().is_some_and(|l| l.is_empty()) {
        body.pop();
    }
    body.join("\n") + "\n"
}

#[test]
fn the_implementation_guide_quotes_code_that_compiles() {
    let guide = read("docs/implementation_guide.md");
    let mut quoted = 0;
    for language in ["rust", "toml"] {
        for (before, body) in blocks(&guide, language) {
            let marker = before
                .strip_prefix("<!-- include: ")
                .and_then(|m| m.strip_suffix(" -->"))
                .unwrap_or_else(|| {
                    panic!("a ```{language} block without an include marker:\n{body}")
                });
            let (path, name) = marker.split_once('#').unwrap();
            assert_eq!(
                body,
                anchor(path, name),
                "the guide's block differs from {marker}: run python3 scripts/docs_sync.py docs/implementation_guide.md"
            );
            quoted += 1;
        }
    }
    assert!(quoted >= 8, "{quoted} blocks");
}

/// Rows in every state the playbook's SQL looks at.
async fn seed(conn: &sea_orm::DatabaseConnection) {
    conn.execute_unprepared(
        "INSERT INTO event_outbox (event_id, aggregate_type, aggregate_id, event_type, topic, event_key, payload)
         SELECT gen_random_uuid(), 'batch', 'b' || (n % 3), 'huleedu.file.batch.file.added.v1',
                'huleedu.file.batch.file.added.v1', 'b' || (n % 3), '\\x7b7d'
         FROM generate_series(1, 50) AS n;
         UPDATE event_outbox SET attempts = 2, next_attempt_at = now() + interval '1 minute',
                last_error = 'Broker: Topic authorization failed' WHERE id IN (3, 4);
         UPDATE event_outbox SET attempts = 10, dead_lettered_at = now(),
                last_error = 'message of about 2000128 bytes is larger than message.max.bytes (1000000)'
         WHERE id IN (5, 6, 42);
         UPDATE event_outbox SET published_at = now() - interval '2 hours' WHERE id > 45;",
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn every_sql_statement_of_the_playbook_runs() {
    let (_db, conn) = common::migrated().await;
    // The inbox entries of the playbook look at `event_inbox`, which a consuming service has.
    conn.execute_unprepared(outbox_seaorm::migration::INBOX_UP_SQL)
        .await
        .unwrap();
    seed(&conn).await;
    // A relay holding the leadership lock, for the statements that find and end it.
    let relay = Arc::new(PostgresOutbox::new(conn.clone()).unwrap());
    assert!(relay.acquire_leadership().await.unwrap());

    let playbook = read("docs/operations_playbook.md");
    let statements = blocks(&playbook, "sql");
    assert!(statements.len() >= 12, "{} SQL blocks", statements.len());
    let mut lock_holders = None;
    for (_, sql) in &statements {
        let rows = conn
            .query_all(sea_orm::Statement::from_string(
                sea_orm::DbBackend::Postgres,
                sql.trim().trim_end_matches(';'),
            ))
            .await
            .unwrap_or_else(|e| panic!("playbook SQL failed: {e}\n{sql}"));
        if sql.contains("FROM pg_locks l\nJOIN pg_stat_activity") {
            lock_holders = Some(rows.len());
        }
    }
    assert_eq!(
        lock_holders,
        Some(1),
        "the lock-holder query finds the relay"
    );
    // The playbook's pg_terminate_backend ended the relay's session.
    assert!(matches!(
        relay.claim_batch(10, None).await,
        Err(OutboxError::LeadershipLost)
    ));
    // The replay statement made dead letter 42 pending again (so the discard after it, which
    // only deletes dead letters, left it alone).
    let row = conn
        .query_one(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT attempts, dead_lettered_at IS NULL AS pending FROM event_outbox WHERE id = 42",
        ))
        .await
        .unwrap()
        .expect("row 42");
    assert!(row.try_get::<bool>("", "pending").unwrap());
    assert_eq!(row.try_get::<i32>("", "attempts").unwrap(), 0);
}

const ADMIN_TOKEN: &str = "playbook-admin-token-01";

/// Shell commands of the playbook, one per line.
fn commands(playbook: &str) -> Vec<String> {
    blocks(playbook, "sh")
        .into_iter()
        .flat_map(|(_, body)| body.lines().map(str::to_owned).collect::<Vec<_>>())
        .filter(|l| !l.trim().is_empty())
        .collect()
}

#[tokio::test]
async fn every_command_of_the_playbook_runs() {
    let (db, conn) = common::migrated().await;
    seed(&conn).await;
    let bootstrap = outbox_test_harness::kafka_bootstrap_servers().await;
    let port = outbox_test_harness::free_port();
    let mut service = Command::new(env!("CARGO_BIN_EXE_file-service"))
        .env_clear()
        .env("DATABASE_URL", db.url())
        .env("KAFKA_BOOTSTRAP_SERVERS", &bootstrap)
        .env("FILE_SERVICE_HTTP_PORT", port.to_string())
        .env(
            "FILE_SERVICE_TOPIC_PREFIX",
            outbox_test_harness::unique_name("pb") + ".",
        )
        .env("OUTBOX_ADMIN_TOKEN", ADMIN_TOKEN)
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();

    let playbook = read("docs/operations_playbook.md");
    let lines = commands(&playbook);
    assert!(lines.len() >= 8, "{lines:?}");
    for line in &lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        let output = match words[0] {
            // The service embeds the `outbox` binary's commands (crate `outbox-cli`, whose own
            // tests run these lines with that binary).
            "outbox" => Command::new(env!("CARGO_BIN_EXE_file-service"))
                .env_clear()
                .env("DATABASE_URL", db.url())
                .env("RUST_LOG", "warn")
                .args(&words)
                .output()
                .unwrap(),
            "file-service" => Command::new(env!("CARGO_BIN_EXE_file-service"))
                .env_clear()
                .env("DATABASE_URL", db.url())
                .env("RUST_LOG", "warn")
                .args(&words[1..])
                .output()
                .unwrap(),
            "scripts/kafka-node.sh" => {
                let broker_port = bootstrap.rsplit(':').next().unwrap();
                let args: Vec<&str> = words[1..]
                    .iter()
                    .map(|w| if *w == "9092" { broker_port } else { w })
                    .collect();
                Command::new("bash")
                    .current_dir(root())
                    .arg(words[0])
                    .args(args)
                    .output()
                    .unwrap()
            }
            "curl" if line.contains("/admin/outbox") => {
                let output = Command::new("bash")
                    .env("OUTBOX_ADMIN_TOKEN", ADMIN_TOKEN)
                    .env("USER", "playbook-test")
                    .arg("-c")
                    .arg(line.replace(":7001", &format!(":{port}")))
                    .output()
                    .unwrap();
                let body: serde_json::Value = serde_json::from_slice(&output.stdout)
                    .unwrap_or_else(|e| panic!("`{line}` answered no JSON ({e}): {output:?}"));
                assert!(body.get("error").is_none(), "`{line}`: {body}");
                output
            }
            "curl" => {
                let url = words[words.len() - 1].replace(":7001", &format!(":{port}"));
                let mut answered = None;
                for _ in 0..100 {
                    if let Ok(response) = reqwest::get(&url).await {
                        answered = Some(response.status());
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                assert!(answered.is_some(), "{line}: no answer");
                continue;
            }
            other => panic!("the playbook runs `{other}`; teach this test to run it"),
        };
        assert!(
            output.status.success(),
            "`{line}` failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let _ = service.kill();
    let _ = service.wait();
}

/// Every `outbox_...` name in `text` is a metric the library records (histograms may add
/// `_bucket`, `_count`, `_sum`).
fn check_metric_names(text: &str, source: &str) {
    use outbox_core::metrics as m;
    let known = [
        m::EVENTS_PENDING,
        m::OLDEST_PENDING_AGE_SECONDS,
        m::EVENTS_RELAYED_TOTAL,
        m::RELAY_ERRORS_TOTAL,
        m::EVENTS_DEAD_LETTERED,
        m::EVENTS_DEAD_LETTERED_TOTAL,
        m::RELAY_BATCH_DURATION_SECONDS,
        m::PUBLISH_LAG_SECONDS,
        m::EVENTS_ADDED_TOTAL,
        m::RELAY_LEADER,
        m::RELAY_LAST_POLL_TIMESTAMP_SECONDS,
        m::COMMIT_HORIZON_WAIT_SECONDS,
        m::INBOX_CONSUMED_TOTAL,
        m::INBOX_DUPLICATES_TOTAL,
        m::INBOX_REJECTED_TOTAL,
        m::INBOX_HANDLER_ERRORS_TOTAL,
        m::INBOX_ERRORS_TOTAL,
        m::INBOX_HANDLER_DURATION_SECONDS,
        m::INBOX_BATCH_SIZE,
        m::INBOX_LAG_MESSAGES,
        m::INBOX_LAG_SECONDS,
    ];
    let mut seen = 0;
    for (start, _) in text.match_indices("outbox_") {
        if text[..start]
            .chars()
            .last()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            continue;
        }
        let name: String = text[start..]
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if name == "outbox_relay" || name.starts_with("outbox_di") {
            continue;
        }
        let base = ["_bucket", "_count", "_sum"]
            .iter()
            .find_map(|s| name.strip_suffix(s))
            .filter(|b| known.contains(b))
            .unwrap_or(&name);
        assert!(
            known.contains(&base),
            "{source} names `{name}`, which no code records"
        );
        seen += 1;
    }
    assert!(seen >= 5, "{source}: {seen} metric names");
}

#[test]
fn alert_rules_and_the_dashboard_name_only_recorded_metrics() {
    check_metric_names(&read("ops/prometheus/outbox-alerts.yml"), "the alert rules");
    let dashboard: serde_json::Value =
        serde_json::from_str(&read("ops/grafana/outbox-dashboard.json")).unwrap();
    let mut expressions = String::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            expressions.push_str(target["expr"].as_str().unwrap());
            expressions.push('\n');
        }
    }
    check_metric_names(&expressions, "the dashboard");
    let playbook = read("docs/operations_playbook.md");
    check_metric_names(&playbook, "the playbook");
    let rules = read("ops/prometheus/outbox-alerts.yml");
    for alert in rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
    {
        assert!(
            playbook.contains(alert),
            "the playbook does not cover {alert}"
        );
    }
}
