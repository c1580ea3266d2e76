//! The binary killed with SIGKILL between a batch's database commit and its offset commit (the
//! window the inbox exists for: the broker is stopped while the batch's transaction is held on
//! a lock, so the offsets cannot be committed), then started again: every File Service event is
//! delivered again, dropped by the inbox by its event id, and applied exactly once in all; the
//! batch completes once.

use std::process::Command;
use std::time::Duration;

use batch_orchestrator::registration::{register, validate};
use outbox::Outbox;
use outbox_test_harness::{KafkaNode, TestDatabase, TestTopic, consume_until_quiet, unique_name};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait};
use sea_orm_migration::MigratorTrait;
use serde_json::json;
use uuid::Uuid;

const BIN: &str = env!("CARGO_BIN_EXE_batch-orchestrator");
const ESSAYS: usize = 120;

async fn count(conn: &DatabaseConnection, sql: &str) -> i64 {
    conn.query_one(Statement::from_string(DbBackend::Postgres, sql.to_owned()))
        .await
        .unwrap()
        .unwrap()
        .try_get_by_index::<i64>(0)
        .unwrap()
}

fn spawn(db_url: &str, bootstrap: &str, prefix: &str, group: &str) -> tokio::process::Child {
    tokio::process::Command::new(BIN)
        .env_clear()
        .env("RUST_LOG", "warn")
        .env("DATABASE_URL", db_url)
        .env("KAFKA_BOOTSTRAP_SERVERS", bootstrap)
        .env(
            "BATCH_ORCHESTRATOR_SERVICE_PORT",
            outbox_test_harness::free_port().to_string(),
        )
        .env("BATCH_ORCHESTRATOR_SERVICE_TOPIC_PREFIX", prefix)
        .env("BATCH_ORCHESTRATOR_SERVICE_KAFKA_CONSUMER_GROUP_ID", group)
        // The killed member's partitions move to the restarted one without a long wait.
        .env("KAFKA_CONSUMER_SESSION_TIMEOUT_MS", "6000")
        .env("OUTBOX_POLL_INTERVAL_MS", "100")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap()
}

/// The sum of the group's committed offsets on `topic`'s partitions.
fn committed_offsets(bootstrap: &str, group: &str, topic: &str) -> i64 {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .create()
        .unwrap();
    let mut partitions = TopicPartitionList::new();
    for partition in 0..3 {
        partitions.add_partition(topic, partition);
    }
    consumer
        .committed_offsets(partitions, Duration::from_secs(10))
        .unwrap()
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(n) => n,
            _ => 0,
        })
        .sum()
}

fn signal(child: &tokio::process::Child, name: &str) {
    let pid = child.id().unwrap().to_string();
    assert!(
        Command::new("kill")
            .args([name, &pid])
            .status()
            .unwrap()
            .success()
    );
}

