//! The PostgreSQL outbox repository.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use outbox_core::metrics as m;
use outbox_core::{
    AttemptFailure, ClaimCursor, ClaimedBatch, DeadLetter, DeadLetterFilter, DeadLetterStore,
    EventId, EventTypeMapper, FailureOutcome, HorizonHolder, NewOutboxEvent, OutboxCleanup,
    OutboxError, OutboxEvent, OutboxStats, OutboxWriter, RelayStore, RemoteWake, TopicMap,
};
use sea_orm::sea_query::Expr;
use sea_orm::sqlx::{self, PgConnection, Row, postgres::PgRow};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, Statement, Value,
};
use tokio::sync::Mutex;
use tracing::{debug, error, info, warn};

use crate::entity;

/// Longest `last_error` stored; longer messages are cut.
const MAX_ERROR_LEN: usize = 2000;

const INSERT_COLUMNS: &str =
    "event_id, aggregate_type, aggregate_id, event_type, topic, event_key, payload, headers";

const INSERT_ONE: &str = "INSERT INTO event_outbox \
     (event_id, aggregate_type, aggregate_id, event_type, topic, event_key, payload, headers) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

/// The relay's claim (`$1` = limit, `$2` = the cursor's xid as text, `$3` = its row id; from
/// the start, `'0'` and 0), in two lanes, retries first:
///
/// - `retries`: parked rows whose retry time has come, in `(xid, id)` order, except those behind
///   a parked row of their topic and key that is not due yet;
/// - `fresh`: pending rows after the cursor in `(xid, id)` order whose writer's transaction is
///   older than every transaction still running (`pg_snapshot_xmin`), so no row can ever commit
///   behind the cursor. `blocked` marks those whose topic and key has a parked row: the
///   repository parks them behind it instead of returning them.
///
/// Public for `EXPLAIN` by operators and the benchmark.
pub const CLAIM: &str = include_str!("../sql/claim.sql");

/// Parks new rows behind a parked row of their key (`$1` = ids).
const PARK_HELD: &str = "\
UPDATE event_outbox SET next_attempt_at = now(),
    last_error = 'waiting behind an earlier event of its key'
WHERE id = ANY($1) AND next_attempt_at IS NULL AND published_at IS NULL
  AND dead_lettered_at IS NULL";

const DELETE_PUBLISHED: &str = "DELETE FROM event_outbox WHERE id = ANY($1)";

const MARK_PUBLISHED: &str =
    "UPDATE event_outbox SET published_at = now() WHERE id = ANY($1) AND published_at IS NULL";

/// Failed attempts and held rows; retry times on the database's clock (`$3` = delays in
/// seconds), never the relay's.
const RECORD_FAILURES: &str = "\
UPDATE event_outbox AS o
SET attempts = o.attempts + CASE WHEN f.kind = 'held' THEN 0 ELSE 1 END,
    last_error = f.error,
    next_attempt_at = CASE f.kind
        WHEN 'dead' THEN NULL
        WHEN 'held' THEN now()
        ELSE now() + make_interval(secs => f.delay) END,
    dead_lettered_at = CASE WHEN f.kind = 'dead' THEN now() ELSE NULL END
FROM unnest($1::bigint[], $2::text[], $3::float8[], $4::text[]) AS f(id, error, delay, kind)
WHERE o.id = f.id AND o.published_at IS NULL AND o.dead_lettered_at IS NULL";

/// Backlog, dead letters, and how long the oldest committed event has waited behind the commit
/// horizon.
const STATS: &str = include_str!("../sql/stats.sql");

/// The oldest transaction holding an xid: the one that holds the commit horizon.
const HORIZON_HOLDER: &str = "\
SELECT a.pid,
       EXTRACT(EPOCH FROM now() - a.xact_start)::float8 AS age,
       a.state,
       a.query_start,
       left(a.query, 200) AS query,
       a.datname::text AS datname,
       a.usename::text AS usename,
       a.application_name
FROM pg_stat_activity a
WHERE a.backend_xid IS NOT NULL
ORDER BY age(a.backend_xid) DESC
LIMIT 1";

const DELETE_EXPIRED: &str = "\
DELETE FROM event_outbox WHERE id IN (
    SELECT id FROM event_outbox
    WHERE published_at IS NOT NULL AND published_at < now() - make_interval(secs => $1)
    ORDER BY published_at
    LIMIT $2)";

/// Settings of the leadership session. Server-side keepalives and a user timeout end the session
/// (releasing the lock) within about 20 s when the relay's host vanishes, instead of after the
/// operating system's two-hour keepalive default; a statement timeout ends a stuck statement.
const SESSION_SETUP: &str = "\
SELECT set_config('application_name', 'outbox-relay', false),
       set_config('statement_timeout', '30s', false),
       set_config('idle_in_transaction_session_timeout', '60s', false),
       set_config('tcp_keepalives_idle', '5', false),
       set_config('tcp_keepalives_interval', '5', false),
       set_config('tcp_keepalives_count', '3', false),
       set_config('tcp_user_timeout', '20000', false)";

