//! The repository: [`PostgresOutbox`], its builder methods, and its [`RelayStore`]
//! implementation, which hands each call to the module of its concern.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use outbox_core::{
    AttemptFailure, ClaimCursor, ClaimedBatch, EventTypeMapper, OutboxError, OutboxStats,
    RelayStore, RemoteWake, TopicMap,
};
use sea_orm::DatabaseConnection;
use sea_orm::sqlx;

use crate::leadership::Leadership;
use crate::wake::Wake;
use crate::{claim, stats};

/// The outbox on PostgreSQL, through SeaORM.
///
/// - As an [`OutboxWriter`](outbox_core::OutboxWriter) it adds events with a single `INSERT` on
///   the caller's connection or transaction (any SeaORM
///   [`ConnectionTrait`](sea_orm::ConnectionTrait)): no extra round trip, no lock, no `NOTIFY`.
/// - As a [`RelayStore`] it elects one active relay with a session-level advisory lock held on a
///   connection of its own, and runs every claim and acknowledgement on that same connection: when
///   the session dies, the lock is released (a standby takes over within its retry interval) and
///   this relay can no longer acknowledge anything.
/// - As a [`DeadLetterStore`](outbox_core::DeadLetterStore) and
///   [`OutboxCleanup`](outbox_core::OutboxCleanup) it lists, replays and discards dead letters
///   and deletes expired published rows, through the pool.
///
/// It holds no retention setting: the relay passes
/// [`RelaySettings::retention`](outbox_core::RelaySettings::retention) to each acknowledgement
/// and cleanup.
///
/// ```no_run
/// # async fn demo(db: sea_orm::DatabaseConnection) -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
/// use outbox_core::{NewOutboxEvent, OutboxWriter, TopicMap};
/// use outbox_seaorm::PostgresOutbox;
/// use sea_orm::TransactionTrait;
///
/// let outbox = PostgresOutbox::new(db.clone())?
///     .with_mapper(Arc::new(TopicMap::new().with("OrderPlaced", "orders.v1")?));
/// let txn = db.begin().await?;
/// // ... business writes on `txn` ...
/// outbox
///     .add_event(&txn, NewOutboxEvent::json("order", "o-1", "OrderPlaced", &serde_json::json!({}))?)
///     .await?;
/// txn.commit().await?;
/// # Ok(())
/// # }
/// ```
pub struct PostgresOutbox {
    pub(crate) db: DatabaseConnection,
    pub(crate) mapper: Arc<dyn EventTypeMapper>,
    pub(crate) leadership: Leadership,
    pub(crate) wake: Wake,
}

impl std::fmt::Debug for PostgresOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresOutbox")
            .field("lock_key", &self.leadership.lock_key)
            .finish_non_exhaustive()
    }
}

/// A SeaORM error as the outbox reports it.
pub(crate) fn db_error(error: sea_orm::DbErr) -> OutboxError {
    OutboxError::Database(Box::new(error))
}

/// An sqlx error as the outbox reports it.
pub(crate) fn sqlx_error(error: sqlx::Error) -> OutboxError {
    OutboxError::Database(Box::new(error))
}

impl PostgresOutbox {
    /// A repository over `db`, which must be a PostgreSQL connection pool. Events must carry
    /// their topic until a mapper is set with [`with_mapper`](Self::with_mapper).
    pub fn new(db: DatabaseConnection) -> Result<Self, OutboxError> {
        if !matches!(db, DatabaseConnection::SqlxPostgresPoolConnection(_)) {
            return Err(OutboxError::Config(
                "the outbox repository needs a PostgreSQL connection pool".into(),
            ));
        }
        Ok(Self {
            wake: Wake::new(db.get_postgres_connection_pool().clone()),
            db,
            mapper: Arc::new(TopicMap::new()),
            leadership: Leadership::new(),
        })
    }

    /// Chooses topics for events written without one.
    #[must_use]
    pub fn with_mapper(mut self, mapper: Arc<dyn EventTypeMapper>) -> Self {
        self.mapper = mapper;
        self
    }

    /// Uses `key` for the leadership advisory lock. The default is a hash of the current
    /// schema's name, so relays of different schemas in one database do not exclude each other.
    #[must_use]
    pub fn with_lock_key(mut self, key: i64) -> Self {
        self.leadership.lock_key = Some(key);
        self
    }

    /// How often a leader confirms that its statements reach the backend holding the lock (5 s),
    /// and how long it waits for any statement on its session (45 s). For tests.
    #[doc(hidden)]
    #[must_use]
    pub fn with_session_checks(mut self, check_interval: Duration, call_timeout: Duration) -> Self {
        self.leadership.backend_check_interval = check_interval;
        self.leadership.call_timeout = call_timeout;
        self
    }

    /// The connection pool.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    /// A notifier for writers in a process that runs no relay: after each commit, `notify()`
    /// wakes the active relay wherever it runs (a coalesced `pg_notify` outside the
    /// transaction). A process that runs a relay uses that relay's
    /// [`notifier()`](outbox_core::EventRelayWorker::notifier) instead, which does the same when
    /// another process leads.
    pub fn wake_notifier(&self) -> outbox_core::RelayNotifier {
        outbox_core::RelayNotifier::remote(self.wake.remote())
    }

    /// The leadership session's connection settings (keepalives, timeouts), as the server sees
    /// them; fails with [`OutboxError::LeadershipLost`] when this relay does not lead. For tests
    /// and diagnostics.
    #[doc(hidden)]
    pub async fn session_settings(&self) -> Result<Vec<(String, String)>, OutboxError> {
        self.leadership.session_settings().await
    }
}

// Each call goes to the module of its concern: leadership, claim (claims and their outcomes),
// wake and stats.
#[async_trait]
impl RelayStore for PostgresOutbox {
    async fn acquire_leadership(&self) -> Result<bool, OutboxError> {
        self.leadership
            .acquire(self.db.get_postgres_connection_pool())
            .await
    }

    async fn release_leadership(&self) -> Result<(), OutboxError> {
        self.wake.stop_listening().await;
        self.leadership.release().await
    }

    async fn claim_batch(
        &self,
        limit: usize,
        after: Option<ClaimCursor>,
    ) -> Result<ClaimedBatch, OutboxError> {
        claim::claim_batch(&self.leadership, limit, after).await
    }

    async fn acknowledge(&self, ids: &[i64], keep: bool) -> Result<u64, OutboxError> {
        claim::acknowledge(&self.leadership, ids, keep).await
    }

    async fn record_failures(&self, failures: &[AttemptFailure]) -> Result<(), OutboxError> {
        claim::record_failures(&self.leadership, failures).await
    }

    async fn wait_for_wake_up(&self) {
        self.wake
            .wait_for_wake_up(self.db.get_postgres_connection_pool())
            .await;
    }

    fn remote_wake(&self) -> Option<Arc<dyn RemoteWake>> {
        Some(self.wake.remote())
    }

    async fn stats(&self) -> Result<OutboxStats, OutboxError> {
        stats::stats(self.db.get_postgres_connection_pool()).await
    }
}
