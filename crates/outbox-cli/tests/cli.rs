//! The `outbox` binary against the real PostgreSQL: configuration and usage errors (which change
//! nothing), `migrate`, `stats`, and `dead-letters list|show|replay|discard` with filters, dry
//! runs, tables and JSON.

use std::process::{Command, Output};

use outbox_test_harness::TestDatabase;
use sea_orm::{ConnectionTrait, DatabaseConnection};

fn outbox(db_url: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_outbox"));
    command
        .env_clear()
        .env("RUST_LOG", "warn")
        .env("USER", "tester")
        .args(args);
    if let Some(url) = db_url {
        command.env("DATABASE_URL", url);
    }
    command.output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn json(output: &Output) -> serde_json::Value {
    assert!(output.status.success(), "{output:?}");
    serde_json::from_str(stdout(output).trim()).unwrap()
}

/// Six rows: ids 1-4 dead letters (1 and 3 on topic.1, 2 and 4 on topic.0; 1 and 2 parked two
/// hours ago, 3 and 4 just now), 5 and 6 pending.
async fn seed(conn: &DatabaseConnection) {
    conn.execute_unprepared(
        "INSERT INTO event_outbox (event_id, aggregate_type, aggregate_id, event_type, topic, event_key, payload, headers)
         SELECT gen_random_uuid(), 'order', 'o' || n, 'T' || (n % 2), 'topic.' || (n % 2), 'k' || n,
                CASE WHEN n = 2 THEN '\\x00ff'::bytea ELSE convert_to('{\"n\": ' || n || '}', 'UTF8') END,
                '{\"content-type\": \"application/json\"}'
         FROM generate_series(1, 6) AS n;
         UPDATE event_outbox SET dead_lettered_at = now() - interval '2 hours', attempts = 10,
                last_error = E'too large\\x1b[31m' WHERE id <= 2;
         UPDATE event_outbox SET dead_lettered_at = now(), attempts = 10, last_error = 'refused'
         WHERE id IN (3, 4);",
    )
    .await
    .unwrap();
}

async fn count(conn: &DatabaseConnection, sql: &str) -> i64 {
    conn.query_one(sea_orm::Statement::from_string(
        sea_orm::DbBackend::Postgres,
        format!("SELECT ({sql})::bigint AS n"),
    ))
    .await
    .unwrap()
    .unwrap()
    .try_get("", "n")
    .unwrap()
}

const DEAD: &str = "SELECT count(*) FROM event_outbox WHERE dead_lettered_at IS NOT NULL";

#[test]
fn help_explains_every_command_and_the_exit_codes() {
    let help = outbox(None, &["--help"]);
    assert!(help.status.success());
    let text = stdout(&help);
    for word in [
        "relay",
        "migrate",
        "stats",
        "dead-letters",
        "Exit codes",
        "DATABASE_URL",
        "OUTBOX_ADMIN_TOKEN",
    ] {
        assert!(text.contains(word), "--help lacks {word}:\n{text}");
    }
    let dead = stdout(&outbox(None, &["dead-letters", "--help"]));
    for word in ["list", "show", "replay", "discard"] {
        assert!(dead.contains(word), "{dead}");
    }
    let replay = stdout(&outbox(None, &["dead-letters", "replay", "--help"]));
    for word in ["--dry-run", "--key", "--older-than", "--all", "--id"] {
        assert!(replay.contains(word), "{replay}");
    }
}

#[tokio::test]
async fn the_plain_sql_needs_no_database_and_migrates_one_with_psql() {
    let up = outbox(None, &["migrate", "sql"]);
    assert!(up.status.success());
    let up = stdout(&up);
    assert!(up.contains(outbox_seaorm::migration::UP_SQL));
    assert!(up.contains(outbox_seaorm::migration::COMMIT_HORIZON_UP_SQL));
    assert!(up.contains(outbox_seaorm::migration::INBOX_UP_SQL));
    assert!(up.contains(outbox_seaorm::migration::PAYLOAD_LZ4_UP_SQL));
    let down = stdout(&outbox(None, &["migrate", "sql", "--down"]));
    assert!(down.contains(outbox_seaorm::migration::DOWN_SQL));
    assert!(down.contains(outbox_seaorm::migration::INBOX_DOWN_SQL));
    assert!(down.contains(outbox_seaorm::migration::PAYLOAD_LZ4_DOWN_SQL));

    // What other migration tools would run, run as they would: psql, stopping at any error.
    let db = TestDatabase::create().await;
    let psql = |sql: &str| {
        use std::io::Write;
        let mut child = std::process::Command::new("psql")
            .args(["-v", "ON_ERROR_STOP=1", "-q", db.url()])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("psql");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(sql.as_bytes())
            .unwrap();
        assert!(child.wait().unwrap().success(), "psql failed on:\n{sql}");
    };
    psql(&up);
    let conn = db.connect().await;
    let columns = conn
        .query_all(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT column_name FROM information_schema.columns \
             WHERE table_name = 'event_outbox' AND column_name = 'xid'",
        ))
        .await
        .unwrap();
    assert_eq!(columns.len(), 1, "the commit-horizon column is there");
    let lz4 = conn
        .query_all(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT 1 FROM pg_attribute WHERE attrelid = 'event_outbox'::regclass \
             AND attname = 'payload' AND attcompression = 'l'",
        ))
        .await
        .unwrap();
    assert_eq!(lz4.len(), 1, "payloads compress with lz4");
    conn.execute_unprepared("SELECT 1 FROM event_inbox")
        .await
        .expect("the inbox is there");
    psql(&down);
    let tables = conn
        .query_all(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT 1 FROM information_schema.tables WHERE table_name = 'event_outbox'",
        ))
        .await
        .unwrap();
    assert!(tables.is_empty());
    assert!(
        conn.execute_unprepared("SELECT 1 FROM event_inbox")
            .await
            .is_err(),
        "the inbox is gone"
    );
}