/// Longest the relay waits for any statement on its leadership session: past the server's
/// statement timeout, for a server that stopped answering altogether.
const SESSION_CALL_TIMEOUT: Duration = Duration::from_secs(45);

/// How often a leader checks that its statements still reach the backend holding the lock.
const BACKEND_CHECK_INTERVAL: Duration = Duration::from_secs(5);

/// Most rows one multi-row `INSERT` carries: PostgreSQL takes at most 65,535 parameters, 8 a row.
const MAX_ROWS_PER_INSERT: usize = 65_535 / 8;

const POOLER_DETECTED: &str = "the relay's statements reach different PostgreSQL backends: a \
connection pooler in transaction or statement mode sits between the relay and PostgreSQL, and \
session advisory locks cannot elect a single relay through it. Point the relay's database URL at \
PostgreSQL directly (or at a pooler in session mode)";

/// The channel writers notify after their commit, and the leader listens on.
pub const WAKE_CHANNEL: &str = "outbox_wake";

/// What a writer in another process runs after its commit to wake the relay (any language:
/// one statement, outside the business transaction).
pub const WAKE_SQL: &str = "SELECT pg_notify('outbox_wake', '')";

/// Commits within this long of a notification share the next one.
const WAKE_WINDOW: Duration = Duration::from_millis(1);

/// Wakes the active relay from writers in this process when it runs elsewhere: `pg_notify` on
/// the pool, in a transaction of its own (never inside the writer's, where a `NOTIFY` would take
/// a database-wide lock at commit), sent in the background and coalesced: a burst of commits
/// costs about one notification per millisecond per process.
#[derive(Debug, Clone)]
pub struct PgWake(Arc<WakeSender>);

#[derive(Debug)]
struct WakeSender {
    pool: sqlx::PgPool,
    /// A sender task runs.
    running: std::sync::atomic::AtomicBool,
    /// A commit happened since the sender's last notification.
    dirty: std::sync::atomic::AtomicBool,
}

impl PgWake {
    fn new(pool: sqlx::PgPool) -> Self {
        Self(Arc::new(WakeSender {
            pool,
            running: Default::default(),
            dirty: Default::default(),
        }))
    }
}

impl WakeSender {
    async fn send_while_dirty(self: Arc<Self>) {
        use std::sync::atomic::Ordering::SeqCst;
        loop {
            self.dirty.store(false, SeqCst);
            if let Err(error) = sqlx::query(WAKE_SQL).execute(&self.pool).await {
                debug!(error = %error, "outbox wake-up notification not sent; the relay polls");
            }
            tokio::time::sleep(WAKE_WINDOW).await;
            if self.dirty.load(SeqCst) {
                continue;
            }
            self.running.store(false, SeqCst);
            // A wake between the check and the store saw a sender running and left: take it.
            if !self.dirty.load(SeqCst) || self.running.swap(true, SeqCst) {
                return;
            }
        }
    }
}

impl RemoteWake for PgWake {
    fn wake(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        self.0.dirty.store(true, SeqCst);
        if self.0.running.swap(true, SeqCst) {
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(self.0.clone().send_while_dirty());
            }
            Err(_) => self.0.running.store(false, SeqCst),
        }
    }
}

/// The session that holds (or tries for) the relay leadership.
struct Session {
    conn: PgConnection,
    leader: bool,
    /// The backend the lock was taken on.
    pid: i32,
    /// When that was last confirmed (`None`: not yet).
    checked_at: Option<std::time::Instant>,
}

/// The outbox on PostgreSQL, through SeaORM.
///
/// - As an [`OutboxWriter`] it adds events with a single `INSERT` on the caller's connection or
///   transaction (any SeaORM [`ConnectionTrait`]): no extra round trip, no lock, no `NOTIFY`.
/// - As a [`RelayStore`] it elects one active relay with a session-level advisory lock held on a
///   connection of its own, and runs every claim and acknowledgement on that same connection: when
///   the session dies, the lock is released (a standby takes over within its retry interval) and
///   this relay can no longer acknowledge anything.
/// - As a [`DeadLetterStore`] and [`OutboxCleanup`] it lists, replays and discards dead letters
///   and deletes expired published rows, through the pool.
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
    db: DatabaseConnection,
    mapper: Arc<dyn EventTypeMapper>,
    lock_key: Option<i64>,
    session: Mutex<Option<Session>>,
    wake: PgWake,
    backend_check_interval: Duration,
    session_call_timeout: Duration,
    /// The leader's `LISTEN` connection for wake-ups from other processes.
    listener: Mutex<Option<sqlx::postgres::PgListener>>,
}

impl std::fmt::Debug for PostgresOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresOutbox")
            .field("lock_key", &self.lock_key)
            .finish_non_exhaustive()
    }
}

fn db_error(error: sea_orm::DbErr) -> OutboxError {
    OutboxError::Database(Box::new(error))
}

fn sqlx_error(error: sqlx::Error) -> OutboxError {
    OutboxError::Database(Box::new(error))
}

