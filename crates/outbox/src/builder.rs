//! Builds an [`Outbox`]: the PostgreSQL repository, the Kafka publisher and the relay, from a
//! database connection and a Kafka configuration.

use std::sync::Arc;

use outbox_core::{EventRelayWorker, EventTypeMapper, OutboxError, RelaySettings, TopicMap};
use outbox_kafka::{KafkaConfig, KafkaPublisher};
use outbox_seaorm::PostgresOutbox;
use sea_orm::DatabaseConnection;

use crate::{Error, Outbox};

/// Builds an [`Outbox`]. Every setting has a default; [`start`](Self::start) needs a Kafka
/// configuration, [`writer_only`](Self::writer_only) does not.
///
/// ```no_run
/// # use outbox::prelude::*;
/// # async fn example(db: sea_orm::DatabaseConnection) -> Result<(), outbox::Error> {
/// let outbox = Outbox::builder(db)
///     .kafka(KafkaConfig::new("127.0.0.1:9092"))
///     .topic("OrderPlaced", "orders.order.placed.v1")
///     .settings(RelaySettings::default().with_batch_size(500))
///     .start()?;
/// # Ok(()) }
/// ```
#[must_use = "a builder does nothing until `start`, `build` or `writer_only`"]
pub struct OutboxBuilder {
    db: DatabaseConnection,
    kafka: Option<KafkaConfig>,
    topics: TopicMap,
    mapper: Option<Arc<dyn EventTypeMapper>>,
    settings: RelaySettings,
    lock_key: Option<i64>,
    /// The first invalid topic given to [`topic`](Self::topic), reported when building.
    invalid: Option<OutboxError>,
}

impl std::fmt::Debug for OutboxBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxBuilder")
            .field("kafka", &self.kafka)
            .field("settings", &self.settings)
            .field("lock_key", &self.lock_key)
            .finish_non_exhaustive()
    }
}

impl OutboxBuilder {
    pub(crate) fn new(db: DatabaseConnection) -> Self {
        Self {
            db,
            kafka: None,
            topics: TopicMap::new(),
            mapper: None,
            settings: RelaySettings::default(),
            lock_key: None,
            invalid: None,
        }
    }

    /// How to reach Kafka and produce to it. No default: the relay needs it (a writer-only
    /// outbox does not).
    pub fn kafka(mut self, kafka: KafkaConfig) -> Self {
        self.kafka = Some(kafka);
        self
    }

    /// Sends events of `event_type` that carry no topic of their own to `topic`. By default
    /// every event must carry its topic
    /// ([`NewOutboxEvent::with_topic`](crate::NewOutboxEvent::with_topic)). An invalid topic
    /// name fails [`start`](Self::start) and the other build methods.
    pub fn topic(mut self, event_type: impl Into<String>, topic: impl Into<String>) -> Self {
        match std::mem::take(&mut self.topics).with(event_type, topic) {
            Ok(topics) => self.topics = topics,
            Err(e) => {
                self.invalid.get_or_insert(e);
            }
        }
        self
    }

    /// Chooses topics with a mapper of the service's own instead of [`topic`](Self::topic)'s
    /// table (which it replaces).
    pub fn mapper(mut self, mapper: Arc<dyn EventTypeMapper>) -> Self {
        self.mapper = Some(mapper);
        self
    }

    /// The relay's settings. Defaults to [`RelaySettings::default`]; its `retention` is the one
    /// place published rows' retention is set.
    pub fn settings(mut self, settings: RelaySettings) -> Self {
        self.settings = settings;
        self
    }

    /// The advisory lock key that elects one relay among the replicas. Defaults to a hash of
    /// the database's current schema, so services sharing a database in separate schemas each
    /// get their own relay.
    pub fn lock_key(mut self, key: i64) -> Self {
        self.lock_key = Some(key);
        self
    }

    fn store(&mut self) -> Result<Arc<PostgresOutbox>, Error> {
        if let Some(e) = self.invalid.take() {
            return Err(e.into());
        }
        let mapper = self
            .mapper
            .take()
            .unwrap_or_else(|| Arc::new(std::mem::take(&mut self.topics)));
        let mut store = PostgresOutbox::new(self.db.clone())?.with_mapper(mapper);
        if let Some(key) = self.lock_key {
            store = store.with_lock_key(key);
        }
        Ok(Arc::new(store))
    }

    /// Builds the outbox with its relay, without starting the relay
    /// ([`Outbox::start`] does). Fails, changing nothing, on invalid settings or topics, a
    /// refused producer property, a connection that is not PostgreSQL, or no Kafka
    /// configuration.
    pub fn build(mut self) -> Result<Outbox, Error> {
        self.settings.validate()?;
        let Some(kafka) = self.kafka.take() else {
            return Err(Error::Outbox(OutboxError::Config(
                "no Kafka configuration: call .kafka(KafkaConfig::new(..)) to run the relay, \
                 or .writer_only() for a process that only writes events"
                    .into(),
            )));
        };
        let store = self.store()?;
        let publisher = Arc::new(KafkaPublisher::new(kafka)?);
        let relay = EventRelayWorker::new(store.clone(), publisher, self.settings)?
            .with_cleanup(store.clone());
        Ok(Outbox::from_parts(self.db, store, Some(Arc::new(relay))))
    }

    /// Builds the outbox and starts its relay in the background (needs a Tokio runtime).
    pub fn start(self) -> Result<Outbox, Error> {
        let outbox = self.build()?;
        outbox.start()?;
        Ok(outbox)
    }

    /// Builds an outbox that only writes events, for a process that runs no relay (the relay
    /// runs in another replica, or as the `outbox relay` sidecar). Its commits wake the active
    /// relay with a coalesced `pg_notify` sent outside the transaction. Relay settings and the
    /// Kafka configuration are not used.
    pub fn writer_only(mut self) -> Result<Outbox, Error> {
        let store = self.store()?;
        Ok(Outbox::from_parts(self.db, store, None))
    }
}
