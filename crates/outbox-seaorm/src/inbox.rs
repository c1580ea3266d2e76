//! The consumer's inbox on PostgreSQL: [`PostgresInbox`], over the `event_inbox` table
//! ([`CreateEventInbox`](crate::CreateEventInbox)).
//!
//! Every statement is a SeaORM [`Statement`] from `sql/inbox_*.sql`, run on a
//! [`ConnectionTrait`]: the ones a handler's transaction shares (`record`, `set_outcome`,
//! `take_rejected`) on the caller's connection or transaction, the others on the pool. A batch
//! is recorded in one `INSERT ... SELECT FROM unnest(...)`, its arrays passed as PostgreSQL
//! array literals (one text parameter a column).

use std::borrow::Cow;
use std::collections::HashSet;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox_core::{InboxEntry, InboxMessage, InboxStore, OutboxError, RejectedMessage};
use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, QueryResult, Statement,
    TransactionTrait, Value,
};
use uuid::Uuid;

use sea_orm::sqlx;

use crate::outbox::db_error;

const RECORD: &str = include_str!("../sql/inbox_record.sql");
const SET_OUTCOME: &str = include_str!("../sql/inbox_set_outcome.sql");
const REJECT: &str = include_str!("../sql/inbox_reject.sql");
const REJECTED: &str = include_str!("../sql/inbox_rejected.sql");
const TAKE_REJECTED: &str = include_str!("../sql/inbox_take_rejected.sql");
const UPDATE_REJECTED: &str = include_str!("../sql/inbox_update_rejected.sql");
const DELETE_EXPIRED: &str = include_str!("../sql/inbox_delete_expired.sql");

/// The inbox on PostgreSQL, through SeaORM: the [`InboxStore`] of the inbox worker, with
/// `sea_orm::DatabaseTransaction` as the handlers' transaction.
///
/// [`record`](Self::record), [`set_outcome`](Self::set_outcome) and
/// [`take_rejected`](Self::take_rejected) are also inherent methods generic over any SeaORM
/// [`ConnectionTrait`], so a wrapper with a transaction type of its own (the `outbox` facade's
/// `OutboxTransaction`) runs them on it.
///
/// ```no_run
/// # async fn demo(db: sea_orm::DatabaseConnection) -> Result<(), Box<dyn std::error::Error>> {
/// use outbox_core::InboxStore;
/// use outbox_seaorm::PostgresInbox;
///
/// let inbox = PostgresInbox::new(db)?;
/// for rejected in inbox.rejected(Some("batch-orchestrator"), 50).await? {
///     println!("{} {}: {}", rejected.entry.event_id, rejected.entry.topic, rejected.error);
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct PostgresInbox {
    db: DatabaseConnection,
}

fn statement(sql: &str, values: Vec<Value>) -> Statement {
    Statement::from_sql_and_values(DbBackend::Postgres, sql, values)
}

/// `text` without NUL characters, which a PostgreSQL `text` column refuses.
fn no_nul(text: &str) -> Cow<'_, str> {
    if text.contains('\0') {
        Cow::Owned(text.replace('\0', "\u{fffd}"))
    } else {
        Cow::Borrowed(text)
    }
}

/// A PostgreSQL array literal of `items` (`NULL` for `None`), each element quoted and escaped.
fn array_literal<I, S>(items: I) -> String
where
    I: IntoIterator<Item = Option<S>>,
    S: AsRef<str>,
{
    let mut out = String::from("{");
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        match item {
            None => out.push_str("NULL"),
            Some(item) => {
                out.push('"');
                for c in item.as_ref().chars() {
                    match c {
                        '"' | '\\' => {
                            out.push('\\');
                            out.push(c);
                        }
                        '\0' => out.push('\u{fffd}'),
                        c => out.push(c),
                    }
                }
                out.push('"');
            }
        }
    }
    out.push('}');
    out
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// A header name or value as JSON: the text itself when it is UTF-8 without NUL (which `jsonb`
/// refuses), else its bytes in hex under `<field>_hex`.
fn put_bytes(object: &mut serde_json::Map<String, serde_json::Value>, field: &str, bytes: &[u8]) {
    match std::str::from_utf8(bytes) {
        Ok(text) if !text.contains('\0') => {
            object.insert(field.to_owned(), text.into());
        }
        _ => {
            object.insert(format!("{field}_hex"), hex(bytes).into());
        }
    }
}

fn headers_json(headers: &[(String, Vec<u8>)]) -> serde_json::Value {
    headers
        .iter()
        .map(|(name, value)| {
            let mut object = serde_json::Map::new();
            put_bytes(&mut object, "name", name.as_bytes());
            put_bytes(&mut object, "value", value);
            serde_json::Value::Object(object)
        })
        .collect()
}

