//! Smoke tests: the real PostgreSQL and Apache Kafka answer from Rust the way the library needs.

use std::collections::HashMap;
use std::time::Duration;

use outbox_test_harness::{KafkaNode, PostgresNode, TestDatabase, TestTopic, consume};
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use sea_orm::{ConnectionTrait, Database, Statement};
use sea_orm_migration::prelude::*;

mod smoke_migration {
    use sea_orm_migration::prelude::*;

    pub(crate) struct Migrator;

    impl MigratorTrait for Migrator {
        fn migrations() -> Vec<Box<dyn MigrationTrait>> {
            vec![Box::new(CreateNotes)]
        }
    }

    #[derive(DeriveMigrationName)]
    struct CreateNotes;

    #[async_trait::async_trait]
    impl MigrationTrait for CreateNotes {
        async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .get_connection()
                .execute_unprepared(
                    "CREATE TABLE notes (id bigint PRIMARY KEY, body text NOT NULL)",
                )
                .await
                .map(|_| ())
        }

        async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
            manager
                .get_connection()
                .execute_unprepared("DROP TABLE notes")
                .await
                .map(|_| ())
        }
    }
}

#[tokio::test]
async fn seaorm_runs_a_query_and_a_migration_on_a_test_database() {
    let db = TestDatabase::create().await;
    let conn = db.connect().await;

    let row = conn
        .query_one(Statement::from_string(
            conn.get_database_backend(),
            "SELECT current_database() AS name, current_setting('server_version_num')::int AS version",
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(row.try_get::<String>("", "name").unwrap(), db.name());
    assert!(row.try_get::<i32>("", "version").unwrap() >= 150000);

    smoke_migration::Migrator::up(&conn, None).await.unwrap();
    conn.execute_unprepared("INSERT INTO notes VALUES (1, 'hello')")
        .await
        .unwrap();
    let body: String = conn
        .query_one(Statement::from_string(
            conn.get_database_backend(),
            "SELECT body FROM notes WHERE id = 1",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get("", "body")
        .unwrap();
    assert_eq!(body, "hello");

    smoke_migration::Migrator::down(&conn, None).await.unwrap();
    let tables = conn
        .query_all(Statement::from_string(
            conn.get_database_backend(),
            "SELECT 1 FROM information_schema.tables WHERE table_name = 'notes'",
        ))
        .await
        .unwrap();
    assert!(tables.is_empty(), "down removed the table");
}

#[tokio::test]
async fn test_databases_are_separate_and_dropped() {
    let first = TestDatabase::create().await;
    let second = TestDatabase::create().await;
    assert_ne!(first.name(), second.name());
    let name = first.name().to_owned();
    let server = Database::connect(outbox_test_harness::database_url().await)
        .await
        .unwrap();
    drop(first);
    let left = server
        .query_all(Statement::from_sql_and_values(
            server.get_database_backend(),
            "SELECT 1 FROM pg_database WHERE datname = $1",
            [name.into()],
        ))
        .await
        .unwrap();
    assert!(
        left.is_empty(),
        "dropping a TestDatabase drops the database"
    );
}

async fn produce_keyed(bootstrap: &str, topic: &str, keys: &[&str], per_key: usize) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set("partitioner", "murmur2_random")
        .create()
        .unwrap();
    let mut sends = Vec::new();
    for seq in 0..per_key {
        for key in keys {
            let payload = format!("{key}:{seq}");
            let headers = OwnedHeaders::new()
                .insert(Header {
                    key: "seq",
                    value: Some(&seq.to_string()),
                })
                .insert(Header {
                    key: "content-type",
                    value: Some("text/plain"),
                });
            let record = FutureRecord::to(topic)
                .key(*key)
                .payload(&payload)
                .headers(headers);
            // Enqueue everything, then await the acks together.
            sends.push(producer.send_result(record).unwrap());
        }
    }
    for send in sends {
        send.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn idempotent_producer_round_trips_keys_headers_and_order() {
    let topic = TestTopic::create("smoke", 3).await;
    let keys = ["alpha", "bravo", "charlie", "delta", "echo"];
    produce_keyed(&topic.bootstrap(), topic.name(), &keys, 200).await;

    let received = consume(
        &topic.bootstrap(),
        topic.name(),
        1000,
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(received.len(), 1000);

    let mut partition_of: HashMap<String, i32> = HashMap::new();
    let mut next_seq: HashMap<String, usize> = HashMap::new();
    for message in &received {
        let key = message.key.clone().unwrap();
        assert_eq!(
            *partition_of.entry(key.clone()).or_insert(message.partition),
            message.partition,
            "one key, one partition"
        );
        let seq: usize = message.header("seq").unwrap().parse().unwrap();
        let expected = next_seq.entry(key.clone()).or_default();
        assert_eq!(seq, *expected, "key {key} arrives in send order");
        *expected += 1;
        assert_eq!(message.header("content-type"), Some("text/plain"));
        assert_eq!(message.payload, format!("{key}:{seq}").into_bytes());
    }
    assert!(next_seq.values().all(|n| *n == 200));
}

#[tokio::test]
async fn a_private_broker_can_be_stopped_and_started_again() {
    let node = KafkaNode::start().await;
    let topic = TestTopic::create_on(&node.bootstrap(), "private", 1).await;
    produce_keyed(&node.bootstrap(), topic.name(), &["k"], 10).await;

    node.stop().await;
    assert!(!outbox_test_harness::wait_for_broker(&node.bootstrap(), Duration::from_secs(1)).await);
    node.start_again().await;

    produce_keyed(&node.bootstrap(), topic.name(), &["k"], 10).await;
    let received = consume(&node.bootstrap(), topic.name(), 20, Duration::from_secs(60)).await;
    assert_eq!(
        received.len(),
        20,
        "messages written before the stop survive it"
    );
}

#[tokio::test]
async fn a_private_postgres_survives_a_crash_restart() {
    let node = PostgresNode::start().await;
    let db = TestDatabase::create_on(&node.url()).await;
    let conn = db.connect().await;
    conn.execute_unprepared("CREATE TABLE t (v int); INSERT INTO t VALUES (7)")
        .await
        .unwrap();

    node.restart(Duration::from_millis(200)).await;

    // The pool notices the dead connections and reconnects on its own.
    let mut value = None;
    for _ in 0..50 {
        if let Ok(Some(row)) = conn
            .query_one(Statement::from_string(
                conn.get_database_backend(),
                "SELECT v FROM t",
            ))
            .await
        {
            value = Some(row.try_get::<i32>("", "v").unwrap());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(value, Some(7));
    drop(conn);
}

/// `OUTBOX_TEST_BACKEND=containers` really runs against containers (no silent fallback to the
/// host's services), and without it the tests use the host's services.
#[tokio::test]
async fn the_backend_asked_for_is_the_one_the_tests_use() {
    let url = outbox_test_harness::database_url().await;
    let bootstrap = outbox_test_harness::kafka_bootstrap_servers().await;
    let conn = Database::connect(url.as_str()).await.unwrap();
    // The address the server accepted the connection on: loopback for the host's server, the
    // container's own address inside a container.
    let server_addr: String = conn
        .query_one(Statement::from_string(
            conn.get_database_backend(),
            "SELECT host(inet_server_addr()) AS addr",
        ))
        .await
        .unwrap()
        .unwrap()
        .try_get("", "addr")
        .unwrap();
    conn.close().await.unwrap();
    if outbox_test_harness::containers_requested() {
        assert!(
            !server_addr.starts_with("127.") && server_addr != "::1",
            "containers were asked for, but PostgreSQL at {url} answers on {server_addr}"
        );
        assert_ne!(url, outbox_test_harness::DEFAULT_DATABASE_URL);
        assert_ne!(
            bootstrap,
            outbox_test_harness::DEFAULT_KAFKA_BOOTSTRAP_SERVERS
        );
    } else {
        let expected = std::env::var("DATABASE_URL")
            .unwrap_or_else(|_| outbox_test_harness::DEFAULT_DATABASE_URL.to_owned());
        assert_eq!(url, expected);
    }
}
