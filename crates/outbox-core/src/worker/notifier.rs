//! Waking the relay after a commit: in this process at once, in other processes through the store.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::sync::Notify;

/// Wakes the active relay, wherever it runs, from a writer in another process: stores provide
/// one (for PostgreSQL, a `pg_notify` sent after the writer's commit, outside its transaction).
pub trait RemoteWake: Send + Sync + std::fmt::Debug {
    /// Asks the active relay to claim now. Returns at once: implementations send in the
    /// background, coalescing a burst of calls into few messages.
    fn wake(&self);
}

#[derive(Debug, Default)]
struct NotifierInner {
    local: Notify,
    remote: OnceLock<Arc<dyn RemoteWake>>,
    /// This process's relay leads: the local wake-up reaches it, so no message is sent.
    leader: AtomicBool,
}

/// Wakes the relay at once after a commit, so the event is sent within milliseconds instead of
/// at the next poll. In the process whose relay leads, that costs no database work; in any
/// other process (another replica, or a writer without a relay) it also asks the store to wake
/// the active relay remotely ([`RemoteWake`], coalesced, sent outside any transaction). Cheap to
/// clone: every clone wakes the same relay.
#[derive(Debug, Clone, Default)]
pub struct RelayNotifier(Arc<NotifierInner>);

impl RelayNotifier {
    /// A notifier not yet connected to a worker (waking it does nothing useful until a worker
    /// is built with [`EventRelayWorker::with_notifier`](crate::EventRelayWorker::with_notifier)).
    pub fn new() -> Self {
        Self::default()
    }

    /// A notifier that only wakes relays in other processes through `remote`: for writers in a
    /// process that runs no relay of its own.
    pub fn remote(remote: Arc<dyn RemoteWake>) -> Self {
        let notifier = Self::default();
        let _ = notifier.0.remote.set(remote);
        notifier
    }

    /// Wakes the relay. Call it after the transaction that added events has committed; calling
    /// it before the commit only makes the relay look too early.
    pub fn notify(&self) {
        self.0.local.notify_one();
        if !self.0.leader.load(Ordering::Relaxed)
            && let Some(remote) = self.0.remote.get()
        {
            remote.wake();
        }
    }

    /// Connects the store's remote wake-up, unless one is connected already.
    pub(super) fn connect(&self, remote: Option<Arc<dyn RemoteWake>>) {
        if let Some(remote) = remote {
            let _ = self.0.remote.set(remote);
        }
    }

    /// While this process's relay leads, writers here reach it locally and send nothing remote.
    pub(super) fn set_leader(&self, leader: bool) {
        self.0.leader.store(leader, Ordering::Relaxed);
    }

    /// Wakes this process's relay only: for a stop, which other processes need not hear of.
    pub(super) fn wake_local(&self) {
        self.0.local.notify_one();
    }

    pub(super) async fn notified(&self) {
        self.0.local.notified().await;
    }
}
