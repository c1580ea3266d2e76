//! A [shaku] module that wires the outbox into a service: the PostgreSQL repository
//! ([`OutboxRepository`]), the Kafka publisher ([`OutboxPublisher`]) and the relay worker
//! ([`OutboxRelayWorker`]), built from one [`OutboxSettings`].
//!
//! Use [`OutboxModule`] as a submodule of the service's own module, so the service's components
//! get the repository injected and write their events through it:
//!
//! ```no_run
//! use std::sync::Arc;
//! use outbox_core::NewOutboxEvent;
//! use outbox_di::{OutboxModule, OutboxPublisher, OutboxRelayWorker, OutboxRepository, OutboxSettings};
//! use sea_orm::{DatabaseTransaction, TransactionTrait};
//! use shaku::{Component, HasComponent, Interface, module};
//!
//! trait Orders: Interface {
//!     fn outbox(&self) -> &dyn OutboxRepository;
//! }
//!
//! #[derive(Component)]
//! #[shaku(interface = Orders)]
//! struct OrdersImpl {
//!     #[shaku(inject)]
//!     outbox: Arc<dyn OutboxRepository>,
//! }
//!
//! impl Orders for OrdersImpl {
//!     fn outbox(&self) -> &dyn OutboxRepository {
//!         self.outbox.as_ref()
//!     }
//! }
//!
//! module! {
//!     OrdersModule {
//!         components = [OrdersImpl],
//!         providers = [],
//!         use OutboxModule {
//!             components = [dyn OutboxRepository, dyn OutboxPublisher, dyn OutboxRelayWorker],
//!             providers = []
//!         }
//!     }
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let db = sea_orm::Database::connect("postgres://outbox:outbox@127.0.0.1:5432/outbox").await?;
//! let outbox = OutboxModule::from_settings(db.clone(), OutboxSettings::default())?;
//! let module = OrdersModule::builder(Arc::new(outbox)).build();
//!
//! let relay: Arc<dyn OutboxRelayWorker> = module.resolve();
//! relay.start()?;
//!
//! let orders: &dyn Orders = module.resolve_ref();
//! let txn = db.begin().await?;
//! let event = NewOutboxEvent::json("order", "o-1", "OrderPlaced", &serde_json::json!({}))?
//!     .with_topic("orders.v1");
//! orders.outbox().add_event(&txn, event).await?;
//! txn.commit().await?;
//! relay.notifier().notify();
//!
//! relay.stop().await?;
//! # Ok(()) }
//! ```
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

use std::sync::Arc;

use outbox_core::{
    DeadLetterStore, EventRelayWorker, EventTypeMapper, OutboxCleanup, OutboxError, OutboxWriter,
    RelaySettings, RelayStore, TopicMap,
};
pub use outbox_core::{EventPublisher, OutboxRelay};
use outbox_kafka::{KafkaConfig, KafkaPublisher};
use outbox_seaorm::PostgresOutbox;
use sea_orm::{DatabaseConnection, DatabaseTransaction};
use shaku::{Component, HasComponent, Interface, Module, ModuleBuildContext, module};

/// Everything the outbox needs from a service, in one place.
#[derive(Clone)]
pub struct OutboxSettings {
    /// The relay worker's settings (including `retention`). Defaults to
    /// `RelaySettings::default()`.
    pub relay: RelaySettings,
    /// How to reach and produce to Kafka. Defaults to `127.0.0.1:9092` with the publisher's
    /// defaults.
    pub kafka: KafkaConfig,
    /// Chooses topics for events written without one. Defaults to an empty [`TopicMap`] (every
    /// event carries its topic).
    pub mapper: Arc<dyn EventTypeMapper>,
    /// The leadership advisory lock key. Defaults to `None`: a hash of the current schema.
    pub lock_key: Option<i64>,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        Self {
            relay: RelaySettings::default(),
            kafka: KafkaConfig::default(),
            mapper: Arc::new(TopicMap::new()),
            lock_key: None,
        }
    }
}

impl std::fmt::Debug for OutboxSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutboxSettings")
            .field("relay", &self.relay)
            .field("kafka", &self.kafka)
            .field("lock_key", &self.lock_key)
            .finish_non_exhaustive()
    }
}

impl OutboxSettings {
    /// Sets the relay settings.
    pub fn with_relay(mut self, relay: RelaySettings) -> Self {
        self.relay = relay;
        self
    }

    /// Sets the Kafka configuration.
    pub fn with_kafka(mut self, kafka: KafkaConfig) -> Self {
        self.kafka = kafka;
        self
    }

    /// Sets the event type mapper.
    pub fn with_mapper(mut self, mapper: Arc<dyn EventTypeMapper>) -> Self {
        self.mapper = mapper;
        self
    }

    /// Sets the leadership lock key.
    pub fn with_lock_key(mut self, key: Option<i64>) -> Self {
        self.lock_key = key;
        self
    }
}

/// The repository as the module provides it: the writer (on a transaction or on the pool), the
/// relay store, dead-letter administration and cleanup, in one interface.
///
/// Pass it where a narrower capability is wanted: `Arc<dyn OutboxRepository>` coerces to
/// `Arc<dyn RelayStore>`, `Arc<dyn DeadLetterStore>` and the others.
pub trait OutboxRepository:
    OutboxWriter<DatabaseTransaction>
    + OutboxWriter<DatabaseConnection>
    + RelayStore
    + DeadLetterStore
    + OutboxCleanup
    + Interface
{
}

impl OutboxRepository for PostgresOutbox {}

