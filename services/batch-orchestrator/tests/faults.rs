//! The running service (relay and inbox in process) under faults: PostgreSQL crashed and
//! restarted under the consumer, and the broker stopped and restarted during consumption. Both
//! times every File Service event is applied exactly once, the batch completes once, and the
//! service recovers without a restart of its own.

use std::time::Duration;

use batch_orchestrator::app::{Running, connect, start};
use batch_orchestrator::config::Config;
use batch_orchestrator::db::Migrator;
use batch_orchestrator::registration::{register, validate};
use outbox_test_harness::{KafkaNode, PostgresNode, TestDatabase, TestTopic, consume, unique_name};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use sea_orm_migration::MigratorTrait;
use serde_json::json;
use uuid::Uuid;

const ESSAYS: usize = 40;
const TOPICS: [&str; 7] = [
    "huleedu.batch.essays.registered.v1",
    "huleedu.batch.student.matching.initiate.command.v1",
    "huleedu.els.essay.slot.assigned.v1",
    "huleedu.els.excess.content.provisioned.v1",
    "huleedu.batch.content.provisioning.completed.v1",
    "huleedu.file.essay.content.provisioned.v1",
    "huleedu.file.essay.validation.failed.v1",
];

/// One number from `sql`, or `None` while the database is unreachable.
async fn try_count(conn: &DatabaseConnection, sql: &str) -> Option<i64> {
    conn.query_one(Statement::from_string(DbBackend::Postgres, sql.to_owned()))
        .await
        .ok()
        .flatten()
        .and_then(|row| row.try_get_by_index::<i64>(0).ok())
}

async fn count(conn: &DatabaseConnection, sql: &str) -> i64 {
    try_count(conn, sql).await.expect("query")
}

