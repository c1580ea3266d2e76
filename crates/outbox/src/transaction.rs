//! The writer handle: a database transaction that events are added to, and whose commit wakes
//! the relay.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use outbox_core::{EventId, NewOutboxEvent, OutboxWriter, RelayNotifier};
use outbox_seaorm::PostgresOutbox;
use sea_orm::{
    ConnectionTrait, DatabaseTransaction, DbBackend, DbErr, ExecResult, QueryResult, Statement,
};

use crate::Error;

/// A database transaction of the service, with the outbox attached: run the business change on
/// it (it is a SeaORM connection: `model.insert(&txn)`, `txn.execute(..)`), add its events with
/// [`add`](Self::add), and [`commit`](Self::commit). The events exist if and only if the commit
/// succeeds; after it, the relay is woken (in this process at no cost, in the replica that leads
/// with a coalesced `pg_notify` sent outside the transaction).
///
/// Dropped without a commit, the transaction rolls back, events included.
#[derive(Debug)]
pub struct OutboxTransaction {
    txn: DatabaseTransaction,
    store: Arc<PostgresOutbox>,
    notifier: RelayNotifier,
    added: AtomicBool,
}

impl OutboxTransaction {
    pub(crate) fn new(
        txn: DatabaseTransaction,
        store: Arc<PostgresOutbox>,
        notifier: RelayNotifier,
    ) -> Self {
        Self {
            txn,
            store,
            notifier,
            added: AtomicBool::new(false),
        }
    }

    /// Adds an event to this transaction (one `INSERT`: no lock, no `NOTIFY`). Returns its id;
    /// fails, writing nothing, if the event is invalid or has no topic and the outbox's topic
    /// map knows none for its type.
    pub async fn add(&self, event: NewOutboxEvent) -> Result<EventId, Error> {
        let id = self.store.add_event(&self.txn, event).await?;
        self.added.store(true, Ordering::Relaxed);
        Ok(id)
    }

    /// Adds events to this transaction, in this order (one multi-row `INSERT` per 8,191 events).
    /// All or none are written.
    pub async fn add_all(&self, events: Vec<NewOutboxEvent>) -> Result<Vec<EventId>, Error> {
        let ids = self.store.add_events(&self.txn, events).await?;
        if !ids.is_empty() {
            self.added.store(true, Ordering::Relaxed);
        }
        Ok(ids)
    }

    /// Commits the business change and its events together, then wakes the relay if events were
    /// added.
    pub async fn commit(self) -> Result<(), Error> {
        self.txn.commit().await?;
        if self.added.load(Ordering::Relaxed) {
            self.notifier.notify();
        }
        Ok(())
    }

    /// Rolls the transaction back: the business change and its events are gone.
    pub async fn rollback(self) -> Result<(), Error> {
        self.txn.rollback().await?;
        Ok(())
    }

    /// The SeaORM transaction, for APIs that want a `&DatabaseTransaction`.
    pub fn as_transaction(&self) -> &DatabaseTransaction {
        &self.txn
    }
}

impl std::ops::Deref for OutboxTransaction {
    type Target = DatabaseTransaction;

    fn deref(&self) -> &DatabaseTransaction {
        &self.txn
    }
}

#[async_trait::async_trait]
impl ConnectionTrait for OutboxTransaction {
    fn get_database_backend(&self) -> DbBackend {
        self.txn.get_database_backend()
    }

    async fn execute(&self, stmt: Statement) -> Result<ExecResult, DbErr> {
        self.txn.execute(stmt).await
    }

    async fn execute_unprepared(&self, sql: &str) -> Result<ExecResult, DbErr> {
        self.txn.execute_unprepared(sql).await
    }

    async fn query_one(&self, stmt: Statement) -> Result<Option<QueryResult>, DbErr> {
        self.txn.query_one(stmt).await
    }

    async fn query_all(&self, stmt: Statement) -> Result<Vec<QueryResult>, DbErr> {
        self.txn.query_all(stmt).await
    }

    fn support_returning(&self) -> bool {
        self.txn.support_returning()
    }

    fn is_mock_connection(&self) -> bool {
        self.txn.is_mock_connection()
    }
}
