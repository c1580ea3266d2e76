//! The relay-store conformance suite against the PostgreSQL repository on the real server.

use std::sync::Arc;

use async_trait::async_trait;
use outbox_core::conformance::{ConformanceTarget, RowState};
use outbox_core::{EventId, NewOutboxEvent, OutboxWriter};
use outbox_seaorm::{OutboxMigrator, PostgresOutbox, entity};
use outbox_test_harness::TestDatabase;
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, EntityTrait,
    QueryFilter, Statement, TransactionTrait,
};
use sea_orm_migration::MigratorTrait;

/// A migrated database of the test's own.
struct PgTarget {
    conn: DatabaseConnection,
    /// Transactions begun by `add_open`, still open.
    open: tokio::sync::Mutex<Vec<DatabaseTransaction>>,
    _db: TestDatabase,
}

impl PgTarget {
    async fn new() -> Self {
        let db = TestDatabase::create().await;
        let conn = db.connect().await;
        OutboxMigrator::up(&conn, None).await.unwrap();
        Self {
            conn,
            open: Default::default(),
            _db: db,
        }
    }

    async fn id_of(&self, event_id: EventId) -> i64 {
        entity::Entity::find()
            .filter(entity::Column::EventId.eq(event_id.as_uuid()))
            .one(&self.conn)
            .await
            .unwrap()
            .expect("the committed row")
            .id
    }
}

#[async_trait]
impl ConformanceTarget for PgTarget {
    type Store = PostgresOutbox;

    async fn store(&self) -> Arc<PostgresOutbox> {
        Arc::new(PostgresOutbox::new(self.conn.clone()).unwrap())
    }

    async fn add(&self, event: NewOutboxEvent) -> i64 {
        let writer = PostgresOutbox::new(self.conn.clone()).unwrap();
        let txn = self.conn.begin().await.unwrap();
        let event_id = writer.add_event(&txn, event).await.unwrap();
        txn.commit().await.unwrap();
        self.id_of(event_id).await
    }

    async fn add_open(&self, event: NewOutboxEvent) -> i64 {
        let writer = PostgresOutbox::new(self.conn.clone()).unwrap();
        let txn = self.conn.begin().await.unwrap();
        writer.add_event(&txn, event).await.unwrap();
        // The row is visible to its own transaction only.
        let row = txn
            .query_one(Statement::from_string(
                DbBackend::Postgres,
                "SELECT max(id) AS id FROM event_outbox",
            ))
            .await
            .unwrap()
            .unwrap();
        self.open.lock().await.push(txn);
        row.try_get("", "id").unwrap()
    }

    async fn commit_open(&self) {
        for txn in self.open.lock().await.drain(..) {
            txn.commit().await.unwrap();
        }
    }

    async fn row(&self, id: i64) -> Option<RowState> {
        entity::Entity::find_by_id(id)
            .one(&self.conn)
            .await
            .unwrap()
            .map(|m| RowState {
                attempts: m.attempts,
                next_attempt_at: m.next_attempt_at.map(|t| t.with_timezone(&chrono::Utc)),
                last_error: m.last_error,
                dead_lettered: m.dead_lettered_at.is_some(),
                published: m.published_at.is_some(),
            })
    }
}

outbox_core::relay_store_conformance!(PgTarget::new());
