//! The PostgreSQL outbox repository.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox_core::metrics as m;
use outbox_core::{
    AttemptFailure, DeadLetter, DeadLetterFilter, DeadLetterStore, EventId, EventTypeMapper,
    FailureOutcome, NewOutboxEvent, OutboxCleanup, OutboxError, OutboxEvent, OutboxStats,
    OutboxWriter, RelayStore, TopicMap,
};
use sea_orm::sea_query::Expr;
use sea_orm::sqlx::{self, PgConnection, Row, postgres::PgRow};
use sea_orm::{
    ColumnTrait, ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, EntityTrait,
    QueryFilter, QueryOrder, QuerySelect, Statement, Value,
};
use tokio::sync::Mutex;
use tracing::{debug, info, warn};

use crate::entity;

/// Longest `last_error` stored; longer messages are cut.
const MAX_ERROR_LEN: usize = 2000;

const INSERT_COLUMNS: &str =
    "event_id, aggregate_type, aggregate_id, event_type, topic, event_key, payload, headers";

const INSERT_ONE: &str = "INSERT INTO event_outbox \
     (event_id, aggregate_type, aggregate_id, event_type, topic, event_key, payload, headers) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

/// The relay's full claim (`claim_batch(limit, None)`, `$1` = limit): pending events in id order,
/// skipping those backing off and everything queued behind them on the same topic and key.
/// Public for `EXPLAIN` by operators and the benchmark.
pub const CLAIM: &str = "\
WITH blocked AS (
    SELECT topic, event_key, min(id) AS first_id
    FROM event_outbox
    WHERE next_attempt_at > now() AND published_at IS NULL AND dead_lettered_at IS NULL
    GROUP BY topic, event_key
)
SELECT o.id, o.event_id, o.aggregate_type, o.aggregate_id, o.event_type, o.topic, o.event_key,
       o.payload, o.headers, o.created_at, o.attempts
FROM event_outbox o
WHERE o.published_at IS NULL AND o.dead_lettered_at IS NULL
  AND (o.next_attempt_at IS NULL OR o.next_attempt_at <= now())
  AND NOT EXISTS (
      SELECT 1 FROM blocked b
      WHERE b.topic = o.topic AND b.event_key = o.event_key AND b.first_id < o.id)
ORDER BY o.id
LIMIT $1";

/// The claim above a cursor (`claim_batch(limit, Some(after))`, `$1` = limit, `$2` = after): only
/// rows above it, so the index scan does not walk again over rows deleted since the last vacuum.
/// It returns nothing while any event is backing off after a failure (then only the full claim
/// keeps keys in order). Public for `EXPLAIN` by operators and the benchmark.
pub const CLAIM_AFTER: &str = "\
SELECT o.id, o.event_id, o.aggregate_type, o.aggregate_id, o.event_type, o.topic, o.event_key,
       o.payload, o.headers, o.created_at, o.attempts
FROM event_outbox o
WHERE o.published_at IS NULL AND o.dead_lettered_at IS NULL AND o.next_attempt_at IS NULL
  AND o.id > $2
  AND NOT EXISTS (
      SELECT 1 FROM event_outbox r
      WHERE r.next_attempt_at IS NOT NULL AND r.published_at IS NULL AND r.dead_lettered_at IS NULL)
ORDER BY o.id
LIMIT $1";

/// Most ids one acknowledgement statement carries. sqlx 0.9 leaves Nagle's algorithm on, and a
/// statement over about 16 KiB goes out in two writes whose second waits ~40 ms for the server's
/// delayed ACK; 1,000 ids stay under that.
const ACK_CHUNK: usize = 1000;

const DELETE_PUBLISHED: &str = "DELETE FROM event_outbox WHERE id = ANY($1)";

const MARK_PUBLISHED: &str =
    "UPDATE event_outbox SET published_at = now() WHERE id = ANY($1) AND published_at IS NULL";

const RECORD_FAILURES: &str = "\
UPDATE event_outbox AS o
SET attempts = o.attempts + 1,
    last_error = f.error,
    next_attempt_at = f.retry_at,
    dead_lettered_at = CASE WHEN f.dead THEN now() ELSE NULL END
FROM unnest($1::bigint[], $2::text[], $3::timestamptz[], $4::bool[]) AS f(id, error, retry_at, dead)
WHERE o.id = f.id AND o.published_at IS NULL";

