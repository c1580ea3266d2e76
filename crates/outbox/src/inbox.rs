//! The consumer side: an inbox that applies each consumed event exactly once, on an
//! [`OutboxTransaction`], so the business change, the inbox row and the events it causes commit
//! together.

use std::sync::Arc;

use async_trait::async_trait;
use outbox_core::{
    HandlerError, InboxEntry, InboxHandler, InboxMessage, InboxSettings, InboxStatus, InboxStore,
    InboxWorker, OutboxError, RejectedMessage, Replayed,
};
use outbox_kafka::{KafkaConsumerConfig, KafkaSource};
use outbox_seaorm::PostgresInbox;
use sea_orm::DbErr;
use uuid::Uuid;

use crate::{Error, Outbox, OutboxTransaction};

impl From<Error> for HandlerError {
    /// Classifies an error of a handler's database work, its own statements' and the outbox's
    /// alike ([`outbox_seaorm::is_permanent`]): data exceptions (SQLSTATE class 22), integrity
    /// violations (23), statements that cannot run (42), program limits (54), an aborted
    /// transaction (25P02) and rows that do not decode are permanent, since retrying the same
    /// message repeats them; connections, deadlocks, serialization failures and a restarting
    /// server are transient.
    fn from(error: Error) -> Self {
        let permanent = match &error {
            Error::Database(e) => outbox_seaorm::is_permanent(e),
            // The outbox's own statements (`txn.add`) fail the same ways.
            Error::Outbox(OutboxError::Database(e)) => {
                if let Some(e) = e.downcast_ref::<DbErr>() {
                    outbox_seaorm::is_permanent(e)
                } else if let Some(e) = e.downcast_ref::<sea_orm::sqlx::Error>() {
                    outbox_seaorm::sqlx_is_permanent(e)
                } else {
                    false
                }
            }
            Error::Outbox(e) => !e.is_retryable(),
        };
        if permanent {
            HandlerError::permanent(error.to_string())
        } else {
            HandlerError::transient(error.to_string())
        }
    }
}

/// The inbox store the facade's worker runs on: PostgreSQL's `event_inbox`, with each batch on
/// an [`OutboxTransaction`] of the service's outbox, so handlers add events with
/// [`OutboxTransaction::add`] and the commit wakes the relay.
#[derive(Debug)]
pub struct OutboxInboxStore {
    outbox: Outbox,
    inbox: PostgresInbox,
}

impl OutboxInboxStore {
    /// The store of `outbox`'s database (`event_inbox` must be migrated: [`crate::migrate`]).
    pub fn new(outbox: &Outbox) -> Result<Self, Error> {
        Ok(Self {
            inbox: PostgresInbox::new(outbox.connection().clone())?,
            outbox: outbox.clone(),
        })
    }

    /// The PostgreSQL inbox underneath.
    pub fn inbox(&self) -> &PostgresInbox {
        &self.inbox
    }
}

#[async_trait]
impl InboxStore for OutboxInboxStore {
    type Transaction = OutboxTransaction;

    async fn begin(&self) -> Result<OutboxTransaction, OutboxError> {
        Ok(self.outbox.begin().await?)
    }

    async fn record(
        &self,
        txn: &OutboxTransaction,
        entries: &[InboxEntry],
    ) -> Result<Vec<bool>, OutboxError> {
        self.inbox.record(txn, entries).await
    }

    async fn set_outcome(
        &self,
        txn: &OutboxTransaction,
        consumer: &str,
        event_id: Uuid,
        outcome: &str,
    ) -> Result<(), OutboxError> {
        self.inbox
            .set_outcome(txn, consumer, event_id, outcome)
            .await
    }

    async fn commit(&self, txn: OutboxTransaction) -> Result<(), OutboxError> {
        if let Err(e) = self.inbox.ensure_not_aborted(&txn).await {
            let _ = txn.rollback().await;
            return Err(e);
        }
        txn.commit().await.map_err(|e| match e {
            Error::Database(e) if outbox_seaorm::is_permanent(&e) => {
                OutboxError::Refused(e.to_string())
            }
            other => other.into(),
        })
    }

    async fn rollback(&self, txn: OutboxTransaction) -> Result<(), OutboxError> {
        Ok(txn.rollback().await?)
    }

    async fn reject(
        &self,
        entry: &InboxEntry,
        message: &InboxMessage,
        error: &str,
    ) -> Result<bool, OutboxError> {
        InboxStore::reject(&self.inbox, entry, message, error).await
    }

