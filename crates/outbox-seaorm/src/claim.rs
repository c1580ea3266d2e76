//! Claims and their outcomes: reading a batch in two lanes, acknowledging what was published,
//! recording failed attempts. Each runs on the leadership session
//! ([`Leadership::on_session`]) through sqlx, with its statement from `sql/` and array binds
//! (`= ANY($1)`, `unnest`), so that one statement serves a whole batch.

use outbox_core::{AttemptFailure, ClaimCursor, ClaimedBatch, FailureOutcome, OutboxError};
use sea_orm::sqlx::{self, Row, postgres::PgRow};
use tracing::debug;

use crate::leadership::Leadership;
use crate::rows::{row_to_event, truncate};

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
/// Public, hidden, for the benchmark, which times it bare; operators use
/// [`PostgresOutbox::explain_claim`](crate::PostgresOutbox::explain_claim).
#[doc(hidden)]
pub const CLAIM: &str = include_str!("../sql/claim.sql");

/// Parks new rows behind a parked row of their key (`$1` = ids).
const PARK_HELD: &str = include_str!("../sql/park_held.sql");

/// Acknowledges by deleting (`$1` = ids).
const DELETE_PUBLISHED: &str = include_str!("../sql/delete_published.sql");

/// Acknowledges by recording the publication time, to keep the rows (`$1` = ids).
const MARK_PUBLISHED: &str = include_str!("../sql/mark_published.sql");

/// Failed attempts and held rows; retry times on the database's clock (`$3` = delays in
/// seconds), never the relay's.
const RECORD_FAILURES: &str = include_str!("../sql/record_failures.sql");

/// [`RelayStore::claim_batch`](outbox_core::RelayStore::claim_batch).
pub(crate) async fn claim_batch(
    leadership: &Leadership,
    limit: usize,
    after: Option<ClaimCursor>,
) -> Result<ClaimedBatch, OutboxError> {
    let after = after.unwrap_or_default();
    let limit_i64 = i64::try_from(limit).unwrap_or(i64::MAX);
    leadership
        .on_session(move |session| {
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

/// [`RelayStore::acknowledge`](outbox_core::RelayStore::acknowledge).
pub(crate) async fn acknowledge(
    leadership: &Leadership,
    ids: &[i64],
    keep: bool,
) -> Result<u64, OutboxError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let sql = if keep {
        MARK_PUBLISHED
    } else {
        DELETE_PUBLISHED
    };
    let ids = ids.to_vec();
    leadership
        .on_session(move |session| {
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

/// [`RelayStore::record_failures`](outbox_core::RelayStore::record_failures).
pub(crate) async fn record_failures(
    leadership: &Leadership,
    failures: &[AttemptFailure],
) -> Result<(), OutboxError> {
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
    leadership
        .on_session(move |session| {
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

/// The claim's position after `row`. sqlx has no type for `xid8`, whose binary form is
/// PostgreSQL's 8-byte big-endian unsigned integer: `int8`'s decoder reads those bytes (unchecked,
/// as the checked read refuses the type's name) and they are taken back, exactly, as `u64`.
fn parse_cursor(row: &PgRow) -> Result<ClaimCursor, sqlx::Error> {
    Ok(ClaimCursor {
        xid: row.try_get_unchecked::<i64, _>("xid")?.cast_unsigned(),
        id: row.try_get("id")?,
    })
}

/// The claim with its parameters written in as literals, behind `EXPLAIN`: a parameterised
/// `EXPLAIN` would show a generic plan, not the one the relay gets.
pub(crate) fn explain_sql(limit: usize, after: ClaimCursor, analyze: bool) -> String {
    let options = if analyze { "(ANALYZE, BUFFERS) " } else { "" };
    // Only numbers are written in: nothing here comes from outside as text.
    let claim = CLAIM
        .replace("$1", &i64::try_from(limit).unwrap_or(i64::MAX).to_string())
        .replace("$2", &format!("'{}'", after.xid))
        .replace("$3", &after.id.to_string());
    format!("EXPLAIN {options}{claim}")
}

impl crate::PostgresOutbox {
    /// The query plan of the relay's claim of `limit` rows after `after` (from the start with
    /// `None`), one line a row as `EXPLAIN` prints it, for operators checking that the claim
    /// reads the claim index on their backlog. With `analyze`, `EXPLAIN (ANALYZE, BUFFERS)`:
    /// the claim runs (it only reads) and the plan shows times and buffers. Runs on the pool;
    /// needs no leadership.
    pub async fn explain_claim(
        &self,
        limit: usize,
        after: Option<ClaimCursor>,
        analyze: bool,
    ) -> Result<Vec<String>, OutboxError> {
        let sql = explain_sql(limit, after.unwrap_or_default(), analyze);
        let rows = sqlx::query(&sql)
            .fetch_all(self.db.get_postgres_connection_pool())
            .await
            .map_err(crate::outbox::sqlx_error)?;
        rows.iter()
            .map(|row| row.try_get::<String, _>(0))
            .collect::<Result<_, _>>()
            .map_err(crate::outbox::sqlx_error)
    }
}