fn truncate(message: &str) -> String {
    if message.len() <= MAX_ERROR_LEN {
        return message.to_owned();
    }
    let mut end = MAX_ERROR_LEN;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &message[..end])
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
            wake: PgWake::new(db.get_postgres_connection_pool().clone()),
            db,
            mapper: Arc::new(TopicMap::new()),
            lock_key: None,
            session: Mutex::new(None),
            backend_check_interval: BACKEND_CHECK_INTERVAL,
            session_call_timeout: SESSION_CALL_TIMEOUT,
            listener: Mutex::new(None),
        })
    }

    /// Chooses topics for events written without one.
    pub fn with_mapper(mut self, mapper: Arc<dyn EventTypeMapper>) -> Self {
        self.mapper = mapper;
        self
    }

    /// Uses `key` for the leadership advisory lock. The default is a hash of the current
    /// schema's name, so relays of different schemas in one database do not exclude each other.
    pub fn with_lock_key(mut self, key: i64) -> Self {
        self.lock_key = Some(key);
        self
    }

    /// How often a leader confirms that its statements reach the backend holding the lock (5 s),
    /// and how long it waits for any statement on its session (45 s). For tests.
    #[doc(hidden)]
    pub fn with_session_checks(mut self, check_interval: Duration, call_timeout: Duration) -> Self {
        self.backend_check_interval = check_interval;
        self.session_call_timeout = call_timeout;
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
        outbox_core::RelayNotifier::remote(Arc::new(self.wake.clone()))
    }

    /// The leadership session's connection settings (keepalives, timeouts), as the server sees
    /// them; fails with [`OutboxError::LeadershipLost`] when this relay does not lead. For tests
    /// and diagnostics.
    #[doc(hidden)]
    pub async fn session_settings(&self) -> Result<Vec<(String, String)>, OutboxError> {
        self.on_session(|session| {
            Box::pin(
                sqlx::query_as::<_, (String, String)>(
                    "SELECT name, setting FROM pg_settings WHERE name IN ('application_name', \
                     'statement_timeout', 'idle_in_transaction_session_timeout', \
                     'tcp_keepalives_idle', 'tcp_keepalives_interval', 'tcp_keepalives_count', \
                     'tcp_user_timeout')",
                )
                .fetch_all(&mut session.conn),
            )
        })
        .await
    }

    fn prepare(&self, event: NewOutboxEvent) -> Result<Prepared, OutboxError> {
        event.validate()?;
        let topic = match &event.topic {
            Some(topic) => topic.clone(),
            None => self
                .mapper
                .topic_for(&event.event_type)
                .ok_or_else(|| OutboxError::UnknownEventType(event.event_type.clone()))?,
        };
        outbox_core::validate_topic(&topic)?;
        let key = event.key().to_owned();
        let headers = serde_json::to_value(&event.headers)?;
        let event_id = event.event_id;
        let event_type = event.event_type.clone();
        // What the "added" line names, copied only when that line is logged.
        let logged = tracing::enabled!(tracing::Level::DEBUG).then(|| Added {
            aggregate_type: event.aggregate_type.clone(),
            aggregate_id: event.aggregate_id.clone(),
            topic: topic.clone(),
            key: key.clone(),
        });
        let values = vec![
            event_id.as_uuid().into(),
            event.aggregate_type.into(),
            event.aggregate_id.into(),
            event.event_type.into(),
            topic.into(),
            key.into(),
            event.payload.into(),
            headers.into(),
        ];
        Ok(Prepared {
            event_id,
            event_type,
            values,
            logged,
        })
    }

    /// Runs `f` on the leadership session. Any error closes the session (releasing the lock):
    /// a session that failed once is not trusted to still hold it.
    async fn on_session<T, F>(&self, f: F) -> Result<T, OutboxError>
    where
        F: for<'c> FnOnce(
            &'c mut Session,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, sqlx::Error>> + Send + 'c>,
        >,
    {
        let mut guard = self.session.lock().await;
        let Some(session) = guard.as_mut().filter(|s| s.leader) else {
            return Err(OutboxError::LeadershipLost);
        };
        let timeout = self.session_call_timeout;
        let result = match tokio::time::timeout(timeout, f(session)).await {
            Ok(result) => result,
            Err(_) => Err(sqlx::Error::Io(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {timeout:?}"),
            ))),
        };
        result.map_err(|error| {
            *guard = None;
            warn!(error = %error, "outbox relay session failed; closed it and gave up the leadership");
            OutboxError::LeadershipLost
        })
    }
}

fn row_to_event(row: &PgRow) -> Result<OutboxEvent, sqlx::Error> {
    let headers_json: serde_json::Value = row.try_get("headers")?;
    let (headers, defect) = match headers_from_json(&headers_json) {
        Ok(headers) => (headers, None),
        Err(defect) => (Vec::new(), Some(defect)),
    };
    Ok(OutboxEvent {
        id: row.try_get("id")?,
        event_id: EventId::from_uuid(row.try_get("event_id")?),
        aggregate_type: row.try_get("aggregate_type")?,
        aggregate_id: row.try_get("aggregate_id")?,
        event_type: row.try_get("event_type")?,
        topic: row.try_get("topic")?,
        key: row.try_get("event_key")?,
        payload: row.try_get("payload")?,
        headers,
        created_at: row.try_get("created_at")?,
        attempts: row.try_get("attempts")?,
        defect,
    })
}