    async fn rejected(
        &self,
        consumer: Option<&str>,
        limit: u64,
    ) -> Result<Vec<RejectedMessage>, OutboxError> {
        InboxStore::rejected(&self.inbox, consumer, limit).await
    }

    async fn take_rejected(
        &self,
        txn: &OutboxTransaction,
        consumer: &str,
        event_id: Uuid,
    ) -> Result<Option<InboxMessage>, OutboxError> {
        self.inbox.take_rejected(txn, consumer, event_id).await
    }

    async fn update_rejected(
        &self,
        consumer: &str,
        event_id: Uuid,
        error: &str,
    ) -> Result<bool, OutboxError> {
        InboxStore::update_rejected(&self.inbox, consumer, event_id, error).await
    }

    async fn delete_expired(
        &self,
        older_than: std::time::Duration,
        limit: u64,
    ) -> Result<u64, OutboxError> {
        InboxStore::delete_expired(&self.inbox, older_than, limit).await
    }
}

type Worker = InboxWorker<OutboxInboxStore, KafkaSource>;

/// A handler with its consumer name and topics.
type Route = (
    String,
    Vec<String>,
    Arc<dyn InboxHandler<OutboxTransaction>>,
);

/// Builds an [`Inbox`]: [`Outbox::inbox`] starts it.
///
/// ```no_run
/// # use std::sync::Arc;
/// # use outbox::prelude::*;
/// # use outbox::{Handled, HandlerError, InboxHandler, InboxMessage, KafkaConsumerConfig};
/// struct OrderPlaced;
///
/// #[async_trait::async_trait]
/// impl InboxHandler<OutboxTransaction> for OrderPlaced {
///     async fn handle(&self, txn: &OutboxTransaction, message: &InboxMessage)
///         -> Result<Handled, HandlerError> {
///         let order: serde_json::Value = message.json()?;
///         txn.add(NewOutboxEvent::json("invoice", "i-1", "InvoiceDue", &order)?).await?;
///         Ok(Handled::applied())
///     }
/// }
///
/// # async fn example(outbox: Outbox) -> Result<(), outbox::Error> {
/// let inbox = outbox
///     .inbox(KafkaConsumerConfig::new("127.0.0.1:9092", "billing"))
///     .handler("billing.order-placed", ["orders.order.placed.v1"], OrderPlaced)
///     .start()?;
/// // ... on shutdown:
/// inbox.stop().await?;
/// # Ok(()) }
/// ```
#[must_use = "an inbox builder does nothing until `build` or `start`"]
pub struct InboxBuilder {
    outbox: Outbox,
    kafka: KafkaConsumerConfig,
    settings: InboxSettings,
    handlers: Vec<Route>,
}

impl std::fmt::Debug for InboxBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InboxBuilder")
            .field("kafka", &self.kafka)
            .field("settings", &self.settings)
            .field(
                "handlers",
                &self
                    .handlers
                    .iter()
                    .map(|(c, t, _)| (c, t))
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

impl InboxBuilder {
    pub(crate) fn new(outbox: Outbox, kafka: KafkaConsumerConfig) -> Self {
        Self {
            outbox,
            kafka,
            settings: InboxSettings::default(),
            handlers: Vec::new(),
        }
    }

    /// Handles the messages of `topics` with `handler`, recorded in the inbox as `consumer`
    /// (duplicates are dropped per consumer and event id). A topic has exactly one handler.
    pub fn handler<I, T>(
        mut self,
        consumer: impl Into<String>,
        topics: I,
        handler: impl InboxHandler<OutboxTransaction> + 'static,
    ) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.handlers.push((
            consumer.into(),
            topics.into_iter().map(Into::into).collect(),
            Arc::new(handler),
        ));
        self
    }

    /// Like [`handler`](Self::handler), for a handler shared already.
    pub fn shared_handler<I, T>(
        mut self,
        consumer: impl Into<String>,
        topics: I,
        handler: Arc<dyn InboxHandler<OutboxTransaction>>,
    ) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.handlers.push((
            consumer.into(),
            topics.into_iter().map(Into::into).collect(),
            handler,
        ));
        self
    }

    /// The worker's settings (batch size, backoff, retention, shutdown timeout). Defaults to
    /// [`InboxSettings::default`].
    pub fn settings(mut self, settings: InboxSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Builds the inbox and subscribes its consumer, without consuming yet
    /// ([`Inbox::start`] does). Fails, changing nothing, on invalid settings, no handler, a
    /// topic with two handlers, or a refused consumer property.
    pub fn build(self) -> Result<Inbox, Error> {
        let store = Arc::new(OutboxInboxStore::new(&self.outbox)?);
        let mut topics: Vec<String> = self
            .handlers
            .iter()
            .flat_map(|(_, topics, _)| topics.iter().cloned())
            .collect();
        topics.sort();
        topics.dedup();
        if topics.is_empty() {
            return Err(Error::Outbox(OutboxError::Config(
                "the inbox has no handler: add one with .handler(consumer, topics, handler)".into(),
            )));
        }
        // Subscribing does not join the group yet (that happens on the first read), so a
        // refused handler below leaves nothing behind.
        let source = Arc::new(KafkaSource::new(self.kafka, &topics)?);
        let mut worker = InboxWorker::new(store.clone(), source.clone(), self.settings)?;
        for (consumer, topics, handler) in self.handlers {
            worker = worker.handler(&consumer, topics, handler)?;
        }
        Ok(Inbox(Arc::new(InboxInner {
            worker,
            source,
            store,
        })))
    }

    /// Builds the inbox and starts consuming in the background (needs a Tokio runtime).
    pub fn start(self) -> Result<Inbox, Error> {
        let inbox = self.build()?;
        inbox.start()?;
        Ok(inbox)
    }
}