#[tokio::test]
async fn a_consumer_killed_between_the_database_and_the_offset_commit_applies_nothing_twice() {
    let node = KafkaNode::start().await;
    let bootstrap = node.bootstrap();
    let prefix = format!("{}.", unique_name("bos_kill"));
    let mut topics = Vec::new();
    for topic in [
        "huleedu.batch.essays.registered.v1",
        "huleedu.batch.student.matching.initiate.command.v1",
        "huleedu.els.essay.slot.assigned.v1",
        "huleedu.els.excess.content.provisioned.v1",
        "huleedu.batch.content.provisioning.completed.v1",
        "huleedu.file.essay.content.provisioned.v1",
        "huleedu.file.essay.validation.failed.v1",
    ] {
        topics.push(TestTopic::create_named(&bootstrap, &format!("{prefix}{topic}"), 3).await);
    }
    let db = TestDatabase::create().await;
    let conn = db.connect().await;
    batch_orchestrator::db::Migrator::up(&conn, None)
        .await
        .unwrap();
    let writer = Outbox::builder(conn.clone()).writer_only().unwrap();
    let body = json!({"expected_essay_count": ESSAYS, "course_code": "ENG6",
                      "user_id": "t", "class_id": "c"});
    let request = validate(body.to_string().as_bytes(), 5000).unwrap();
    let batch = register(&writer, &prefix, &request, Uuid::new_v4())
        .await
        .unwrap()
        .batch_id;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let topic = format!("{prefix}huleedu.file.essay.content.provisioned.v1");
    for _ in 0..ESSAYS {
        let (upload, event_id) = (Uuid::new_v4(), Uuid::now_v7());
        let payload = json!({
            "event_id": event_id, "event_type": "huleedu.file.essay.content.provisioned.v1",
            "correlation_id": Uuid::new_v4(), "source_service": "file-service",
            "data": {"entity_id": batch, "file_upload_id": upload, "original_file_name": "e.txt",
                     "text_storage_id": Uuid::new_v4(), "file_size_bytes": 60}
        })
        .to_string();
        let id = event_id.to_string();
        producer
            .send(
                FutureRecord::to(&topic)
                    .key(&upload.to_string())
                    .payload(&payload)
                    .headers(OwnedHeaders::new().insert(Header {
                        key: "event_id",
                        value: Some(id.as_bytes()),
                    })),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }

    let group = unique_name("bos_kill_group");
    // The batch's row is held, so the first run's handler waits inside its transaction.
    let blocker = conn.begin().await.unwrap();
    blocker
        .execute_unprepared(&format!(
            "SELECT 1 FROM batches WHERE id = '{batch}' FOR UPDATE"
        ))
        .await
        .unwrap();
    let mut first = spawn(db.url(), &bootstrap, &prefix, &group);
    let waiting_sql = format!(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = '{}' AND wait_event_type = 'Lock'",
        db.name()
    );
    let mut waiting = false;
    for _ in 0..1200 {
        if count(&conn, &waiting_sql).await > 0 {
            waiting = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(waiting, "the first run never reached the batch's lock");
    // No offset can be committed from now on; the transaction then commits.
    node.stop().await;
    blocker.commit().await.unwrap();
    let mut applied_at_kill = 0;
    for _ in 0..1200 {
        applied_at_kill = count(&conn, "SELECT count(*) FROM event_inbox").await;
        if applied_at_kill > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        applied_at_kill > 0,
        "the first run never committed its batch"
    );
    signal(&first, "-KILL");
    first.wait().await.unwrap();
    let applied_at_kill = count(&conn, "SELECT count(*) FROM event_inbox").await;

    node.start_again().await;
    assert_eq!(
        committed_offsets(&bootstrap, &group, &topic),
        0,
        "the kill fell between the database commit and the offset commit"
    );
    eprintln!("killed with {applied_at_kill} of {ESSAYS} messages applied and none committed");
    let second = spawn(db.url(), &bootstrap, &prefix, &group);
    let status_sql = format!(
        "SELECT count(*) FROM batches WHERE id = '{batch}' AND status = 'awaiting_student_validation'"
    );
    let mut done = false;
    for _ in 0..600 {
        if count(&conn, &status_sql).await == 1 {
            done = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        done,
        "the batch never completed after the restart ({applied_at_kill} applied at the kill)"
    );

    let outcomes = |consumer: &str, outcome: &str| {
        format!(
            "SELECT count(*) FROM event_inbox WHERE consumer = '{consumer}' AND outcome = '{outcome}'"
        )
    };
    assert_eq!(
        count(&conn, &outcomes("readiness", "applied")).await,
        ESSAYS as i64
    );
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM event_inbox WHERE outcome NOT IN ('applied')"
        )
        .await,
        0,
        "every redelivery was dropped by the inbox, none reached a handler"
    );
    assert_eq!(
        count(&conn, &outcomes("provisioning_completed", "applied")).await,
        1
    );
    assert_eq!(
        count(&conn, &format!("SELECT count(DISTINCT file_upload_id) FROM essay_slots WHERE batch_id = '{batch}' AND status = 'assigned'")).await,
        ESSAYS as i64
    );
    assert_eq!(
        count(
            &conn,
            &format!("SELECT count(*) FROM batch_essays WHERE batch_id = '{batch}'")
        )
        .await,
        ESSAYS as i64
    );

    // The relay may repeat an event after a crash (at least once), never with a new id.
    let assigned = consume_until_quiet(
        &bootstrap,
        &format!("{prefix}huleedu.els.essay.slot.assigned.v1"),
        ESSAYS,
        Duration::from_secs(60),
        Duration::from_secs(2),
    )
    .await;
    let mut ids: Vec<String> = assigned
        .iter()
        .map(|m| m.header("event_id").unwrap().to_owned())
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), ESSAYS, "one slot-assigned event per essay");
    let commands = consume_until_quiet(
        &bootstrap,
        &format!("{prefix}huleedu.batch.student.matching.initiate.command.v1"),
        1,
        Duration::from_secs(60),
        Duration::from_secs(2),
    )
    .await;
    let mut ids: Vec<&str> = commands
        .iter()
        .map(|m| m.header("event_id").unwrap())
        .collect();
    ids.dedup();
    assert_eq!(ids.len(), 1, "one student-matching command");

    signal(&second, "-TERM");
    let stopped = tokio::time::timeout(Duration::from_secs(40), second.wait_with_output())
        .await
        .expect("stopped after SIGTERM")
        .unwrap();
    assert!(stopped.status.success(), "{:?}", stopped.status);
    drop(topics);
    drop(node);
}
