//! Wake-ups across processes: writers `NOTIFY` on [`WAKE_CHANNEL`] after their commit, the
//! leader `LISTEN`s on it between polls. Both go through sqlx with the pool's settings:
//! `pg_notify` on a connection of the sender's own, `LISTEN` on a [`PgListener`] that
//! reconnects by itself.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::Duration;

use outbox_core::RemoteWake;
use sea_orm::sqlx::{self, ConnectOptions, PgConnection, postgres::PgListener};
use tokio::sync::Mutex;
use tracing::debug;

/// The channel writers notify after their commit, and the leader listens on.
const WAKE_CHANNEL: &str = "outbox_wake";

/// What a writer in another process runs after its commit to wake the relay (any language:
/// one statement, outside the business transaction): `SELECT pg_notify('outbox_wake', '')`.
pub const WAKE_SQL: &str = include_str!("../sql/wake.sql");

/// Commits within this long of a notification share the next one, after a quiet spell.
const WAKE_WINDOW: Duration = Duration::from_millis(1);

/// The longest window: while commits keep coming, each window doubles up to this. Measured on
/// two cores (`scripts/bench.sh --only remote`): with 1 ms windows, a writer committing as fast
/// as it can paid about 0.1 ms per transaction and 8-12% of its throughput; with windows growing
/// to 4 ms, about half that. The price: a relay kept busy by another process's writers waits up
/// to this long for its next wake-up (8 ms cost less still, but added more to that latency).
const WAKE_WINDOW_MAX: Duration = Duration::from_millis(4);

/// The repository's side of wake-ups: the sender for writers in this process, and the leader's
/// listener.
pub(crate) struct Wake {
    sender: PgWake,
    /// The leader's `LISTEN` connection for wake-ups from other processes.
    listener: Mutex<Option<PgListener>>,
}

impl Wake {
    pub(crate) fn new(pool: sqlx::PgPool) -> Self {
        Self {
            sender: PgWake::new(pool),
            listener: Mutex::new(None),
        }
    }

    /// How writers in this process wake the relay in another.
    pub(crate) fn remote(&self) -> Arc<dyn RemoteWake> {
        Arc::new(self.sender.clone())
    }

    /// Closes the listener, when the leadership is given up.
    pub(crate) async fn stop_listening(&self) {
        self.listener.lock().await.take();
    }

    /// [`RelayStore::wait_for_wake_up`](outbox_core::RelayStore::wait_for_wake_up), listening
    /// on a connection from `pool`.
    pub(crate) async fn wait_for_wake_up(&self, pool: &sqlx::PgPool) {
        let mut listener = self.listener.lock().await;
        loop {
            let connected = match listener.take() {
                Some(connected) => connected,
                None => match listen(pool).await {
                    Ok(connected) => connected,
                    Err(error) => {
                        debug!(error = %error, "outbox relay cannot listen for wake-ups; it polls");
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                },
            };
            let connected = listener.insert(connected);
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
}

/// A connection listening on [`WAKE_CHANNEL`].
async fn listen(pool: &sqlx::PgPool) -> Result<PgListener, sqlx::Error> {
    let mut listener = PgListener::connect_with(pool).await?;
    listener.listen(WAKE_CHANNEL).await?;
    Ok(listener)
}

/// Wakes the active relay from writers in this process when it runs elsewhere: `pg_notify` in a
/// transaction of its own (never inside the writer's, where a `NOTIFY` would take a
/// database-wide lock at commit), sent in the background and coalesced: the first commit after
/// a quiet spell is notified at once, and while commits keep coming they share one notification
/// per window, which grows from 1 to 4 ms (at most about 250 notifications a second per process).
///
/// The notifications go on one connection of the sender's own, opened at the first one and
/// kept: no pool checkout (and its liveness check) per notification, and no pooled connection
/// taken from the writers. It runs with `synchronous_commit` off: a notification's commit does
/// not wait for its WAL flush, nor make writers' commits queue behind that flush. A notification
/// lost in a crash costs nothing the relay's poll does not cover.
#[derive(Debug, Clone)]
struct PgWake(Arc<WakeSender>);

#[derive(Debug)]
struct WakeSender {
    pool: sqlx::PgPool,
    /// A sender task runs.
    running: AtomicBool,
    /// A commit happened since the sender's last notification.
    dirty: AtomicBool,
    /// The sender's connection, once opened (only the running sender task uses it).
    conn: Mutex<Option<PgConnection>>,
}

impl PgWake {
    fn new(pool: sqlx::PgPool) -> Self {
        Self(Arc::new(WakeSender {
            pool,
            running: Default::default(),
            dirty: Default::default(),
            conn: Mutex::new(None),
        }))
    }
}

impl WakeSender {
    async fn send_while_dirty(self: Arc<Self>) {
        let mut window = WAKE_WINDOW;
        let mut conn = self.conn.lock().await;
        loop {
            self.dirty.store(false, SeqCst);
            if let Err(error) = self.notify(&mut conn).await {
                debug!(error = %error, "outbox wake-up notification not sent; the relay polls");
            }
            tokio::time::sleep(window).await;
            if self.dirty.load(SeqCst) {
                window = (window * 2).min(WAKE_WINDOW_MAX);
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

impl WakeSender {
    /// Sends one notification on `conn`, opening it when it is not open. A connection that
    /// fails is dropped and the notification sent once more on a new one (the server may have
    /// restarted since the last).
    async fn notify(&self, conn: &mut Option<PgConnection>) -> Result<(), sqlx::Error> {
        if let Some(open) = conn.as_mut()
            && sqlx::query(WAKE_SQL).execute(&mut *open).await.is_ok()
        {
            return Ok(());
        }
        *conn = None;
        let mut open = self.connect().await?;
        sqlx::query(WAKE_SQL).execute(&mut open).await?;
        *conn = Some(open);
        Ok(())
    }

    /// A connection with the pool's settings, committing without waiting for the WAL flush.
    async fn connect(&self) -> Result<PgConnection, sqlx::Error> {
        let mut conn = self.pool.connect_options().connect().await?;
        sqlx::query("SET synchronous_commit = off")
            .execute(&mut conn)
            .await?;
        Ok(conn)
    }
}

impl RemoteWake for PgWake {
    fn wake(&self) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_wake_statement_notifies_the_channel_the_leader_listens_on() {
        assert_eq!(
            WAKE_SQL.trim(),
            format!("SELECT pg_notify('{WAKE_CHANNEL}', '')")
        );
    }
}