/// The consumer side of a service: Kafka messages applied exactly once by the service's
/// handlers, each on an [`OutboxTransaction`] that also records the message in `event_inbox`.
///
/// For each batch of messages: one transaction records their event ids (a duplicate applies
/// nothing), runs the handlers in order and commits; then the offsets are committed. A failure
/// is isolated by running the batch again one message per transaction: a transient one
/// (database, broker) is retried with capped backoff without moving the offset past it; a
/// permanent one (unparsable, refused) is recorded `rejected` with its bytes and skipped, for an
/// operator to [`replay`](Self::replay). Cheap to clone.
#[derive(Clone, Debug)]
pub struct Inbox(Arc<InboxInner>);

#[derive(Debug)]
struct InboxInner {
    worker: Worker,
    source: Arc<KafkaSource>,
    store: Arc<OutboxInboxStore>,
}

impl Inbox {
    /// Starts consuming in the background. Fails if it runs already.
    pub fn start(&self) -> Result<(), Error> {
        Ok(self.0.worker.start()?)
    }

    /// Stops consuming: the batch in flight is finished and its offsets committed (or, past the
    /// shutdown timeout, abandoned to be delivered again), then the consumer commits and leaves
    /// its group so its partitions move at once.
    pub async fn stop(&self) -> Result<(), Error> {
        let stopped = self.0.worker.stop().await;
        self.0.source.close().await;
        Ok(stopped?)
    }

    /// What the inbox is doing, for health checks.
    pub fn status(&self) -> InboxStatus {
        self.0.worker.status()
    }

    /// The topics it consumes.
    pub fn topics(&self) -> &[String] {
        self.0.source.topics()
    }

    /// The partitions this replica consumes now.
    pub fn assignment(&self) -> Vec<(String, i32)> {
        self.0.source.assignment()
    }

    /// Rejected messages, oldest first (all consumers' with `None`).
    pub async fn rejected(
        &self,
        consumer: Option<&str>,
        limit: u64,
    ) -> Result<Vec<RejectedMessage>, Error> {
        Ok(InboxStore::rejected(self.0.store.as_ref(), consumer, limit).await?)
    }

    /// Runs a rejected message again through its handler, once its cause is fixed.
    pub async fn replay(&self, consumer: &str, event_id: Uuid) -> Result<Replayed, Error> {
        Ok(self.0.worker.replay(consumer, event_id).await?)
    }

    /// The worker underneath.
    pub fn worker(&self) -> &InboxWorker<OutboxInboxStore, KafkaSource> {
        &self.0.worker
    }
}

impl Outbox {
    /// Starts building this service's inbox, which consumes with `kafka`'s consumer group and
    /// applies each message on an [`OutboxTransaction`] of this outbox.
    pub fn inbox(&self, kafka: KafkaConsumerConfig) -> InboxBuilder {
        InboxBuilder::new(self.clone(), kafka)
    }
}
