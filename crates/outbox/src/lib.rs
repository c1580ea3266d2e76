#![doc = include_str!("../README.md")]
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod builder;
mod error;
mod inbox;
mod transaction;

use std::sync::Arc;

pub use builder::OutboxBuilder;
pub use error::Error;
pub use inbox::{Inbox, InboxBuilder, OutboxInboxStore};
pub use transaction::OutboxTransaction;

pub use outbox_core::{
    EventEnvelope, EventId, EventTypeMapper, Handled, HandlerError, InboxHandler, InboxMessage,
    InboxSettings, InboxStatus, NewOutboxEvent, OutboxError, OutboxStats, RejectedMessage,
    RelayNotifier, RelaySettings, RelayStatus, Replayed, TopicMap,
};
pub use outbox_kafka::{KafkaConfig, KafkaConsumerConfig};
pub use outbox_seaorm::{OutboxMigrator, PostgresInbox, PostgresOutbox};

/// The building blocks, for services that assemble the outbox themselves or need a capability
/// the facade does not cover (dead-letter administration, custom publishers, tests).
pub mod parts {
    pub use outbox_core as core;
    pub use outbox_kafka as kafka;
    pub use outbox_seaorm as seaorm;
}

/// What a service needs to write events and run the relay: `use outbox::prelude::*;`.
///
/// It also brings SeaORM's `ConnectionTrait` and `TransactionTrait` methods into scope
/// (unnamed), so statements run on an [`OutboxTransaction`] without another import.
pub mod prelude {
    pub use crate::{
        Error, EventEnvelope, Handled, HandlerError, InboxHandler, InboxMessage, KafkaConfig,
        KafkaConsumerConfig, NewOutboxEvent, Outbox, OutboxTransaction, RelaySettings,
    };
    pub use sea_orm::{ConnectionTrait as _, TransactionTrait as _};
}

use outbox_core::EventRelayWorker;
use sea_orm::{DatabaseConnection, DatabaseTransaction, TransactionTrait};
use sea_orm_migration::MigratorTrait;

/// Creates or upgrades the `event_outbox` and `event_inbox` tables on `db` (all of
/// [`OutboxMigrator`]'s migrations not applied yet). Services with a migrator of their own add
/// [`outbox_seaorm::CreateEventOutbox`], [`outbox_seaorm::AddCommitHorizon`],
/// [`outbox_seaorm::CreateEventInbox`] and [`outbox_seaorm::CompressPayloadsWithLz4`] to it
/// instead;
/// services on other migration tools apply the plain SQL of [`outbox_seaorm::migration`].
pub async fn migrate(db: &DatabaseConnection) -> Result<(), Error> {
    OutboxMigrator::up(db, None).await?;
    Ok(())
}

/// The outbox of one service: writes events on the service's transactions and, unless built
/// writer-only, runs the relay that publishes them to Kafka.
///
/// Build it with [`Outbox::builder`]. Cheap to clone: every clone is the same outbox.
#[derive(Clone, Debug)]
pub struct Outbox(Arc<Inner>);

#[derive(Debug)]
struct Inner {
    db: DatabaseConnection,
    store: Arc<PostgresOutbox>,
    relay: Option<Arc<EventRelayWorker>>,
    notifier: RelayNotifier,
}

impl Outbox {
    /// Starts building the outbox of the service whose database is `db` (a PostgreSQL
    /// connection pool; the outbox shares it).
    pub fn builder(db: DatabaseConnection) -> OutboxBuilder {
        OutboxBuilder::new(db)
    }

    fn from_parts(
        db: DatabaseConnection,
        store: Arc<PostgresOutbox>,
        relay: Option<Arc<EventRelayWorker>>,
    ) -> Self {
        let notifier = match &relay {
            Some(relay) => relay.notifier(),
            None => store.wake_notifier(),
        };
        Self(Arc::new(Inner {
            db,
            store,
            relay,
            notifier,
        }))
    }

    /// Begins a transaction on the service's database. Write the business change and its events
    /// on it; [`OutboxTransaction::commit`] commits both and wakes the relay.
    pub async fn begin(&self) -> Result<OutboxTransaction, Error> {
        let txn = self.0.db.begin().await?;
        Ok(self.transaction(txn))
    }

    /// Wraps a transaction the service began itself (for example with an isolation level of its
    /// choosing), so events can be added to it and its commit wakes the relay.
    pub fn transaction(&self, txn: DatabaseTransaction) -> OutboxTransaction {
        OutboxTransaction::new(txn, self.0.store.clone(), self.0.notifier.clone())
    }

    /// Starts the relay in the background (needs a Tokio runtime). Every replica starts it; the
    /// one holding the leadership lock publishes, the others stand by. Fails if the relay runs
    /// already, or if this outbox was built writer-only.
    pub fn start(&self) -> Result<(), Error> {
        match &self.0.relay {
            Some(relay) => Ok(relay.start()?),
            None => Err(Error::Outbox(outbox_core::OutboxError::Config(
                "this outbox was built writer-only: it runs no relay".into(),
            ))),
        }
    }

    /// Stops the relay: it stops claiming, finishes the batch in flight (sent, acknowledged by
    /// Kafka and in the database), flushes the producer and gives up the leadership. Does
    /// nothing for a writer-only outbox or a relay that is not running.
    pub async fn stop(&self) -> Result<(), Error> {
        if let Some(relay) = &self.0.relay {
            relay.stop().await?;
        }
        Ok(())
    }

    /// What the relay is doing (for health checks); `None` for a writer-only outbox.
    pub fn status(&self) -> Option<RelayStatus> {
        self.0.relay.as_ref().map(|relay| relay.status())
    }

    /// The outbox's backlog (pending, oldest pending age, dead letters, retries, the commit
    /// horizon's wait), read from the database now.
    pub async fn stats(&self) -> Result<OutboxStats, Error> {
        Ok(outbox_core::RelayStore::stats(self.0.store.as_ref()).await?)
    }

    /// The handle that wakes the relay after a commit. [`OutboxTransaction::commit`] calls it;
    /// code that commits transactions of its own calls [`RelayNotifier::notify`] afterwards.
    pub fn notifier(&self) -> RelayNotifier {
        self.0.notifier.clone()
    }

    /// The PostgreSQL repository underneath: dead-letter administration
    /// ([`DeadLetterStore`](outbox_core::DeadLetterStore)), and adding events to a connection
    /// that is not a transaction.
    pub fn repository(&self) -> &Arc<PostgresOutbox> {
        &self.0.store
    }

    /// The relay worker underneath; `None` for a writer-only outbox.
    pub fn relay(&self) -> Option<&Arc<EventRelayWorker>> {
        self.0.relay.as_ref()
    }

    /// The service's database connection pool.
    pub fn connection(&self) -> &DatabaseConnection {
        &self.0.db
    }
}

/// The repository README's usage block, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct RepositoryReadme;