/// Waits until `sql` counts at least `want`, riding out an unreachable database.
async fn wait_for(conn: &DatabaseConnection, sql: &str, want: i64, what: &str) {
    for _ in 0..900 {
        if try_count(conn, sql).await.is_some_and(|n| n >= want) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!("timed out waiting for {what}");
}

fn config(db_url: &str, bootstrap: &str, prefix: &str) -> Config {
    let env: std::collections::BTreeMap<String, String> = [
        ("DATABASE_URL", db_url),
        ("KAFKA_BOOTSTRAP_SERVERS", bootstrap),
        ("BATCH_ORCHESTRATOR_SERVICE_TOPIC_PREFIX", prefix),
        (
            "BATCH_ORCHESTRATOR_SERVICE_KAFKA_CONSUMER_GROUP_ID",
            &unique_name("bos_faults"),
        ),
        ("OUTBOX_POLL_INTERVAL_MS", "100"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    Config::from_env(&env).unwrap()
}

struct Setup {
    running: Running,
    conn: DatabaseConnection,
    producer: FutureProducer,
    topic: String,
    batch: String,
    _topics: Vec<TestTopic>,
}

async fn setup(db: &TestDatabase, bootstrap: &str) -> Setup {
    let prefix = format!("{}.", unique_name("bos_faults"));
    let mut topics = Vec::new();
    for topic in TOPICS {
        topics.push(TestTopic::create_named(bootstrap, &format!("{prefix}{topic}"), 3).await);
    }
    let conn = db.connect().await;
    Migrator::up(&conn, None).await.unwrap();
    let config = config(db.url(), bootstrap, &prefix);
    let running = start(&config, connect(&config).await.unwrap()).unwrap();
    let body = json!({"expected_essay_count": ESSAYS, "course_code": "ENG7",
                      "user_id": "t", "class_id": "c"});
    let request = validate(body.to_string().as_bytes(), 5000).unwrap();
    let batch = register(&running.state.outbox, &prefix, &request, Uuid::new_v4())
        .await
        .unwrap()
        .batch_id;
    let producer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("message.timeout.ms", "120000")
        .create()
        .unwrap();
    Setup {
        running,
        conn,
        producer,
        topic: format!("{prefix}huleedu.file.essay.content.provisioned.v1"),
        batch,
        _topics: topics,
    }
}

impl Setup {
    async fn publish(&self, n: usize) {
        for _ in 0..n {
            let (upload, event_id) = (Uuid::new_v4(), Uuid::now_v7());
            let payload = json!({
                "event_id": event_id, "correlation_id": Uuid::new_v4(),
                "data": {"entity_id": self.batch, "file_upload_id": upload,
                         "original_file_name": "e.txt", "text_storage_id": Uuid::new_v4()}
            })
            .to_string();
            let id = event_id.to_string();
            self.producer
                .send(
                    FutureRecord::to(&self.topic)
                        .key(&upload.to_string())
                        .payload(&payload)
                        .headers(OwnedHeaders::new().insert(Header {
                            key: "event_id",
                            value: Some(id.as_bytes()),
                        })),
                    Duration::from_secs(120),
                )
                .await
                .unwrap();
        }
    }

    /// Every event applied once, the batch completed once, nothing rejected.
    async fn assert_applied_once(&self) {
        let batch = &self.batch;
        wait_for(
            &self.conn,
            &format!("SELECT count(*) FROM batches WHERE id = '{batch}' AND status = 'awaiting_student_validation'"),
            1,
            "the batch to complete",
        )
        .await;
        let outcomes = |consumer: &str| {
            format!(
                "SELECT count(*) FROM event_inbox WHERE consumer = '{consumer}' AND outcome = 'applied'"
            )
        };
        assert_eq!(
            count(&self.conn, &outcomes("readiness")).await,
            ESSAYS as i64
        );
        assert_eq!(
            count(&self.conn, &outcomes("provisioning_completed")).await,
            1
        );
        assert_eq!(
            count(
                &self.conn,
                "SELECT count(*) FROM event_inbox WHERE outcome <> 'applied'"
            )
            .await,
            0
        );
        assert_eq!(
            count(&self.conn, &format!("SELECT count(DISTINCT file_upload_id) FROM essay_slots WHERE batch_id = '{batch}' AND status = 'assigned'")).await,
            ESSAYS as i64
        );
        assert!(self.running.inbox.status().running, "the inbox runs on");
    }
}

#[tokio::test]
async fn a_postgres_crash_under_the_consumer_loses_nothing_and_needs_no_restart() {
    let pg = PostgresNode::start().await;
    let db = TestDatabase::create_on(&pg.url()).await;
    let bootstrap = outbox_test_harness::kafka_bootstrap_servers().await;
    let s = setup(&db, &bootstrap).await;
    s.publish(ESSAYS / 2).await;
    wait_for(
        &s.conn,
        "SELECT count(*) FROM event_inbox",
        1,
        "a first message applied",
    )
    .await;
    // The second half arrives while the database is down: the inbox retries, offsets stay.
    pg.stop(true).await;
    s.publish(ESSAYS - ESSAYS / 2).await;
    let mut saw_outage = false;
    for _ in 0..300 {
        if s.running.inbox.status().last_error.is_some() {
            saw_outage = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(saw_outage, "the consumer met the outage");
    pg.start_again().await;
    s.assert_applied_once().await;
    s.running.stop().await.unwrap();
}

#[tokio::test]
async fn a_broker_restart_during_consumption_loses_nothing() {
    let node = KafkaNode::start().await;
    let bootstrap = node.bootstrap();
    let db = TestDatabase::create().await;
    let s = setup(&db, &bootstrap).await;
    s.publish(ESSAYS / 2).await;
    wait_for(
        &s.conn,
        "SELECT count(*) FROM event_inbox",
        1,
        "a first message applied",
    )
    .await;
    node.stop().await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    node.start_again().await;
    s.publish(ESSAYS - ESSAYS / 2).await;
    s.assert_applied_once().await;
    let commands = consume(
        &bootstrap,
        &s.topic.replace(
            "huleedu.file.essay.content.provisioned.v1",
            "huleedu.batch.student.matching.initiate.command.v1",
        ),
        1,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        commands.len(),
        1,
        "the command reached the restarted broker"
    );
    s.running.stop().await.unwrap();
    drop(s);
    drop(node);
}