/// The publisher as the module provides it ([`EventPublisher`] as a shaku interface);
/// `Arc<dyn OutboxPublisher>` coerces to `Arc<dyn EventPublisher>`.
pub trait OutboxPublisher: EventPublisher + Interface {}

impl<T: EventPublisher + 'static> OutboxPublisher for T {}

/// The relay as the module provides it ([`OutboxRelay`] as a shaku interface): start it with the
/// service, stop it on shutdown, hand its notifier to writers.
pub trait OutboxRelayWorker: OutboxRelay + Interface {}

impl<T: OutboxRelay + 'static> OutboxRelayWorker for T {}

/// The module's interface, for services that take the outbox as `use dyn OutboxModuleInterface`.
pub trait OutboxModuleInterface:
    HasComponent<dyn OutboxRepository>
    + HasComponent<dyn OutboxPublisher>
    + HasComponent<dyn OutboxRelayWorker>
{
}

/// Provides [`OutboxRepository`] (a [`PostgresOutbox`]).
#[derive(Debug)]
pub struct RepositoryComponent;

/// The repository, built by [`OutboxModule::from_settings`].
#[derive(Debug, Default)]
pub struct RepositoryParameters {
    /// The repository to provide.
    pub repository: Option<PostgresOutbox>,
}

impl<M: Module> Component<M> for RepositoryComponent {
    type Interface = dyn OutboxRepository;
    type Parameters = RepositoryParameters;

    fn build(_: &mut ModuleBuildContext<M>, params: Self::Parameters) -> Box<dyn OutboxRepository> {
        match params.repository {
            Some(repository) => Box::new(repository),
            None => panic!(
                "outbox-di: no repository parameter; build the module with OutboxModule::from_settings"
            ),
        }
    }
}

/// Provides [`OutboxPublisher`] (a [`KafkaPublisher`]).
#[derive(Debug)]
pub struct PublisherComponent;

/// The publisher, built by [`OutboxModule::from_settings`].
#[derive(Debug, Default)]
pub struct PublisherParameters {
    /// The publisher to provide.
    pub publisher: Option<KafkaPublisher>,
}

impl<M: Module> Component<M> for PublisherComponent {
    type Interface = dyn OutboxPublisher;
    type Parameters = PublisherParameters;

    fn build(_: &mut ModuleBuildContext<M>, params: Self::Parameters) -> Box<dyn OutboxPublisher> {
        match params.publisher {
            Some(publisher) => Box::new(publisher),
            None => panic!(
                "outbox-di: no publisher parameter; build the module with OutboxModule::from_settings"
            ),
        }
    }
}

/// Provides [`OutboxRelayWorker`]: an [`EventRelayWorker`] over the injected repository and
/// publisher, with cleanup through the repository.
#[derive(Debug)]
pub struct RelayComponent;

/// The relay's settings, validated by [`OutboxModule::from_settings`].
#[derive(Debug, Default)]
pub struct RelayParameters {
    /// The relay settings.
    pub settings: RelaySettings,
}

impl<M> Component<M> for RelayComponent
where
    M: Module + HasComponent<dyn OutboxRepository> + HasComponent<dyn OutboxPublisher>,
{
    type Interface = dyn OutboxRelayWorker;
    type Parameters = RelayParameters;

    fn build(
        context: &mut ModuleBuildContext<M>,
        params: Self::Parameters,
    ) -> Box<dyn OutboxRelayWorker> {
        let repository: Arc<dyn OutboxRepository> = M::build_component(context);
        let publisher: Arc<dyn OutboxPublisher> = M::build_component(context);
        let publisher: Arc<dyn EventPublisher> = publisher;
        let store: Arc<dyn RelayStore> = repository.clone();
        let cleanup: Arc<dyn OutboxCleanup> = repository;
        match EventRelayWorker::new(store, publisher, params.settings) {
            Ok(worker) => Box::new(worker.with_cleanup(cleanup)),
            Err(e) => panic!("outbox-di: invalid relay settings: {e}"),
        }
    }
}

mod definition {
    #![allow(missing_docs)]
    use super::*;

    module! {
        pub OutboxModule: OutboxModuleInterface {
            components = [RepositoryComponent, PublisherComponent, RelayComponent],
            providers = []
        }
    }
}

/// The outbox module: repository, publisher and relay worker. Build it with
/// [`OutboxModule::from_settings`]; use it alone or as a submodule.
pub use definition::OutboxModule;

impl OutboxModule {
    /// Builds the module: validates the settings, creates the repository over `db` and the Kafka
    /// producer, and wires the relay worker to both. Fails, changing nothing, on invalid relay
    /// settings, a refused producer property, or a connection that is not PostgreSQL.
    pub fn from_settings(
        db: DatabaseConnection,
        settings: OutboxSettings,
    ) -> Result<Self, OutboxError> {
        settings.relay.validate()?;
        let mut repository = PostgresOutbox::new(db)?.with_mapper(settings.mapper);
        if let Some(key) = settings.lock_key {
            repository = repository.with_lock_key(key);
        }
        let publisher = KafkaPublisher::new(settings.kafka)?;
        Ok(Self::builder()
            .with_component_parameters::<RepositoryComponent>(RepositoryParameters {
                repository: Some(repository),
            })
            .with_component_parameters::<PublisherComponent>(PublisherParameters {
                publisher: Some(publisher),
            })
            .with_component_parameters::<RelayComponent>(RelayParameters {
                settings: settings.relay,
            })
            .build())
    }
}