/// Turns the `headers` column into header pairs. Strings are taken as they are, numbers and
/// booleans as their JSON text; anything else makes the row defective (it cannot become a
/// message as written).
fn headers_from_json(value: &serde_json::Value) -> Result<Vec<(String, String)>, String> {
    let object = value
        .as_object()
        .ok_or_else(|| format!("headers column is not a JSON object: {value}"))?;
    object
        .iter()
        .map(|(name, value)| match value {
            serde_json::Value::String(s) => Ok((name.clone(), s.clone())),
            serde_json::Value::Number(_) | serde_json::Value::Bool(_) => {
                Ok((name.clone(), value.to_string()))
            }
            other => Err(format!(
                "header `{name}` is not a string, number or boolean: {other}"
            )),
        })
        .collect()
}

fn model_to_dead_letter(model: entity::Model) -> Option<DeadLetter> {
    let (headers, defect) = match headers_from_json(&model.headers) {
        Ok(headers) => (headers, None),
        Err(defect) => (Vec::new(), Some(defect)),
    };
    Some(DeadLetter {
        dead_lettered_at: model.dead_lettered_at?.with_timezone(&Utc),
        last_error: model.last_error,
        event: OutboxEvent {
            id: model.id,
            event_id: EventId::from_uuid(model.event_id),
            aggregate_type: model.aggregate_type,
            aggregate_id: model.aggregate_id,
            event_type: model.event_type,
            topic: model.topic,
            key: model.event_key,
            payload: model.payload,
            headers,
            created_at: model.created_at.with_timezone(&Utc),
            attempts: model.attempts,
            defect,
        },
    })
}

/// An event ready to insert.
struct Prepared {
    event_id: EventId,
    event_type: String,
    values: Vec<Value>,
    logged: Option<Added>,
}

/// The fields of the "outbox event added" line.
struct Added {
    aggregate_type: String,
    aggregate_id: String,
    topic: String,
    key: String,
}

impl Prepared {
    /// Counts the event and logs it: only once its `INSERT` succeeded.
    fn added(self) -> EventId {
        metrics::counter!(m::EVENTS_ADDED_TOTAL, "event_type" => self.event_type.clone())
            .increment(1);
        if let Some(added) = self.logged {
            debug!(
                event_id = %self.event_id,
                event_type = %self.event_type,
                aggregate_type = %added.aggregate_type,
                aggregate_id = %added.aggregate_id,
                topic = %added.topic,
                key = %added.key,
                "outbox event added"
            );
        }
        self.event_id
    }
}

/// The connections an event can be added on. Concrete rather than generic over
/// `ConnectionTrait`, so the writer's code is compiled (and measured) once.
#[derive(Clone, Copy)]
enum Writer<'a> {
    Pool(&'a DatabaseConnection),
    Transaction(&'a DatabaseTransaction),
}

impl Writer<'_> {
    async fn execute(self, statement: Statement) -> Result<(), OutboxError> {
        match self {
            Self::Pool(conn) => conn.execute(statement).await,
            Self::Transaction(txn) => txn.execute(statement).await,
        }
        .map(|_| ())
        .map_err(db_error)
    }
}

impl PostgresOutbox {
    async fn add_one(
        &self,
        conn: Writer<'_>,
        event: NewOutboxEvent,
    ) -> Result<EventId, OutboxError> {
        let mut prepared = self.prepare(event)?;
        let values = std::mem::take(&mut prepared.values);
        conn.execute(Statement::from_sql_and_values(
            DbBackend::Postgres,
            INSERT_ONE,
            values,
        ))
        .await?;
        Ok(prepared.added())
    }

    /// One multi-row `INSERT` per [`MAX_ROWS_PER_INSERT`] events, in order.
    async fn add_many(
        &self,
        conn: Writer<'_>,
        events: Vec<NewOutboxEvent>,
    ) -> Result<Vec<EventId>, OutboxError> {
        let mut prepared = events
            .into_iter()
            .map(|event| self.prepare(event))
            .collect::<Result<Vec<_>, _>>()?;
        let mut ids = Vec::with_capacity(prepared.len());
        for chunk in prepared.chunks_mut(MAX_ROWS_PER_INSERT) {
            let mut values = Vec::with_capacity(chunk.len() * 8);
            let mut rows = Vec::with_capacity(chunk.len());
            for (i, event) in chunk.iter_mut().enumerate() {
                values.append(&mut event.values);
                let first = i * 8 + 1;
                let placeholders: Vec<String> =
                    (first..first + 8).map(|n| format!("${n}")).collect();
                rows.push(format!("({})", placeholders.join(", ")));
            }
            let sql = format!(
                "INSERT INTO event_outbox ({INSERT_COLUMNS}) VALUES {}",
                rows.join(", ")
            );
            conn.execute(Statement::from_sql_and_values(
                DbBackend::Postgres,
                sql,
                values,
            ))
            .await?;
        }
        for event in prepared {
            ids.push(event.added());
        }
        Ok(ids)
    }
}

