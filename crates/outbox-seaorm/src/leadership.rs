//! The relay's leadership: one session-level advisory lock, held on a connection of the
//! relay's own, elects the active relay; every claim and acknowledgement runs on that session
//! ([`Leadership::on_session`]), so a relay that lost it can acknowledge nothing.
//!
//! Statements here go through sqlx on that detached connection. Those that check which backend
//! answers use the simple query protocol (one message, one round trip), so that even a pooler in
//! transaction mode sends each to a single backend and the check means something.

use std::time::{Duration, Instant};

use outbox_core::OutboxError;
use sea_orm::sqlx::{self, PgConnection, Row, postgres::PgRow};
use tokio::sync::Mutex;
use tracing::{error, info, warn};

use crate::outbox::sqlx_error;

/// Settings of the leadership session. Server-side keepalives and a user timeout end the session
/// (releasing the lock) within about 20 s when the relay's host vanishes, instead of after the
/// operating system's two-hour keepalive default; a statement timeout ends a stuck statement.
const SESSION_SETUP: &str = include_str!("../sql/session_setup.sql");

/// The settings [`SESSION_SETUP`] sets, as the server sees them.
const SESSION_SETTINGS: &str = include_str!("../sql/session_settings.sql");

/// Longest the relay waits for any statement on its leadership session: past the server's
/// statement timeout, for a server that stopped answering altogether.
const SESSION_CALL_TIMEOUT: Duration = Duration::from_secs(45);

/// How often a leader checks that its statements still reach the backend holding the lock.
const BACKEND_CHECK_INTERVAL: Duration = Duration::from_secs(5);

const POOLER_DETECTED: &str = "the relay's statements reach different PostgreSQL backends: a \
connection pooler in transaction or statement mode sits between the relay and PostgreSQL, and \
session advisory locks cannot elect a single relay through it. Point the relay's database URL at \
PostgreSQL directly (or at a pooler in session mode)";

/// The session that holds (or tries for) the relay leadership.
pub(crate) struct Session {
    pub(crate) conn: PgConnection,
    leader: bool,
    /// The backend the lock was taken on.
    pid: i32,
    /// When that was last confirmed (`None`: not yet).
    checked_at: Option<Instant>,
}

/// The leadership session and how it is checked.
pub(crate) struct Leadership {
    session: Mutex<Option<Session>>,
    /// The advisory lock's key; `None`: a hash of the current schema's name.
    pub(crate) lock_key: Option<i64>,
    pub(crate) backend_check_interval: Duration,
    pub(crate) call_timeout: Duration,
}

/// A statement on the leadership session (boxed, so the trait's futures stay `Send`).
pub(crate) type SessionFuture<'a, T> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<T, sqlx::Error>> + Send + 'a>>;

impl Leadership {
    pub(crate) fn new() -> Self {
        Self {
            session: Mutex::new(None),
            lock_key: None,
            backend_check_interval: BACKEND_CHECK_INTERVAL,
            call_timeout: SESSION_CALL_TIMEOUT,
        }
    }

    /// Runs `f` on the leadership session. Any error closes the session (releasing the lock):
    /// a session that failed once is not trusted to still hold it.
    pub(crate) async fn on_session<T, F>(&self, f: F) -> Result<T, OutboxError>
    where
        F: for<'c> FnOnce(&'c mut Session) -> SessionFuture<'c, T>,
    {
        let mut guard = self.session.lock().await;
        let Some(session) = guard.as_mut().filter(|s| s.leader) else {
            return Err(OutboxError::LeadershipLost);
        };
        let timeout = self.call_timeout;
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

    /// See [`PostgresOutbox::session_settings`](crate::PostgresOutbox::session_settings).
    pub(crate) async fn session_settings(&self) -> Result<Vec<(String, String)>, OutboxError> {
        self.on_session(|session| {
            Box::pin(
                sqlx::query_as::<_, (String, String)>(SESSION_SETTINGS)
                    .fetch_all(&mut session.conn),
            )
        })
        .await
    }

    /// [`RelayStore::acquire_leadership`](outbox_core::RelayStore::acquire_leadership), with a
    /// new session from `pool` when there is none.
    pub(crate) async fn acquire(&self, pool: &sqlx::PgPool) -> Result<bool, OutboxError> {
        let mut guard = self.session.lock().await;
        let session = match guard.take() {
            Some(session) => session,
            None => {
                let mut conn = pool.acquire().await.map_err(sqlx_error)?.detach();
                set_up(&mut conn).await.map_err(sqlx_error)?;
                Session {
                    conn,
                    leader: false,
                    pid: 0,
                    checked_at: None,
                }
            }
        };
        let session = guard.insert(session);
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
                session.checked_at = Some(Instant::now());
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

    /// [`RelayStore::release_leadership`](outbox_core::RelayStore::release_leadership).
    pub(crate) async fn release(&self) -> Result<(), OutboxError> {
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

/// Prepares a new leadership session (see [`SESSION_SETUP`]).
fn set_up(conn: &mut PgConnection) -> SessionFuture<'_, ()> {
    Box::pin(async move {
        simple(conn, SESSION_SETUP.to_owned()).await?;
        Ok(())
    })
}