fn malformed(what: &str) -> OutboxError {
    OutboxError::InvalidEvent(format!("an event_inbox row holds malformed {what}"))
}

fn get_bytes(
    object: &serde_json::Map<String, serde_json::Value>,
    field: &str,
) -> Result<Vec<u8>, OutboxError> {
    if let Some(text) = object.get(field).and_then(|v| v.as_str()) {
        return Ok(text.as_bytes().to_vec());
    }
    object
        .get(&format!("{field}_hex"))
        .and_then(|v| v.as_str())
        .and_then(unhex)
        .ok_or_else(|| malformed("headers"))
}

fn headers_from_json(
    json: Option<serde_json::Value>,
) -> Result<Vec<(String, Vec<u8>)>, OutboxError> {
    let Some(json) = json else {
        return Ok(Vec::new());
    };
    let list = json.as_array().ok_or_else(|| malformed("headers"))?;
    list.iter()
        .map(|header| {
            let object = header.as_object().ok_or_else(|| malformed("headers"))?;
            let name =
                String::from_utf8(get_bytes(object, "name")?).map_err(|_| malformed("headers"))?;
            Ok((name, get_bytes(object, "value")?))
        })
        .collect()
}

fn get<T: sea_orm::TryGetable>(row: &QueryResult, column: &str) -> Result<T, OutboxError> {
    row.try_get("", column).map_err(db_error)
}

/// The message a rejected row keeps (its broker timestamp is not kept).
fn message_of(row: &QueryResult) -> Result<InboxMessage, OutboxError> {
    Ok(InboxMessage {
        topic: get(row, "topic")?,
        partition: get(row, "partition")?,
        offset: get(row, "kafka_offset")?,
        key: get(row, "key")?,
        payload: get(row, "payload")?,
        headers: headers_from_json(get(row, "headers")?)?,
        timestamp: None,
    })
}

fn limit(limit: u64) -> i64 {
    i64::try_from(limit).unwrap_or(i64::MAX)
}

impl PostgresInbox {
    /// An inbox over `db`, which must be a PostgreSQL connection pool with `event_inbox`
    /// migrated.
    pub fn new(db: DatabaseConnection) -> Result<Self, OutboxError> {
        if !matches!(db, DatabaseConnection::SqlxPostgresPoolConnection(_)) {
            return Err(OutboxError::Config(
                "the inbox needs a PostgreSQL connection pool".into(),
            ));
        }
        Ok(Self { db })
    }

    /// [`InboxStore::record`] on any connection or transaction: one statement for the whole
    /// batch.
    pub async fn record<C: ConnectionTrait>(
        &self,
        conn: &C,
        entries: &[InboxEntry],
    ) -> Result<Vec<bool>, OutboxError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let values: Vec<Value> = vec![
            array_literal(entries.iter().map(|e| Some(e.consumer.as_str()))).into(),
            array_literal(entries.iter().map(|e| Some(e.event_id.to_string()))).into(),
            array_literal(entries.iter().map(|e| Some(e.topic.as_str()))).into(),
            array_literal(entries.iter().map(|e| Some(e.partition.to_string()))).into(),
            array_literal(entries.iter().map(|e| Some(e.offset.to_string()))).into(),
            array_literal(entries.iter().map(|e| e.event_type.as_deref())).into(),
            array_literal(entries.iter().map(|e| e.correlation_id.as_deref())).into(),
        ];
        let rows = conn
            .query_all(statement(RECORD, values))
            .await
            .map_err(db_error)?;
        let mut inserted = HashSet::with_capacity(rows.len());
        for row in &rows {
            let consumer: String = get(row, "consumer")?;
            let event_id: Uuid = get(row, "event_id")?;
            inserted.insert((consumer, event_id));
        }
        // The first entry of a repeated (consumer, event_id) is the one inserted.
        Ok(entries
            .iter()
            .map(|e| inserted.remove(&(no_nul(&e.consumer).into_owned(), e.event_id)))
            .collect())
    }

    /// [`InboxStore::set_outcome`] on any connection or transaction.
    pub async fn set_outcome<C: ConnectionTrait>(
        &self,
        conn: &C,
        consumer: &str,
        event_id: Uuid,
        outcome: &str,
    ) -> Result<(), OutboxError> {
        conn.execute(statement(
            SET_OUTCOME,
            vec![
                no_nul(consumer).into_owned().into(),
                event_id.into(),
                no_nul(outcome).into_owned().into(),
            ],
        ))
        .await
        .map_err(classified)?;
        Ok(())
    }

    /// Fails with [`OutboxError::Refused`] when a statement on `conn` failed earlier and its
    /// error was ignored: PostgreSQL has then aborted the transaction and would answer its
    /// `COMMIT` with a rollback and no error, so the message would count as applied with
    /// nothing applied. The inbox runs it before each commit.
    pub async fn ensure_not_aborted<C: ConnectionTrait>(
        &self,
        conn: &C,
    ) -> Result<(), OutboxError> {
        conn.execute_unprepared("SELECT 1")
            .await
            .map_err(|e| match classified(e) {
                OutboxError::Refused(text) => OutboxError::Refused(format!(
                    "the transaction was aborted by a failed statement whose error the handler \
                     ignored: {text}"
                )),
                other => other,
            })?;
        Ok(())
    }

    /// [`InboxStore::take_rejected`] on any connection or transaction.
    pub async fn take_rejected<C: ConnectionTrait>(
        &self,
        conn: &C,
        consumer: &str,
        event_id: Uuid,
    ) -> Result<Option<InboxMessage>, OutboxError> {
        let row = conn
            .query_one(statement(
                TAKE_REJECTED,
                vec![no_nul(consumer).into_owned().into(), event_id.into()],
            ))
            .await
            .map_err(db_error)?;
        row.as_ref().map(message_of).transpose()
    }
}