const STATS: &str = "\
SELECT
    (SELECT count(*) FROM event_outbox
     WHERE published_at IS NULL AND dead_lettered_at IS NULL) AS pending,
    (SELECT EXTRACT(EPOCH FROM now() - created_at)::float8 FROM event_outbox
     WHERE published_at IS NULL AND dead_lettered_at IS NULL ORDER BY id LIMIT 1) AS oldest_age,
    (SELECT count(*) FROM event_outbox WHERE dead_lettered_at IS NOT NULL) AS dead";

const DELETE_EXPIRED: &str = "\
DELETE FROM event_outbox WHERE id IN (
    SELECT id FROM event_outbox
    WHERE published_at IS NOT NULL AND published_at < now() - make_interval(secs => $1)
    ORDER BY published_at
    LIMIT $2)";

/// The session that holds (or tries for) the relay leadership.
struct Session {
    conn: PgConnection,
    leader: bool,
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
    retention: Option<Duration>,
    lock_key: Option<i64>,
    session: Mutex<Option<Session>>,
}

impl std::fmt::Debug for PostgresOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresOutbox")
            .field("retention", &self.retention)
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
    /// their topic until a mapper is set with [`with_mapper`](Self::with_mapper); published rows
    /// are deleted until a retention is set.
    pub fn new(db: DatabaseConnection) -> Result<Self, OutboxError> {
        if !matches!(db, DatabaseConnection::SqlxPostgresPoolConnection(_)) {
            return Err(OutboxError::Config(
                "the outbox repository needs a PostgreSQL connection pool".into(),
            ));
        }
        Ok(Self {
            db,
            mapper: Arc::new(TopicMap::new()),
            retention: None,
            lock_key: None,
            session: Mutex::new(None),
        })
    }

    /// Chooses topics for events written without one.
    pub fn with_mapper(mut self, mapper: Arc<dyn EventTypeMapper>) -> Self {
        self.mapper = mapper;
        self
    }

    /// Keeps published rows for `retention` (marked with `published_at`) instead of deleting
    /// them on acknowledgement; [`OutboxCleanup::delete_expired`] removes them later. `None`
    /// (the default) deletes at once.
    pub fn with_retention(mut self, retention: Option<Duration>) -> Self {
        self.retention = retention;
        self
    }

    /// Uses `key` for the leadership advisory lock. The default is a hash of the current
    /// schema's name, so relays of different schemas in one database do not exclude each other.
    pub fn with_lock_key(mut self, key: i64) -> Self {
        self.lock_key = Some(key);
        self
    }

    /// The connection pool.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.db
    }

    fn prepare(&self, event: NewOutboxEvent) -> Result<(EventId, Vec<Value>, String), OutboxError> {
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
        debug!(
            event_id = %event_id,
            event_type = %event.event_type,
            aggregate_type = %event.aggregate_type,
            aggregate_id = %event.aggregate_id,
            topic = %topic,
            key = %key,
            "outbox event added"
        );
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
        Ok((event_id, values, event_type))
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
        let result = f(session).await;
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
        let (event_id, values, event_type) = self.prepare(event)?;
        conn.execute(Statement::from_sql_and_values(
            DbBackend::Postgres,
            INSERT_ONE,
            values,
        ))
        .await?;
        metrics::counter!(m::EVENTS_ADDED_TOTAL, "event_type" => event_type).increment(1);
        Ok(event_id)
    }

    async fn add_many(
        &self,
        conn: Writer<'_>,
        events: Vec<NewOutboxEvent>,
    ) -> Result<Vec<EventId>, OutboxError> {
        if events.is_empty() {
            return Ok(Vec::new());
        }
        let mut ids = Vec::with_capacity(events.len());
        let mut types = Vec::with_capacity(events.len());
        let mut values = Vec::with_capacity(events.len() * 8);
        let mut rows = Vec::with_capacity(events.len());
        for (i, event) in events.into_iter().enumerate() {
            let (id, row_values, event_type) = self.prepare(event)?;
            ids.push(id);
            types.push(event_type);
            values.extend(row_values);
            let first = i * 8 + 1;
            let placeholders: Vec<String> = (first..first + 8).map(|n| format!("${n}")).collect();
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
        for event_type in types {
            metrics::counter!(m::EVENTS_ADDED_TOTAL, "event_type" => event_type).increment(1);
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

#[async_trait]
impl RelayStore for PostgresOutbox {
    async fn acquire_leadership(&self) -> Result<bool, OutboxError> {
        let mut guard = self.session.lock().await;
        if guard.as_ref().is_some_and(|s| s.leader) {
            // Held: a dead session shows up as a failed claim, which closes it.
            return Ok(true);
        }
        if guard.is_none() {
            let conn = self
                .db
                .get_postgres_connection_pool()
                .acquire()
                .await
                .map_err(sqlx_error)?
                .detach();
            *guard = Some(Session {
                conn,
                leader: false,
            });
        }
        let Some(session) = guard.as_mut() else {
            return Err(OutboxError::LeadershipLost);
        };
        let query = match self.lock_key {
            Some(key) => sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)").bind(key),
            None => sqlx::query_scalar::<_, bool>(
                "SELECT pg_try_advisory_lock(hashtextextended('outbox-relay:' || current_schema(), 0))",
            ),
        };
        match query.fetch_one(&mut session.conn).await {
            Ok(true) => {
                session.leader = true;
                info!("outbox relay took the leadership lock");
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(error) => {
                *guard = None;
                Err(sqlx_error(error))
            }
        }
    }

    async fn release_leadership(&self) -> Result<(), OutboxError> {
        // Unlock explicitly: the server ends a closed session asynchronously, and a standby
        // should not have to wait for that. Closing covers a session too broken to answer.
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
        after: Option<i64>,
    ) -> Result<Vec<OutboxEvent>, OutboxError> {
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.on_session(move |session| {
            Box::pin(async move {
                let query = match after {
                    Some(after) => sqlx::query(CLAIM_AFTER).bind(limit).bind(after),
                    None => sqlx::query(CLAIM).bind(limit),
                };
                let rows = query.fetch_all(&mut session.conn).await?;
                rows.iter().map(row_to_event).collect()
            })
        })
        .await
    }

    async fn acknowledge(&self, ids: &[i64]) -> Result<u64, OutboxError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let sql = if self.retention.is_some() {
            MARK_PUBLISHED
        } else {
            DELETE_PUBLISHED
        };
        let ids = ids.to_vec();
        self.on_session(move |session| {
            Box::pin(async move {
                let mut done = 0;
                for chunk in ids.chunks(ACK_CHUNK) {
                    done += sqlx::query(sql)
                        .bind(chunk)
                        .execute(&mut session.conn)
                        .await?
                        .rows_affected();
                }
                Ok(done)
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
        let mut retry_at: Vec<Option<DateTime<Utc>>> = Vec::with_capacity(failures.len());
        let mut dead = Vec::with_capacity(failures.len());
        for failure in failures {
            ids.push(failure.id);
            errors.push(truncate(&failure.error));
            match failure.outcome {
                FailureOutcome::RetryAt(at) => {
                    retry_at.push(Some(at));
                    dead.push(false);
                }
                FailureOutcome::DeadLetter => {
                    retry_at.push(None);
                    dead.push(true);
                }
            }
        }
        self.on_session(move |session| {
            Box::pin(async move {
                sqlx::query(RECORD_FAILURES)
                    .bind(ids)
                    .bind(errors)
                    .bind(retry_at)
                    .bind(dead)
                    .execute(&mut session.conn)
                    .await?;
                Ok(())
            })
        })
        .await
    }

    async fn stats(&self) -> Result<OutboxStats, OutboxError> {
        let row = sqlx::query(STATS)
            .fetch_one(self.db.get_postgres_connection_pool())
            .await
            .map_err(sqlx_error)?;
        let pending: i64 = row.try_get("pending").map_err(sqlx_error)?;
        let oldest: Option<f64> = row.try_get("oldest_age").map_err(sqlx_error)?;
        let dead: i64 = row.try_get("dead").map_err(sqlx_error)?;
        Ok(OutboxStats {
            pending: u64::try_from(pending).unwrap_or_default(),
            oldest_pending_age: oldest.map(|s| Duration::from_secs_f64(s.max(0.0))),
            dead_lettered: u64::try_from(dead).unwrap_or_default(),
        })
    }
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
            .col_expr(
                Column::NextAttemptAt,
                Expr::value(Value::ChronoDateTimeWithTimeZone(None)),
            )
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
    async fn delete_expired(&self, limit: u64) -> Result<u64, OutboxError> {
        let Some(retention) = self.retention else {
            return Ok(0);
        };
        let result = self
            .db
            .execute(Statement::from_sql_and_values(
                DbBackend::Postgres,
                DELETE_EXPIRED,
                [
                    retention.as_secs_f64().into(),
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
