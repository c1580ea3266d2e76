//! Every `outbox ...` line of the operations playbook runs with the real binary against a real
//! database holding dead letters, and succeeds (the File Service's docs test runs the same lines
//! through its embedded commands, and the playbook's SQL and API calls).

use std::process::Command;

use outbox_test_harness::{TestDatabase, repo_root};
use sea_orm::ConnectionTrait;

#[tokio::test]
async fn every_outbox_command_of_the_playbook_runs() {
    let db = TestDatabase::create().await;
    let migrate = Command::new(env!("CARGO_BIN_EXE_outbox"))
        .env_clear()
        .env("DATABASE_URL", db.url())
        .args(["migrate", "up"])
        .output()
        .unwrap();
    assert!(migrate.status.success(), "{migrate:?}");
    let conn = db.connect().await;
    conn.execute_unprepared(
        "INSERT INTO event_outbox (event_id, aggregate_type, aggregate_id, event_type, topic, event_key, payload)
         SELECT gen_random_uuid(), 'batch', 'b' || (n % 3), 'huleedu.file.batch.file.added.v1',
                'huleedu.file.batch.file.added.v1', 'b' || (n % 3), '\\x7b7d'
         FROM generate_series(1, 50) AS n;
         UPDATE event_outbox SET attempts = 10, dead_lettered_at = now(), last_error = 'too large'
         WHERE id IN (5, 6, 42);",
    )
    .await
    .unwrap();

    let playbook =
        std::fs::read_to_string(repo_root().join("docs/operations_playbook.md")).unwrap();
    let mut ran = 0;
    let mut in_sh = false;
    for line in playbook.lines() {
        let trimmed = line.trim();
        if trimmed == "```sh" {
            in_sh = true;
            continue;
        }
        if trimmed == "```" {
            in_sh = false;
            continue;
        }
        if !in_sh || !trimmed.starts_with("outbox ") {
            continue;
        }
        let words: Vec<&str> = trimmed.split_whitespace().collect();
        let output = Command::new(env!("CARGO_BIN_EXE_outbox"))
            .env_clear()
            .env("DATABASE_URL", db.url())
            .env("RUST_LOG", "warn")
            .args(&words[1..])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "`{trimmed}` failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        ran += 1;
    }
    assert!(ran >= 10, "{ran} outbox commands in the playbook");
}