#[async_trait]
impl InboxStore for PostgresInbox {
    type Transaction = DatabaseTransaction;

    async fn begin(&self) -> Result<DatabaseTransaction, OutboxError> {
        self.db.begin().await.map_err(db_error)
    }

    async fn record(
        &self,
        txn: &DatabaseTransaction,
        entries: &[InboxEntry],
    ) -> Result<Vec<bool>, OutboxError> {
        PostgresInbox::record(self, txn, entries).await
    }

    async fn set_outcome(
        &self,
        txn: &DatabaseTransaction,
        consumer: &str,
        event_id: Uuid,
        outcome: &str,
    ) -> Result<(), OutboxError> {
        PostgresInbox::set_outcome(self, txn, consumer, event_id, outcome).await
    }

    async fn commit(&self, txn: DatabaseTransaction) -> Result<(), OutboxError> {
        if let Err(e) = self.ensure_not_aborted(&txn).await {
            let _ = txn.rollback().await;
            return Err(e);
        }
        txn.commit().await.map_err(classified)
    }

    async fn rollback(&self, txn: DatabaseTransaction) -> Result<(), OutboxError> {
        txn.rollback().await.map_err(db_error)
    }

    async fn reject(
        &self,
        entry: &InboxEntry,
        message: &InboxMessage,
        error: &str,
    ) -> Result<bool, OutboxError> {
        let optional =
            |text: Option<&str>| -> Value { text.map(|t| no_nul(t).into_owned()).into() };
        let values = vec![
            no_nul(&entry.consumer).into_owned().into(),
            entry.event_id.into(),
            no_nul(&entry.topic).into_owned().into(),
            entry.partition.into(),
            entry.offset.into(),
            optional(entry.event_type.as_deref()),
            optional(entry.correlation_id.as_deref()),
            no_nul(error).into_owned().into(),
            message.key.clone().into(),
            message.payload.clone().into(),
            headers_json(&message.headers).into(),
        ];
        let result = self
            .db
            .execute(statement(REJECT, values))
            .await
            .map_err(db_error)?;
        Ok(result.rows_affected() == 1)
    }

    async fn rejected(
        &self,
        consumer: Option<&str>,
        limit_: u64,
    ) -> Result<Vec<RejectedMessage>, OutboxError> {
        let consumer: Value = consumer.map(|c| no_nul(c).into_owned()).into();
        let rows = self
            .db
            .query_all(statement(REJECTED, vec![consumer, limit(limit_).into()]))
            .await
            .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                let error: Option<String> = get(row, "error")?;
                let rejected_at: DateTime<Utc> = get(row, "processed_at")?;
                Ok(RejectedMessage {
                    entry: InboxEntry {
                        consumer: get(row, "consumer")?,
                        event_id: get(row, "event_id")?,
                        topic: get(row, "topic")?,
                        partition: get(row, "partition")?,
                        offset: get(row, "kafka_offset")?,
                        event_type: get(row, "event_type")?,
                        correlation_id: get(row, "correlation_id")?,
                    },
                    error: error.unwrap_or_default(),
                    rejected_at,
                    message: message_of(row)?,
                })
            })
            .collect()
    }

    async fn take_rejected(
        &self,
        txn: &DatabaseTransaction,
        consumer: &str,
        event_id: Uuid,
    ) -> Result<Option<InboxMessage>, OutboxError> {
        PostgresInbox::take_rejected(self, txn, consumer, event_id).await
    }

    async fn update_rejected(
        &self,
        consumer: &str,
        event_id: Uuid,
        error: &str,
    ) -> Result<bool, OutboxError> {
        let result = self
            .db
            .execute(statement(
                UPDATE_REJECTED,
                vec![
                    no_nul(consumer).into_owned().into(),
                    event_id.into(),
                    no_nul(error).into_owned().into(),
                ],
            ))
            .await
            .map_err(db_error)?;
        Ok(result.rows_affected() == 1)
    }

    async fn delete_expired(&self, older_than: Duration, limit_: u64) -> Result<u64, OutboxError> {
        let result = self
            .db
            .execute(statement(
                DELETE_EXPIRED,
                vec![older_than.as_secs_f64().into(), limit(limit_).into()],
            ))
            .await
            .map_err(db_error)?;
        Ok(result.rows_affected())
    }
}

