//! The binary's subcommands: configuration errors, `migrate`, and the operator's `outbox`
//! commands against a real database.

use std::process::{Command, Output};

use outbox_test_harness::TestDatabase;
use sea_orm::ConnectionTrait;

fn run(db_url: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_file-service"));
    command.env_clear().env("RUST_LOG", "warn").args(args);
    if let Some(url) = db_url {
        command.env("DATABASE_URL", url);
    }
    command.output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn lines(output: &Output) -> Vec<serde_json::Value> {
    stdout(output)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_missing_or_malformed_variable_stops_the_service_naming_it() {
    let missing = run(None, &["serve"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("DATABASE_URL"));

    let mut command = Command::new(env!("CARGO_BIN_EXE_file-service"));
    let bad_port = command
        .env_clear()
        .env("DATABASE_URL", "postgres://x@localhost/db")
        .env("FILE_SERVICE_HTTP_PORT", "port")
        .output()
        .unwrap();
    assert_eq!(bad_port.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad_port.stderr).contains("FILE_SERVICE_HTTP_PORT"));
}

#[tokio::test]
async fn migrate_and_the_outbox_commands_work_on_a_real_database() {
    let db = TestDatabase::create().await;
    let url = db.url().to_owned();
    let serve_unmigrated = tokio::task::spawn_blocking({
        let url = url.clone();
        move || run(Some(&url), &["serve"])
    })
    .await
    .unwrap();
    assert!(!serve_unmigrated.status.success());
    assert!(String::from_utf8_lossy(&serve_unmigrated.stderr).contains("migrate up"));

    let up = run(Some(&url), &["migrate", "up"]);
    assert!(up.status.success(), "{up:?}");
    let status = run(Some(&url), &["migrate", "status"]);
    let listed = stdout(&status);
    assert!(
        listed.contains("Applied\tm20261127_000001_create_event_outbox"),
        "{listed}"
    );
    assert!(listed.contains("Applied\tm20261127_000002_create_file_service_tables"));
    assert!(listed.contains("Applied\tm20261130_000001_add_file_upload_processing_attempts"));

    let conn = db.connect().await;
    conn.execute_unprepared(
        "INSERT INTO event_outbox (event_id, aggregate_type, aggregate_id, event_type, topic, event_key, payload)
         SELECT gen_random_uuid(), 'file_upload', 'u' || n, 'T' || (n % 2), 'topic.' || (n % 2), 'k' || n, '\\x00'
         FROM generate_series(1, 6) AS n;
         UPDATE event_outbox SET dead_lettered_at = now(), attempts = 10, last_error = 'too large'
         WHERE id <= 4;",
    )
    .await
    .unwrap();

    let stats = lines(&run(Some(&url), &["outbox", "stats"]));
    assert_eq!(stats[0]["pending"], 2);
    assert_eq!(stats[0]["dead_lettered"], 4);

    let listed = lines(&run(
        Some(&url),
        &["outbox", "dead-letters", "--topic", "topic.1"],
    ));
    assert_eq!(listed.len(), 2);
    assert!(
        listed
            .iter()
            .all(|d| d["topic"] == "topic.1" && d["last_error"] == "too large")
    );

    let replayed = lines(&run(Some(&url), &["outbox", "replay", "--id", "1"]));
    assert_eq!(replayed[0]["replayed"], 1);
    let discarded = lines(&run(
        Some(&url),
        &["outbox", "discard", "--all", "--event-type", "T0"],
    ));
    assert_eq!(
        discarded[0]["discarded"], 2,
        "ids 2 and 4 are T0 dead letters"
    );
    let stats = lines(&run(Some(&url), &["outbox", "stats"]));
    assert_eq!(
        (
            stats[0]["pending"].clone(),
            stats[0]["dead_lettered"].clone()
        ),
        (3.into(), 1.into())
    );

    let nothing = run(Some(&url), &["outbox", "replay"]);
    assert!(!nothing.status.success());
    assert!(String::from_utf8_lossy(&nothing.stderr).contains("--id"));

    let down = run(Some(&url), &["migrate", "down"]);
    assert!(down.status.success());
    let after_down = stdout(&run(Some(&url), &["migrate", "status"]));
    assert!(
        after_down.contains("Pending\tm20261130_000001"),
        "{after_down}"
    );
    assert!(
        after_down.contains("Applied\tm20261127_000002"),
        "{after_down}"
    );
    let down = run(Some(&url), &["migrate", "down"]);
    assert!(down.status.success());
    assert!(stdout(&run(Some(&url), &["migrate", "status"])).contains("Pending\tm20261127_000002"));
}