#[async_trait]
impl OutboxWriter<DatabaseTransaction> for PostgresOutbox {
    async fn add_event(
        &self,
        txn: &DatabaseTransaction,
        event: NewOutboxEvent,
    ) -> Result<EventId, OutboxError> {
        self.add_one(Writer::Transaction(txn), event).await
    }

    async fn add_events(
        &self,
        txn: &DatabaseTransaction,
        events: Vec<NewOutboxEvent>,
    ) -> Result<Vec<EventId>, OutboxError> {
        self.add_many(Writer::Transaction(txn), events).await
    }
}

/// Adding on the pool commits the event on its own: for events that belong to no business
/// transaction. Inside a business change, add on its `DatabaseTransaction`.
#[async_trait]
impl OutboxWriter<DatabaseConnection> for PostgresOutbox {
    async fn add_event(
        &self,
        conn: &DatabaseConnection,
        event: NewOutboxEvent,
    ) -> Result<EventId, OutboxError> {
        self.add_one(Writer::Pool(conn), event).await
    }

    async fn add_events(
        &self,
        conn: &DatabaseConnection,
        events: Vec<NewOutboxEvent>,
    ) -> Result<Vec<EventId>, OutboxError> {
        self.add_many(Writer::Pool(conn), events).await
    }
}

/// Runs `sql` (no parameters) with the simple query protocol: one message, one round trip, so
/// even a pooler in transaction mode sends it to a single backend.
fn simple(conn: &mut PgConnection, sql: String) -> SessionFuture<'_, PgRow> {
    Box::pin(async move {
        use sqlx::Executor;
        conn.fetch_one(sql.as_str()).await
    })
}

/// The SQL expression of the lock's key.
fn lock_key_sql(key: Option<i64>) -> String {
    match key {
        Some(key) => key.to_string(),
        None => "hashtextextended('outbox-relay:' || current_schema(), 0)".to_owned(),
    }
}

/// Takes the lock on a fresh or standing session: `Ok(Some(pid))` with the lock, `Ok(None)`
/// while another session holds it, `Err` with [`POOLER_DETECTED`] when consecutive statements
/// reach different backends (checked before locking, so nothing is left locked).
async fn try_lock(session: &mut Session, key: Option<i64>) -> Result<Option<i32>, OutboxError> {
    let pid_sql = || "SELECT pg_backend_pid()".to_owned();
    let first: i32 = simple(&mut session.conn, pid_sql())
        .await
        .and_then(|row| row.try_get(0))
        .map_err(sqlx_error)?;
    let second: i32 = simple(&mut session.conn, pid_sql())
        .await
        .and_then(|row| row.try_get(0))
        .map_err(sqlx_error)?;
    if first != second {
        return Err(OutboxError::Config(POOLER_DETECTED.into()));
    }
    let sql = format!(
        "SELECT pg_try_advisory_lock({}), pg_backend_pid()",
        lock_key_sql(key)
    );
    let row = simple(&mut session.conn, sql).await.map_err(sqlx_error)?;
    let locked: bool = row.try_get(0).map_err(sqlx_error)?;
    let pid: i32 = row.try_get(1).map_err(sqlx_error)?;
    Ok(locked.then_some(pid))
}

/// Whether the session's next statement still reaches backend `pid`, and that backend holds an
/// advisory lock: behind a pooler in transaction mode, it may not.
fn same_backend(session: &mut Session, pid: i32) -> SessionFuture<'_, bool> {
    Box::pin(async move {
        let sql = format!(
            "SELECT pg_backend_pid() = {pid} AND EXISTS (SELECT 1 FROM pg_locks \
             WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted)"
        );
        simple(&mut session.conn, sql).await?.try_get(0)
    })
}

/// A statement on the leadership session (boxed, so the trait's futures stay `Send`).
type SessionFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, sqlx::Error>> + Send + 'a>>;

/// Prepares a new leadership session (see [`SESSION_SETUP`]).
fn set_up(conn: &mut PgConnection) -> SessionFuture<'_, ()> {
    Box::pin(async move {
        simple(conn, SESSION_SETUP.to_owned()).await?;
        Ok(())
    })
}

fn parse_cursor(row: &PgRow) -> Result<ClaimCursor, sqlx::Error> {
    let xid: String = row.try_get("xid_text")?;
    let xid = xid.parse().map_err(|e| sqlx::Error::ColumnDecode {
        index: "xid_text".into(),
        source: Box::new(e),
    })?;
    Ok(ClaimCursor {
        xid,
        id: row.try_get("id")?,
    })
}

