//! The row contract for writers in other languages: the implementation guide's `INSERT`, taken
//! from the guide itself and run through `psql` in a transaction, reaches Kafka through
//! `outbox relay` sidecars with its key, headers and exact payload bytes. Two sidecars run, as
//! beside two replicas: one leads, the other stands by, and both stop cleanly on SIGTERM.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use outbox_test_harness::{TestDatabase, TestTopic, consume, repo_root};
use sea_orm::ConnectionTrait;

const TOKEN: &str = "row-contract-token-0123";

/// The `sql` block right after `<!-- row-contract: insert -->` in the implementation guide.
fn guide_insert() -> String {
    let guide = std::fs::read_to_string(repo_root().join("docs/implementation_guide.md")).unwrap();
    let after = guide
        .split_once("<!-- row-contract: insert -->\n```sql\n")
        .expect("the guide marks its INSERT with <!-- row-contract: insert -->")
        .1;
    after.split_once("```").unwrap().0.trim().to_owned()
}

fn free_port() -> u16 {
    outbox_test_harness::free_port()
}

fn sidecar(db_url: &str, bootstrap: &str, port: u16) -> Child {
    Command::new(env!("CARGO_BIN_EXE_outbox"))
        .env_clear()
        .env("DATABASE_URL", db_url)
        .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
        .env("OUTBOX_HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("OUTBOX_POLL_INTERVAL_MS", "100")
        .env("OUTBOX_LEADER_RETRY_INTERVAL_MS", "200")
        .env("OUTBOX_ADMIN_TOKEN", TOKEN)
        .env("RUST_LOG", "warn")
        .arg("relay")
        .stdout(Stdio::null())
        .spawn()
        .unwrap()
}

async fn health(port: u16) -> serde_json::Value {
    let url = format!("http://127.0.0.1:{port}/healthz");
    for _ in 0..300 {
        if let Ok(response) = reqwest::get(&url).await {
            return response.json().await.unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the sidecar on {port} never answered");
}

fn terminate(child: &mut Child) -> std::process::ExitStatus {
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    child.wait().unwrap()
}

#[tokio::test]
async fn the_guides_insert_through_psql_reaches_kafka_through_the_sidecar() {
    let db = TestDatabase::create().await;
    let migrate = Command::new(env!("CARGO_BIN_EXE_outbox"))
        .env_clear()
        .env("DATABASE_URL", db.url())
        .args(["migrate", "up"])
        .output()
        .unwrap();
    assert!(migrate.status.success(), "{migrate:?}");
    let topic = TestTopic::create("row_contract", 1).await;

    // The exact statement, prepared and executed by psql inside a transaction; a second
    // transaction rolls back, and its event must never appear.
    let event_id = "0193a6f0-7c1e-7cc1-8a2b-3c4d5e6f7a8b";
    let rolled_back = "0193a6f0-7c1e-7cc1-8a2b-000000000000";
    let payload_hex = "00ff7b226f72646572223a2234227d0a"; // not UTF-8 on purpose
    let headers = r#"{"content-type": "application/json", "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", "tenant": "t-1"}"#;
    let name = topic.name();
    let script = format!(
        "\\set ON_ERROR_STOP 1\n\
         PREPARE outbox_insert AS {insert};\n\
         BEGIN;\n\
         EXECUTE outbox_insert('{rolled_back}', 'order', 'o-0', 'OrderPlaced', '{name}', 'o-0', '\\x00', '{{}}');\n\
         ROLLBACK;\n\
         BEGIN;\n\
         EXECUTE outbox_insert('{event_id}', 'order', 'o-4', 'OrderPlaced', '{name}', 'o-4', '\\x{payload_hex}', '{headers}');\n\
         COMMIT;\n",
        insert = guide_insert()
    );
    let mut child = Command::new("psql")
        .args([db.url(), "-X", "-q", "-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), script.as_bytes()).unwrap();
    let inserted = child.wait_with_output().unwrap();
    assert!(inserted.status.success(), "{inserted:?}\n{script}");

    let (port_a, port_b) = (free_port(), free_port());
    let mut a = sidecar(db.url(), &topic.bootstrap(), port_a);
    let mut b = sidecar(db.url(), &topic.bootstrap(), port_b);

    let received = consume(&topic.bootstrap(), name, 1, Duration::from_secs(60)).await;
    assert_eq!(
        received.len(),
        1,
        "one event: the rolled-back one never existed"
    );
    let message = &received[0];
    assert_eq!(message.key.as_deref(), Some("o-4"));
    let mut payload = vec![0x00, 0xff];
    payload.extend_from_slice(b"{\"order\":\"4\"}\n");
    assert_eq!(message.payload, payload, "the exact payload bytes");
    for (header, value) in [
        ("event_id", event_id),
        ("event_type", "OrderPlaced"),
        ("aggregate_type", "order"),
        ("aggregate_id", "o-4"),
        ("content-type", "application/json"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("tenant", "t-1"),
    ] {
        assert_eq!(message.header(header), Some(value), "header {header}");
    }
    assert_eq!(
        message
            .headers
            .iter()
            .filter(|(k, _)| k == "content-type")
            .count(),
        1,
        "the row's content-type replaces the default"
    );

    // One sidecar leads, the other stands by; both serve health, metrics and the admin API.
    let (ha, hb) = (health(port_a).await, health(port_b).await);
    let leaders = [&ha, &hb]
        .iter()
        .filter(|h| h["outbox"]["relay"]["leader"] == true)
        .count();
    assert_eq!(leaders, 1, "{ha}\n{hb}");
    assert_eq!(ha["status"], "ok", "{ha}");
    let leader_port = if ha["outbox"]["relay"]["leader"] == true {
        port_a
    } else {
        port_b
    };
    let metrics = reqwest::get(format!("http://127.0.0.1:{leader_port}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("outbox_events_relayed_total"), "{metrics}");
    let admin = reqwest::Client::new()
        .get(format!("http://127.0.0.1:{port_b}/admin/outbox/stats"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(admin.status(), reqwest::StatusCode::OK);
    let unauthorized = reqwest::get(format!("http://127.0.0.1:{port_b}/admin/outbox/stats"))
        .await
        .unwrap();
    assert_eq!(unauthorized.status(), reqwest::StatusCode::UNAUTHORIZED);

    assert!(
        terminate(&mut a).success(),
        "SIGTERM stops the sidecar cleanly"
    );
    assert!(terminate(&mut b).success());
    let conn = db.connect().await;
    let left = conn
        .query_one(sea_orm::Statement::from_string(
            sea_orm::DbBackend::Postgres,
            "SELECT count(*) AS n FROM event_outbox",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get::<i64>("", "n")
        .unwrap();
    assert_eq!(left, 0, "the published row was acknowledged (deleted)");
}