#[tokio::test]
async fn bad_flags_and_variables_exit_2_and_change_nothing() {
    let db = TestDatabase::create().await;
    let url = db.url().to_owned();
    assert!(outbox(Some(&url), &["migrate", "up"]).status.success());
    let conn = db.connect().await;
    seed(&conn).await;

    let missing = outbox(None, &["stats"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(stderr(&missing).contains("DATABASE_URL"));
    let mysql = outbox(Some("mysql://x"), &["stats"]);
    assert_eq!(mysql.status.code(), Some(2));

    let mut relay = Command::new(env!("CARGO_BIN_EXE_outbox"));
    let bad_relay = relay
        .env_clear()
        .env("DATABASE_URL", &url)
        .env("OUTBOX_BATCH_SIZE", "lots")
        .arg("relay")
        .output()
        .unwrap();
    assert_eq!(bad_relay.status.code(), Some(2));
    assert!(stderr(&bad_relay).contains("OUTBOX_BATCH_SIZE"));

    let cases: &[&[&str]] = &[
        &["dead-letters", "discard", "--all", "--older-than", "5x"],
        &["dead-letters", "discard", "--all", "--since", "yesterday"],
        &["dead-letters", "discard", "--id", "one"],
        &["dead-letters", "discard", "--id", "1", "--all"],
        &["dead-letters", "discard", "--topic", "topic.1"],
        &["dead-letters", "discard", "--id", "1", "--topic", "topic.1"],
        &["dead-letters", "discard"],
        &["dead-letters", "replay", "--all", "--key", ""],
        &["dead-letters", "list", "--limit", "0"],
        &["dead-letters", "list", "--limit", "1001"],
        &["dead-letters", "purge"],
        &["stats", "--verbose"],
    ];
    for args in cases {
        let output = outbox(Some(&url), args);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {output:?}");
        assert!(!stderr(&output).is_empty(), "{args:?} says why");
    }
    assert_eq!(count(&conn, DEAD).await, 4, "nothing changed");
}

#[tokio::test]
async fn migrate_up_status_and_down_manage_the_table() {
    let db = TestDatabase::create().await;
    let url = db.url().to_owned();
    let before = json(&outbox(Some(&url), &["migrate", "status", "--json"]));
    assert_eq!(before[0]["status"], "Pending", "{before}");
    let up = json(&outbox(Some(&url), &["migrate", "up", "--json"]));
    assert_eq!(up["applied"][0], "m20261127_000001_create_event_outbox");
    let status = stdout(&outbox(Some(&url), &["migrate", "status"]));
    assert!(
        status.contains("Applied\tm20261127_000001_create_event_outbox"),
        "{status}"
    );
    let conn = db.connect().await;
    assert_eq!(count(&conn, "SELECT count(*) FROM event_outbox").await, 0);
    assert!(
        up["applied"][1] == "m20261130_000001_add_commit_horizon",
        "{up}"
    );
    assert!(
        up["applied"][2] == "m20261130_000002_create_event_inbox",
        "{up}"
    );
    assert!(
        up["applied"][3] == "m20261207_000001_compress_outbox_payloads_lz4",
        "{up}"
    );
    let lz4 = "SELECT count(*) FROM pg_attribute WHERE attrelid = 'event_outbox'::regclass \
               AND attname = 'payload' AND attcompression = 'l'";
    assert_eq!(count(&conn, lz4).await, 1, "payloads compress with lz4");
    // Down reverts the last migration: the payloads' lz4 first, then the inbox, then the
    // commit-horizon column, then the table.
    assert!(outbox(Some(&url), &["migrate", "down"]).status.success());
    assert_eq!(count(&conn, lz4).await, 0, "the default compression again");
    assert!(outbox(Some(&url), &["migrate", "down"]).status.success());
    assert!(
        conn.execute_unprepared("SELECT 1 FROM event_inbox")
            .await
            .is_err(),
        "the inbox is gone"
    );
    assert!(
        conn.execute_unprepared("SELECT xid FROM event_outbox")
            .await
            .is_ok(),
        "the outbox is untouched"
    );
    assert!(outbox(Some(&url), &["migrate", "down"]).status.success());
    assert!(
        conn.execute_unprepared("SELECT xid FROM event_outbox")
            .await
            .is_err(),
        "the commit-horizon column is gone"
    );
    assert!(outbox(Some(&url), &["migrate", "down"]).status.success());
    assert!(
        conn.execute_unprepared("SELECT 1 FROM event_outbox")
            .await
            .is_err(),
        "the table is gone"
    );
    let relay = outbox(Some(&url), &["relay"]);
    assert_eq!(relay.status.code(), Some(1), "{relay:?}");
    assert!(stderr(&relay).contains("outbox migrate up"), "{relay:?}");
}

#[tokio::test]
async fn an_unreachable_database_exits_1() {
    let output = outbox(
        Some("postgres://nobody:nothing@127.0.0.1:1/none?connect_timeout=2"),
        &["stats"],
    );
    assert_eq!(output.status.code(), Some(1), "{output:?}");
    assert!(stderr(&output).contains("database"), "{output:?}");
}

#[tokio::test]
async fn stats_and_list_show_the_backlog_as_tables_and_json() {
    let db = TestDatabase::create().await;
    let url = db.url().to_owned();
    assert!(outbox(Some(&url), &["migrate", "up"]).status.success());
    let conn = db.connect().await;
    seed(&conn).await;

    let stats = json(&outbox(Some(&url), &["stats", "--json"]));
    assert_eq!(
        (stats["pending"].clone(), stats["dead_lettered"].clone()),
        (2.into(), 4.into())
    );
    let table = stdout(&outbox(Some(&url), &["stats"]));
    assert!(
        table.contains("pending:") && table.contains("dead letters:"),
        "{table}"
    );

    let all = json(&outbox(Some(&url), &["dead-letters", "list", "--json"]));
    let ids: Vec<i64> = all["dead_letters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids, [1, 2, 3, 4]);
    assert_eq!(all["next_after"], serde_json::Value::Null);

    let filtered = |args: &[&str]| -> Vec<i64> {
        let mut full = vec!["dead-letters", "list", "--json"];
        full.extend_from_slice(args);
        json(&outbox(Some(&url), &full))["dead_letters"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["id"].as_i64().unwrap())
            .collect()
    };
    assert_eq!(filtered(&["--topic", "topic.1"]), [1, 3]);
    assert_eq!(filtered(&["--key", "k4"]), [4]);
    assert_eq!(filtered(&["--event-type", "T0"]), [2, 4]);
    assert_eq!(filtered(&["--older-than", "1h"]), [1, 2]);
    assert_eq!(filtered(&["--older-than", "1h", "--topic", "topic.0"]), [2]);
    assert_eq!(filtered(&["--aggregate-id", "o3"]), [3]);
    assert!(filtered(&["--key", "nobody"]).is_empty());

    let page = json(&outbox(
        Some(&url),
        &["dead-letters", "list", "--json", "--limit", "3"],
    ));
    assert_eq!(page["next_after"], 3);
    assert_eq!(filtered(&["--after", "3"]), [4]);

    let table = stdout(&outbox(
        Some(&url),
        &["dead-letters", "list", "--limit", "3"],
    ));
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("LAST ERROR"),
        "{table}"
    );
    assert_eq!(lines.len(), 5, "header, three rows, footer:\n{table}");
    assert!(table.contains("more with --after 3"), "{table}");
    assert!(
        !table.contains('\u{1b}'),
        "a terminal escape from the database is not printed raw:\n{table}"
    );
}

#[tokio::test]
async fn show_prints_one_dead_letter_in_full_or_exits_3() {
    let db = TestDatabase::create().await;
    let url = db.url().to_owned();
    assert!(outbox(Some(&url), &["migrate", "up"]).status.success());
    let conn = db.connect().await;
    seed(&conn).await;

    let text = json(&outbox(
        Some(&url),
        &["dead-letters", "show", "1", "--json"],
    ));
    assert_eq!(text["payload_text"], "{\"n\": 1}");
    assert_eq!(text["headers"]["content-type"], "application/json");
    assert_eq!(text["key"], "k1");
    let binary = json(&outbox(
        Some(&url),
        &["dead-letters", "show", "2", "--json"],
    ));
    assert_eq!(binary["payload_hex"], "00ff");
    assert_eq!(binary["payload_text"], serde_json::Value::Null);
    let table = stdout(&outbox(Some(&url), &["dead-letters", "show", "3"]));
    assert!(
        table.contains("refused") && table.contains("topic.1"),
        "{table}"
    );

    for missing in ["5", "999"] {
        let output = outbox(Some(&url), &["dead-letters", "show", missing]);
        assert_eq!(
            output.status.code(),
            Some(3),
            "row {missing} is not a dead letter"
        );
        assert!(stderr(&output).contains(missing));
    }
}

#[tokio::test]
async fn replay_and_discard_by_id_or_filter_with_dry_runs() {
    let db = TestDatabase::create().await;
    let url = db.url().to_owned();
    assert!(outbox(Some(&url), &["migrate", "up"]).status.success());
    let conn = db.connect().await;
    seed(&conn).await;

    let dry = json(&outbox(
        Some(&url),
        &[
            "dead-letters",
            "discard",
            "--all",
            "--topic",
            "topic.1",
            "--dry-run",
            "--json",
        ],
    ));
    assert_eq!(
        dry,
        serde_json::json!({"action": "discard", "dry_run": true, "count": 2})
    );
    let dry_table = stdout(&outbox(
        Some(&url),
        &[
            "dead-letters",
            "replay",
            "--id",
            "1",
            "--id",
            "5",
            "--dry-run",
        ],
    ));
    assert!(
        dry_table.contains("would replay 1 dead letter"),
        "{dry_table}"
    );
    assert_eq!(count(&conn, DEAD).await, 4, "dry runs change nothing");

    let replayed = json(&outbox(
        Some(&url),
        &["dead-letters", "replay", "--id", "1", "--id", "5", "--json"],
    ));
    assert_eq!(replayed["count"], 1, "row 5 is pending, not a dead letter");
    assert_eq!(
        count(
            &conn,
            "SELECT attempts FROM event_outbox WHERE id = 1 AND dead_lettered_at IS NULL"
        )
        .await,
        0
    );

    let none = json(&outbox(
        Some(&url),
        &[
            "dead-letters",
            "discard",
            "--all",
            "--key",
            "nobody",
            "--json",
        ],
    ));
    assert_eq!(none["count"], 0);

    let discarded = stdout(&outbox(
        Some(&url),
        &[
            "dead-letters",
            "discard",
            "--all",
            "--event-type",
            "T0",
            "--older-than",
            "1h",
        ],
    ));
    assert!(discarded.contains("discarded 1 dead letter"), "{discarded}");
    assert_eq!(
        count(&conn, "SELECT count(*) FROM event_outbox WHERE id = 2").await,
        0
    );

    let rest = json(&outbox(
        Some(&url),
        &["dead-letters", "replay", "--all", "--json"],
    ));
    assert_eq!(rest["count"], 2, "rows 3 and 4");
    assert_eq!(count(&conn, DEAD).await, 0);
    assert_eq!(
        count(&conn, "SELECT count(*) FROM event_outbox").await,
        5,
        "only row 2 was deleted"
    );
}
