//! The inbox-store conformance suite against `PostgresInbox` on the real server, one database a
//! check, plus what only PostgreSQL can show: a batch recorded in one statement, and a handler's
//! writes committing or rolling back with the inbox row.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use outbox_core::conformance::inbox::InboxTarget;
use outbox_core::{InboxEntry, InboxStore};
use outbox_seaorm::{OutboxMigrator, PostgresInbox};
use outbox_test_harness::TestDatabase;
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement, TransactionTrait};
use sea_orm_migration::MigratorTrait;
use uuid::Uuid;

/// A migrated database of the test's own.
struct PgInbox {
    conn: DatabaseConnection,
    _db: TestDatabase,
}

impl PgInbox {
    async fn new() -> Self {
        let db = TestDatabase::create().await;
        let conn = db.connect().await;
        OutboxMigrator::up(&conn, None).await.unwrap();
        Self { conn, _db: db }
    }
}

#[async_trait]
impl InboxTarget for PgInbox {
    type Store = PostgresInbox;

    async fn store(&self) -> Arc<PostgresInbox> {
        Arc::new(PostgresInbox::new(self.conn.clone()).unwrap())
    }

    async fn outcome(&self, consumer: &str, event_id: Uuid) -> Option<String> {
        self.conn
            .query_one(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "SELECT outcome FROM event_inbox WHERE consumer = $1 AND event_id = $2",
                [consumer.into(), event_id.into()],
            ))
            .await
            .unwrap()
            .map(|row| row.try_get("", "outcome").unwrap())
    }

    async fn backdate(&self, consumer: &str, event_id: Uuid, by: Duration) {
        self.conn
            .execute(Statement::from_sql_and_values(
                DbBackend::Postgres,
                "UPDATE event_inbox SET processed_at = processed_at - make_interval(secs => $3) \
                 WHERE consumer = $1 AND event_id = $2",
                [consumer.into(), event_id.into(), by.as_secs_f64().into()],
            ))
            .await
            .unwrap();
    }
}

outbox_core::inbox_store_conformance!(PgInbox::new());

fn entry(event_id: Uuid, offset: i64, event_type: Option<&str>) -> InboxEntry {
    InboxEntry {
        consumer: "c".into(),
        event_id,
        topic: "t".into(),
        partition: 0,
        offset,
        event_type: event_type.map(str::to_owned),
        correlation_id: None,
    }
}