/// Whether retrying the statement that failed with `error` repeats the failure: PostgreSQL's
/// data exceptions (SQLSTATE class 22), integrity violations (23), statements that cannot run
/// (42), program limits (54) and a transaction aborted by an earlier failed statement (25P02),
/// and errors of the client's own that no retry changes (a row that does not decode, a missing
/// record). Connection, pool, I/O and protocol errors, deadlocks, serialization failures and a
/// server shutting down are worth retrying.
pub fn is_permanent(error: &sea_orm::DbErr) -> bool {
    use sea_orm::{DbErr, RuntimeErr};
    match error {
        DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => false,
        DbErr::Exec(RuntimeErr::SqlxError(e)) | DbErr::Query(RuntimeErr::SqlxError(e)) => {
            sqlx_is_permanent(e)
        }
        DbErr::Exec(_) | DbErr::Query(_) => false,
        _ => true,
    }
}

/// [`is_permanent`] for an sqlx error.
pub fn sqlx_is_permanent(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Database(e) => e.code().is_some_and(|code| {
            ["22", "23", "42", "54"]
                .iter()
                .any(|class| code.starts_with(class))
                || code == "25P02"
        }),
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => false,
        _ => true,
    }
}

/// An error of a statement the inbox runs on behalf of a message: [`OutboxError::Refused`]
/// when retrying cannot help ([`is_permanent`]), else a database error to retry.
pub(crate) fn classified(error: sea_orm::DbErr) -> OutboxError {
    if is_permanent(&error) {
        OutboxError::Refused(error.to_string())
    } else {
        db_error(error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn array_literals_quote_escape_and_null() {
        assert_eq!(
            array_literal([Some("a"), None, Some(r#"q"b\s"#), Some("n\0l")]),
            r#"{"a",NULL,"q\"b\\s","n�l"}"#
        );
        assert_eq!(array_literal(Vec::<Option<&str>>::new()), "{}");
    }

    #[test]
    fn headers_round_trip_through_json_whatever_their_bytes() {
        let headers = vec![
            ("event_id".to_owned(), b"abc".to_vec()),
            ("bin".to_owned(), vec![0, 255, 1]),
            ("nul\0name".to_owned(), Vec::new()),
            ("bin".to_owned(), "é".as_bytes().to_vec()),
        ];
        let json = headers_json(&headers);
        assert_eq!(headers_from_json(Some(json)).unwrap(), headers);
        assert!(headers_from_json(Some(serde_json::json!({"a": 1}))).is_err());
        assert!(
            headers_from_json(Some(serde_json::json!([{"name": "x", "value_hex": "zz"}]))).is_err()
        );
        assert_eq!(headers_from_json(None).unwrap(), Vec::new());
    }
}

#[cfg(test)]
mod classification_tests {
    use sea_orm::{DbErr, RuntimeErr};

    use super::*;

    #[test]
    fn errors_no_retry_can_fix_are_permanent_and_the_rest_transient() {
        assert!(!is_permanent(&DbErr::Conn(RuntimeErr::Internal(
            "down".into()
        ))));
        assert!(!is_permanent(&DbErr::Exec(RuntimeErr::Internal(
            "x".into()
        ))));
        assert!(!is_permanent(&DbErr::Exec(RuntimeErr::SqlxError(
            sqlx::Error::PoolTimedOut
        ))));
        assert!(is_permanent(&DbErr::Query(RuntimeErr::SqlxError(
            sqlx::Error::RowNotFound
        ))));
        assert!(is_permanent(&DbErr::Custom(
            "a row that does not decode".into()
        )));
        assert!(!sqlx_is_permanent(&sqlx::Error::Io(std::io::Error::other(
            "reset"
        ))));
        assert!(!sqlx_is_permanent(&sqlx::Error::WorkerCrashed));
        assert!(matches!(
            classified(DbErr::Custom("bad".into())),
            OutboxError::Refused(_)
        ));
        assert!(matches!(
            classified(DbErr::Conn(RuntimeErr::Internal("down".into()))),
            OutboxError::Database(_)
        ));
    }
}
