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

/// A column's `attcompression`: `l` for lz4, empty for the server's default.
async fn compression(conn: &sea_orm::DatabaseConnection, table: &str, column: &str) -> String {
    let sql = format!(
        "SELECT attcompression::text FROM pg_attribute \
         WHERE attrelid = '{table}'::regclass AND attname = '{column}'"
    );
    conn.query_one(sea_orm::Statement::from_string(
        sea_orm::DbBackend::Postgres,
        sql,
    ))
    .await
    .unwrap()
    .unwrap()
    .try_get_by_index::<String>(0)
    .unwrap()
}

fn json(output: &Output) -> serde_json::Value {
    assert!(output.status.success(), "{output:?}");
    serde_json::from_str(stdout(output).trim()).unwrap()
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
    assert!(listed.contains("Applied\tm20261207_000001_compress_outbox_payloads_lz4"));
    assert!(listed.contains("Applied\tm20261207_000002_compress_file_contents_lz4"));

    let conn = db.connect().await;
    for (table, column) in [
        ("event_outbox", "payload"),
        ("raw_files", "content"),
        ("extracted_texts", "content"),
    ] {
        assert_eq!(
            compression(&conn, table, column).await,
            "l",
            "{table}.{column}"
        );
    }
    conn.execute_unprepared(
        "INSERT INTO event_outbox (event_id, aggregate_type, aggregate_id, event_type, topic, event_key, payload)
         SELECT gen_random_uuid(), 'file_upload', 'u' || n, 'T' || (n % 2), 'topic.' || (n % 2), 'k' || n, '\\x00'
         FROM generate_series(1, 6) AS n;
         UPDATE event_outbox SET dead_lettered_at = now(), attempts = 10, last_error = 'too large'
         WHERE id <= 4;",
    )
    .await
    .unwrap();

    // The `outbox` binary's commands, embedded: same arguments, same JSON, same exit codes.
    let stats = json(&run(Some(&url), &["outbox", "stats", "--json"]));
    assert_eq!(stats["pending"], 2);
    assert_eq!(stats["dead_lettered"], 4);

    let listed = json(&run(
        Some(&url),
        &[
            "outbox",
            "--json",
            "dead-letters",
            "list",
            "--topic",
            "topic.1",
        ],
    ));
    let listed = listed["dead_letters"].as_array().unwrap();
    assert_eq!(listed.len(), 2);
    assert!(
        listed
            .iter()
            .all(|d| d["topic"] == "topic.1" && d["last_error"] == "too large")
    );

    let replayed = json(&run(
        Some(&url),
        &["outbox", "dead-letters", "replay", "--id", "1", "--json"],
    ));
    assert_eq!(replayed["count"], 1);
    let discarded = json(&run(
        Some(&url),
        &[
            "outbox",
            "dead-letters",
            "discard",
            "--all",
            "--event-type",
            "T0",
            "--json",
        ],
    ));
    assert_eq!(discarded["count"], 2, "ids 2 and 4 are T0 dead letters");
    let stats = json(&run(Some(&url), &["outbox", "stats", "--json"]));
    assert_eq!(
        (stats["pending"].clone(), stats["dead_lettered"].clone()),
        (3.into(), 1.into())
    );

    let nothing = run(Some(&url), &["outbox", "dead-letters", "replay"]);
    assert_eq!(nothing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&nothing.stderr).contains("by id"));
    let missing = run(Some(&url), &["outbox", "dead-letters", "show", "1"]);
    assert_eq!(missing.status.code(), Some(3), "row 1 was replayed");

    // The file contents' lz4 first: new contents take the server's default compression again.
    let down = run(Some(&url), &["migrate", "down"]);
    assert!(down.status.success());
    let after_down = stdout(&run(Some(&url), &["migrate", "status"]));
    assert!(
        after_down.contains("Pending\tm20261207_000002"),
        "{after_down}"
    );
    assert!(
        after_down.contains("Applied\tm20261207_000001"),
        "{after_down}"
    );
    assert_eq!(compression(&conn, "raw_files", "content").await, "");
    assert_eq!(compression(&conn, "event_outbox", "payload").await, "l");
    // Then the outbox payloads' lz4 and the processing attempts.
    for _ in 0..2 {
        let down = run(Some(&url), &["migrate", "down"]);
        assert!(down.status.success());
    }
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