#[async_trait]
impl RelayStore for PostgresOutbox {
    async fn acquire_leadership(&self) -> Result<bool, OutboxError> {
        let mut guard = self.session.lock().await;
        if guard.is_none() {
            let mut conn = self
                .db
                .get_postgres_connection_pool()
                .acquire()
                .await
                .map_err(sqlx_error)?
                .detach();
            set_up(&mut conn).await.map_err(sqlx_error)?;
            *guard = Some(Session {
                conn,
                leader: false,
                pid: 0,
                checked_at: None,
            });
        }
        let Some(session) = guard.as_mut() else {
            return Err(OutboxError::LeadershipLost);
        };
        if !session.leader {
            match try_lock(session, self.lock_key).await {
                Ok(Some(pid)) => {
                    session.leader = true;
                    session.pid = pid;
                    // Confirmed below, before anything runs as the leader.
                    session.checked_at = None;
                    info!(backend_pid = pid, "outbox relay took the leadership lock");
                }
                Ok(None) => return Ok(false),
                Err(error) => {
                    *guard = None;
                    if matches!(error, OutboxError::Config(_)) {
                        error!("{POOLER_DETECTED}");
                    }
                    return Err(error);
                }
            }
        }
        // Held: a dead session shows up as a failed claim, which closes it. Right after taking
        // the lock, and now and then after, check that statements still reach the backend that
        // holds it.
        if session
            .checked_at
            .is_some_and(|at| at.elapsed() < self.backend_check_interval)
        {
            return Ok(true);
        }
        let pid = session.pid;
        match same_backend(session, pid).await {
            Ok(true) => {
                session.checked_at = Some(std::time::Instant::now());
                Ok(true)
            }
            Ok(false) => {
                // The backend that took the lock keeps it until it is unlocked there or its
                // session ends, and the pooler may have lent it to another client: try for a
                // second to reach it again, then give the connection up (the lock then lasts
                // until the pooler closes that server connection; the playbook says how to end
                // it).
                let unlock = format!("SELECT pg_advisory_unlock({})", lock_key_sql(self.lock_key));
                for _ in 0..20 {
                    let unlocked = simple(&mut session.conn, unlock.clone())
                        .await
                        .and_then(|row| row.try_get::<bool, _>(0));
                    if unlocked.unwrap_or(false) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                *guard = None;
                error!("{POOLER_DETECTED}");
                Err(OutboxError::Config(POOLER_DETECTED.into()))
            }
            Err(error) => {
                *guard = None;
                warn!(error = %error, "outbox relay session failed; closed it and gave up the leadership");
                Err(OutboxError::LeadershipLost)
            }
        }
    }

    async fn release_leadership(&self) -> Result<(), OutboxError> {
        // Unlock explicitly: the server ends a closed session asynchronously, and a standby
        // should not have to wait for that. Closing covers a session too broken to answer.
        self.listener.lock().await.take();
        if let Some(mut session) = self.session.lock().await.take() {
            use sqlx::Connection;
            let was_leader = session.leader;
            let unlocked = sqlx::query("SELECT pg_advisory_unlock_all()")
                .execute(&mut session.conn)
                .await;
            session.conn.close().await.map_err(sqlx_error)?;
            unlocked.map_err(sqlx_error)?;
            if was_leader {
                info!("outbox relay released the leadership lock");
            }
        }
        Ok(())
    }

    async fn claim_batch(
        &self,
        limit: usize,
        after: Option<ClaimCursor>,
    ) -> Result<ClaimedBatch, OutboxError> {
        let after = after.unwrap_or_default();
        let limit_i64 = i64::try_from(limit).unwrap_or(i64::MAX);
        self.on_session(move |session| {
            Box::pin(async move {
                let rows = sqlx::query(CLAIM)
                    .bind(limit_i64)
                    .bind(after.xid.to_string())
                    .bind(after.id)
                    .fetch_all(&mut session.conn)
                    .await?;
                let mut batch = ClaimedBatch::default();
                let mut held = Vec::new();
                let mut fresh = 0;
                for row in &rows {
                    let lane: i32 = row.try_get("lane")?;
                    if lane == 1 {
                        batch.events.push(row_to_event(row)?);
                        batch.retries += 1;
                        continue;
                    }
                    if batch.retries + fresh >= limit {
                        break;
                    }
                    fresh += 1;
                    batch.cursor = Some(parse_cursor(row)?);
                    if row.try_get::<bool, _>("blocked")? {
                        held.push(row.try_get::<i64, _>("id")?);
                    } else {
                        batch.events.push(row_to_event(row)?);
                    }
                }
                batch.full = batch.retries + fresh >= limit;
                if !held.is_empty() {
                    sqlx::query(PARK_HELD)
                        .bind(&held)
                        .execute(&mut session.conn)
                        .await?;
                    debug!(
                        held = held.len(),
                        "outbox events parked behind a retrying event of their key"
                    );
                }
                Ok(batch)
            })
        })
        .await
    }

    async fn acknowledge(&self, ids: &[i64], keep: bool) -> Result<u64, OutboxError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let sql = if keep {
            MARK_PUBLISHED
        } else {
            DELETE_PUBLISHED
        };
        let ids = ids.to_vec();
        self.on_session(move |session| {
            Box::pin(async move {
                Ok(sqlx::query(sql)
                    .bind(ids)
                    .execute(&mut session.conn)
                    .await?
                    .rows_affected())
            })
        })
        .await
    }