#[tokio::test]
async fn a_large_batch_with_awkward_text_is_recorded_in_one_statement() {
    let target = PgInbox::new().await;
    let inbox = PostgresInbox::new(target.conn.clone()).unwrap();
    let ids: Vec<Uuid> = (0..2000).map(|_| Uuid::now_v7()).collect();
    let mut entries: Vec<InboxEntry> = ids
        .iter()
        .enumerate()
        .map(|(i, id)| entry(*id, i as i64, Some(r#"a "quoted", {braced} \ type"#)))
        .collect();
    entries.push(entry(ids[5], 9999, None));
    entries[7].event_type = Some("nul\0inside".into());
    let txn = target.conn.begin().await.unwrap();
    let fresh = inbox.record(&txn, &entries).await.unwrap();
    txn.commit().await.unwrap();
    assert_eq!(fresh.iter().filter(|f| **f).count(), 2000);
    assert!(!fresh[2000], "the repeat within the batch");
    let row = target
        .conn
        .query_one(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT event_type, kafka_offset FROM event_inbox WHERE event_id = $1",
            [ids[5].into()],
        ))
        .await
        .unwrap()
        .unwrap();
    let event_type: String = row.try_get("", "event_type").unwrap();
    let offset: i64 = row.try_get("", "kafka_offset").unwrap();
    assert_eq!(event_type, r#"a "quoted", {braced} \ type"#);
    assert_eq!(offset, 5, "the first of a repeated entry is the one kept");
}

#[tokio::test]
async fn a_handlers_writes_commit_or_roll_back_with_the_inbox_row() {
    let target = PgInbox::new().await;
    let conn = &target.conn;
    conn.execute_unprepared("CREATE TABLE effects (id uuid PRIMARY KEY)")
        .await
        .unwrap();
    let inbox = PostgresInbox::new(conn.clone()).unwrap();
    let effect = |id: Uuid| {
        Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO effects VALUES ($1)",
            [id.into()],
        )
    };
    let (kept, dropped) = (Uuid::now_v7(), Uuid::now_v7());
    for (id, commit) in [(kept, true), (dropped, false)] {
        let txn = InboxStore::begin(&inbox).await.unwrap();
        assert_eq!(
            InboxStore::record(&inbox, &txn, &[entry(id, 1, None)])
                .await
                .unwrap(),
            [true]
        );
        txn.execute(effect(id)).await.unwrap();
        if commit {
            InboxStore::commit(&inbox, txn).await.unwrap();
        } else {
            InboxStore::rollback(&inbox, txn).await.unwrap();
        }
    }
    let effects = conn
        .query_all(Statement::from_string(
            DbBackend::Postgres,
            "SELECT id FROM effects",
        ))
        .await
        .unwrap();
    let ids: Vec<Uuid> = effects
        .iter()
        .map(|r| r.try_get("", "id").unwrap())
        .collect();
    assert_eq!(ids, [kept]);
    assert_eq!(target.outcome("c", dropped).await, None);
    assert_eq!(target.outcome("c", kept).await.as_deref(), Some("applied"));
}

#[tokio::test]
async fn the_migration_can_be_reverted() {
    let target = PgInbox::new().await;
    // The payloads' lz4 came after the inbox: it is reverted first.
    OutboxMigrator::down(&target.conn, Some(2)).await.unwrap();
    assert!(
        target
            .conn
            .execute_unprepared("SELECT 1 FROM event_inbox")
            .await
            .is_err()
    );
    assert!(
        target
            .conn
            .execute_unprepared("SELECT 1 FROM event_outbox")
            .await
            .is_ok(),
        "only the inbox goes"
    );
}

/// Writes each message's payload into `effects` on the inbox's transaction; refuses `poison`.
struct WriteEffect;

#[async_trait]
impl outbox_core::InboxHandler<sea_orm::DatabaseTransaction> for WriteEffect {
    async fn handle(
        &self,
        txn: &sea_orm::DatabaseTransaction,
        message: &outbox_core::InboxMessage,
    ) -> Result<outbox_core::Handled, outbox_core::HandlerError> {
        let payload =
            String::from_utf8_lossy(message.payload.as_deref().unwrap_or_default()).into_owned();
        txn.execute(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "INSERT INTO effects (payload) VALUES ($1)",
            [payload.clone().into()],
        ))
        .await
        .map_err(|e| outbox_core::HandlerError::transient(e.to_string()))?;
        if payload == "poison" {
            return Err(outbox_core::HandlerError::permanent("poison refused"));
        }
        Ok(outbox_core::Handled::applied())
    }
}

#[tokio::test]
async fn the_worker_on_postgres_applies_each_event_once_and_skips_a_poison_one() {
    use outbox_core::testing::MemorySource;
    let target = PgInbox::new().await;
    let conn = &target.conn;
    conn.execute_unprepared("CREATE TABLE effects (payload text NOT NULL)")
        .await
        .unwrap();
    let inbox = Arc::new(PostgresInbox::new(conn.clone()).unwrap());
    let source = MemorySource::new();
    let header = |id: Uuid| vec![("event_id".to_owned(), id.to_string().into_bytes())];
    let ids: Vec<Uuid> = (0..1200).map(|_| Uuid::now_v7()).collect();
    for (i, id) in ids.iter().enumerate() {
        let partition = (i % 3) as i32;
        source.send("things", partition, header(*id), format!("m{i}").as_bytes());
        if i % 10 == 0 {
            // The same bytes again, as a relay that crashed before its acknowledgement sends.
            source.send("things", partition, header(*id), format!("m{i}").as_bytes());
        }
    }
    let poison = Uuid::now_v7();
    source.send("things", 1, header(poison), b"poison");
    let worker = outbox_core::InboxWorker::new(
        inbox.clone(),
        source.clone(),
        outbox_core::InboxSettings::default(),
    )
    .unwrap()
    .handler("things", ["things"], Arc::new(WriteEffect))
    .unwrap();
    worker.start().unwrap();
    let sent = [440, 441, 440];
    for _ in 0..2000 {
        if (0..3).all(|p| source.committed("things", p) == Some(sent[p as usize])) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    worker.stop().await.unwrap();
    for p in 0..3 {
        assert_eq!(source.committed("things", p), Some(sent[p as usize]));
    }
    let count = |sql: &'static str| async move {
        let row = conn
            .query_one(Statement::from_string(DbBackend::Postgres, sql))
            .await
            .unwrap()
            .unwrap();
        row.try_get::<i64>("", "n").unwrap()
    };
    assert_eq!(count("SELECT count(*) AS n FROM effects").await, 1200);
    assert_eq!(
        count("SELECT count(DISTINCT payload) AS n FROM effects").await,
        1200
    );
    assert_eq!(
        count("SELECT count(*) AS n FROM event_inbox WHERE outcome = 'applied'").await,
        1200
    );
    let rejected = inbox.rejected(None, 10).await.unwrap();
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].entry.event_id, poison);
    assert_eq!(rejected[0].message.payload.as_deref(), Some(&b"poison"[..]));
    let status = worker.status();
    assert_eq!(
        (status.consumed, status.duplicates, status.rejected),
        (1200, 120, 1)
    );
}