    async fn record_failures(&self, failures: &[AttemptFailure]) -> Result<(), OutboxError> {
        if failures.is_empty() {
            return Ok(());
        }
        let mut ids = Vec::with_capacity(failures.len());
        let mut errors = Vec::with_capacity(failures.len());
        let mut delays = Vec::with_capacity(failures.len());
        let mut kinds = Vec::with_capacity(failures.len());
        for failure in failures {
            ids.push(failure.id);
            errors.push(truncate(&failure.error));
            let (delay, kind) = match failure.outcome {
                FailureOutcome::RetryAfter(delay) => (delay.as_secs_f64(), "retry"),
                FailureOutcome::DeadLetter => (0.0, "dead"),
                FailureOutcome::Held => (0.0, "held"),
            };
            delays.push(delay);
            kinds.push(kind);
        }
        self.on_session(move |session| {
            Box::pin(async move {
                sqlx::query(RECORD_FAILURES)
                    .bind(ids)
                    .bind(errors)
                    .bind(delays)
                    .bind(kinds)
                    .execute(&mut session.conn)
                    .await?;
                Ok(())
            })
        })
        .await
    }

    async fn wait_for_wake_up(&self) {
        let mut listener = self.listener.lock().await;
        loop {
            if listener.is_none() {
                match listen(self.db.get_postgres_connection_pool()).await {
                    Ok(connected) => *listener = Some(connected),
                    Err(error) => {
                        debug!(error = %error, "outbox relay cannot listen for wake-ups; it polls");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            let Some(connected) = listener.as_mut() else {
                continue;
            };
            // Reconnects by itself when its connection drops (wake-ups sent meanwhile are lost:
            // the poll timer covers them).
            match connected.recv().await {
                Ok(_) => {
                    // One claim serves every wake-up that came in meanwhile.
                    while connected.next_buffered().is_some() {}
                    return;
                }
                Err(error) => {
                    *listener = None;
                    debug!(error = %error, "outbox relay lost its wake-up listener; it polls");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    fn remote_wake(&self) -> Option<Arc<dyn RemoteWake>> {
        Some(Arc::new(self.wake.clone()))
    }

    async fn stats(&self) -> Result<OutboxStats, OutboxError> {
        let pool = self.db.get_postgres_connection_pool();
        let row = sqlx::query(STATS)
            .fetch_one(pool)
            .await
            .map_err(sqlx_error)?;
        let pending: i64 = row.try_get("pending").map_err(sqlx_error)?;
        let oldest: Option<f64> = row.try_get("oldest_age").map_err(sqlx_error)?;
        let dead: i64 = row.try_get("dead").map_err(sqlx_error)?;
        let horizon_wait: Option<f64> = row.try_get("horizon_wait").map_err(sqlx_error)?;
        let seconds = |s: f64| Duration::from_secs_f64(s.max(0.0));
        let horizon_holder = match horizon_wait {
            Some(_) => horizon_holder(pool).await.map_err(sqlx_error)?,
            None => None,
        };
        Ok(OutboxStats {
            pending: u64::try_from(pending).unwrap_or_default(),
            oldest_pending_age: oldest.map(seconds),
            dead_lettered: u64::try_from(dead).unwrap_or_default(),
            horizon_wait: horizon_wait.map(seconds),
            horizon_holder,
        })
    }
}

/// A connection listening on [`WAKE_CHANNEL`].
async fn listen(pool: &sqlx::PgPool) -> Result<sqlx::postgres::PgListener, sqlx::Error> {
    let mut listener = sqlx::postgres::PgListener::connect_with(pool).await?;
    listener.listen(WAKE_CHANNEL).await?;
    Ok(listener)
}

/// The transaction holding the commit horizon, as far as this role may see it
/// (`pg_read_all_stats` shows every session's query).
async fn horizon_holder(pool: &sqlx::PgPool) -> Result<Option<HorizonHolder>, sqlx::Error> {
    let Some(row) = sqlx::query(HORIZON_HOLDER).fetch_optional(pool).await? else {
        return Ok(None);
    };
    let age: Option<f64> = row.try_get("age")?;
    let query_start: Option<chrono::DateTime<Utc>> = row.try_get("query_start")?;
    Ok(Some(HorizonHolder {
        pid: row.try_get("pid")?,
        age: age.map(|s| Duration::from_secs_f64(s.max(0.0))),
        state: row.try_get("state")?,
        query_start,
        query: row.try_get("query")?,
        database: row.try_get("datname")?,
        user: row.try_get("usename")?,
        application: row.try_get("application_name")?,
    }))
}

/// The SeaORM condition for a dead-letter filter.
/// The `WHERE` condition selecting the dead letters that match `filter` (every dead letter for
/// the default filter), for queries of your own over [`entity`] such as counts and pages.
pub fn dead_letter_condition(filter: &DeadLetterFilter) -> sea_orm::Condition {
    use entity::Column;
    let mut condition = sea_orm::Condition::all().add(Column::DeadLetteredAt.is_not_null());
    if let Some(topic) = &filter.topic {
        condition = condition.add(Column::Topic.eq(topic.as_str()));
    }
    if let Some(key) = &filter.key {
        condition = condition.add(Column::EventKey.eq(key.as_str()));
    }
    if let Some(event_type) = &filter.event_type {
        condition = condition.add(Column::EventType.eq(event_type.as_str()));
    }
    if let Some(aggregate_type) = &filter.aggregate_type {
        condition = condition.add(Column::AggregateType.eq(aggregate_type.as_str()));
    }
    if let Some(aggregate_id) = &filter.aggregate_id {
        condition = condition.add(Column::AggregateId.eq(aggregate_id.as_str()));
    }
    if let Some(since) = filter.since {
        condition = condition.add(Column::DeadLetteredAt.gte(since));
    }
    if let Some(until) = filter.until {
        condition = condition.add(Column::DeadLetteredAt.lt(until));
    }
    condition
}

impl PostgresOutbox {
    async fn replay_where(&self, condition: sea_orm::Condition) -> Result<u64, OutboxError> {
        use entity::Column;
        let result = entity::Entity::update_many()
            .col_expr(
                Column::DeadLetteredAt,
                Expr::value(Value::ChronoDateTimeWithTimeZone(None)),
            )
            // Parked and due: the retry lane claims it, however far the cursor has moved.
            .col_expr(Column::NextAttemptAt, Expr::current_timestamp().into())
            .col_expr(Column::Attempts, Expr::value(0))
            .filter(condition)
            .exec(&self.db)
            .await
            .map_err(db_error)?;
        Ok(result.rows_affected)
    }

    async fn discard_where(&self, condition: sea_orm::Condition) -> Result<u64, OutboxError> {
        let result = entity::Entity::delete_many()
            .filter(condition)
            .exec(&self.db)
            .await
            .map_err(db_error)?;
        Ok(result.rows_affected)
    }
}

#[async_trait]
impl DeadLetterStore for PostgresOutbox {
    async fn dead_letters(
        &self,
        filter: &DeadLetterFilter,
        limit: u64,
    ) -> Result<Vec<DeadLetter>, OutboxError> {
        let models = entity::Entity::find()
            .filter(dead_letter_condition(filter))
            .order_by_asc(entity::Column::Id)
            .limit(limit)
            .all(&self.db)
            .await
            .map_err(db_error)?;
        Ok(models
            .into_iter()
            .filter_map(model_to_dead_letter)
            .collect())
    }

    async fn replay(&self, ids: &[i64]) -> Result<u64, OutboxError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let condition = sea_orm::Condition::all()
            .add(entity::Column::DeadLetteredAt.is_not_null())
            .add(entity::Column::Id.is_in(ids.iter().copied()));
        let replayed = self.replay_where(condition).await?;
        info!(replayed, ids = ?ids, "outbox dead letters replayed");
        Ok(replayed)
    }

    async fn replay_matching(&self, filter: &DeadLetterFilter) -> Result<u64, OutboxError> {
        let replayed = self.replay_where(dead_letter_condition(filter)).await?;
        info!(replayed, filter = ?filter, "outbox dead letters replayed");
        Ok(replayed)
    }

    async fn discard(&self, ids: &[i64]) -> Result<u64, OutboxError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let condition = sea_orm::Condition::all()
            .add(entity::Column::DeadLetteredAt.is_not_null())
            .add(entity::Column::Id.is_in(ids.iter().copied()));
        let discarded = self.discard_where(condition).await?;
        warn!(discarded, ids = ?ids, "outbox dead letters discarded");
        Ok(discarded)
    }

    async fn discard_matching(&self, filter: &DeadLetterFilter) -> Result<u64, OutboxError> {
        let discarded = self.discard_where(dead_letter_condition(filter)).await?;
        warn!(discarded, filter = ?filter, "outbox dead letters discarded");
        Ok(discarded)
    }
}

#[async_trait]
impl OutboxCleanup for PostgresOutbox {
    async fn delete_expired(&self, older_than: Duration, limit: u64) -> Result<u64, OutboxError> {
        let result = self
            .db
            .execute(Statement::from_sql_and_values(
                DbBackend::Postgres,
                DELETE_EXPIRED,
                [
                    older_than.as_secs_f64().into(),
                    i64::try_from(limit).unwrap_or(i64::MAX).into(),
                ],
            ))
            .await
            .map_err(db_error)?;
        Ok(result.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_must_be_an_object_of_scalars() {
        let ok = headers_from_json(&serde_json::json!({"a": "x", "n": 3, "b": true})).unwrap();
        assert_eq!(
            ok,
            vec![
                ("a".to_owned(), "x".to_owned()),
                ("b".to_owned(), "true".to_owned()),
                ("n".to_owned(), "3".to_owned())
            ]
        );
        assert!(headers_from_json(&serde_json::json!([1])).is_err());
        assert!(headers_from_json(&serde_json::json!({"a": null})).is_err());
        assert!(headers_from_json(&serde_json::json!({"a": {"b": 1}})).is_err());
    }

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        let three_bytes = "€".repeat(MAX_ERROR_LEN);
        let cut = truncate(&three_bytes);
        assert!(cut.is_char_boundary(cut.len() - 3));
        assert!(cut.len() <= MAX_ERROR_LEN + 3);
        let long = "é".repeat(MAX_ERROR_LEN);
        let cut = truncate(&long);
        assert!(cut.len() <= MAX_ERROR_LEN + 3);
        assert!(cut.ends_with("..."));
        assert_eq!(truncate("short"), "short");
    }
}
