//! [shaku] modules that provide the [`Outbox`] and the [`Inbox`] to a service's components:
//! built by the `outbox` crate's [`OutboxBuilder`] and [`InboxBuilder`], so the repository, the
//! Kafka publisher and the relay, and the inbox, its consumer and its handlers, are each wired in
//! one place. A service that consumes adds [`InboxModule`] as a second submodule.
//!
//! Use [`OutboxModule`] as a submodule of the service's own module; components inject
//! `Arc<Outbox>` and write their events on an [`OutboxTransaction`](outbox::OutboxTransaction):
//!
//! ```no_run
//! use std::sync::Arc;
//! use outbox::prelude::*;
//! use outbox_di::OutboxModule;
//! use shaku::{Component, HasComponent, Interface, module};
//!
//! trait Orders: Interface {
//!     fn outbox(&self) -> &Outbox;
//! }
//!
//! #[derive(Component)]
//! #[shaku(interface = Orders)]
//! struct OrdersImpl {
//!     #[shaku(inject)]
//!     outbox: Arc<Outbox>,
//! }
//!
//! impl Orders for OrdersImpl {
//!     fn outbox(&self) -> &Outbox {
//!         &self.outbox
//!     }
//! }
//!
//! module! {
//!     OrdersModule {
//!         components = [OrdersImpl],
//!         providers = [],
//!         use OutboxModule {
//!             components = [Outbox],
//!             providers = []
//!         }
//!     }
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), outbox::Error> {
//! let db = sea_orm::Database::connect("postgres://outbox:outbox@127.0.0.1:5432/outbox").await?;
//! let builder = Outbox::builder(db).kafka(KafkaConfig::new("127.0.0.1:9092"));
//! let module = OrdersModule::builder(Arc::new(OutboxModule::from_builder(builder)?)).build();
//!
//! let orders: &dyn Orders = module.resolve_ref();
//! orders.outbox().start()?;
//! let txn = orders.outbox().begin().await?;
//! let event = NewOutboxEvent::json("order", "o-1", "OrderPlaced", &serde_json::json!({}))?
//!     .with_topic("orders.v1");
//! txn.add(event).await?;
//! txn.commit().await?; // wakes the relay
//! orders.outbox().stop().await?;
//! # Ok(()) }
//! ```
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub use outbox::{Inbox, InboxBuilder, Outbox, OutboxBuilder};
use shaku::{Component, HasComponent, Module, ModuleBuildContext, module};

/// The module's interface, for services that take the outbox as `use dyn OutboxModuleInterface`.
pub trait OutboxModuleInterface: HasComponent<Outbox> {}

/// Provides the [`Outbox`], built by [`OutboxModule::from_builder`].
#[derive(Debug)]
pub struct OutboxComponent;

/// The outbox to provide.
#[derive(Debug, Default)]
pub struct OutboxParameters {
    /// Set by [`OutboxModule::from_builder`] and [`OutboxModule::from_outbox`].
    pub outbox: Option<Outbox>,
}

impl<M: Module> Component<M> for OutboxComponent {
    type Interface = Outbox;
    type Parameters = OutboxParameters;

    fn build(_: &mut ModuleBuildContext<M>, params: Self::Parameters) -> Box<Outbox> {
        match params.outbox {
            Some(outbox) => Box::new(outbox),
            None => panic!(
                "outbox-di: no outbox parameter; build the module with OutboxModule::from_builder"
            ),
        }
    }
}

mod definition {
    #![allow(missing_docs)]
    use super::*;

    module! {
        pub OutboxModule: OutboxModuleInterface {
            components = [OutboxComponent],
            providers = []
        }
    }
}

/// The outbox module. Build it with [`OutboxModule::from_builder`]; use it alone or as a
/// submodule.
pub use definition::OutboxModule;

impl OutboxModule {
    /// Builds the module from the `outbox` crate's builder: the repository, the Kafka publisher
    /// and the relay (not started: the service starts it with [`Outbox::start`]). Fails,
    /// changing nothing, on invalid relay settings or topics, a refused producer property, a
    /// connection that is not PostgreSQL, or no Kafka configuration.
    pub fn from_builder(builder: OutboxBuilder) -> Result<Self, outbox::Error> {
        Ok(Self::from_outbox(builder.build()?))
    }

    /// Builds the module around an outbox built already (for example writer-only).
    pub fn from_outbox(outbox: Outbox) -> Self {
        Self::builder()
            .with_component_parameters::<OutboxComponent>(OutboxParameters {
                outbox: Some(outbox),
            })
            .build()
    }
}

/// What a module providing the consumer side offers: the [`Inbox`].
pub trait InboxModuleInterface: HasComponent<Inbox> {}

/// The shaku component behind [`InboxModule`]: provides the [`Inbox`] it was built with.
#[derive(Debug)]
pub struct InboxComponent;

/// The parameters of [`InboxComponent`].
#[derive(Debug, Default)]
pub struct InboxParameters {
    /// Set by [`InboxModule::from_builder`] and [`InboxModule::from_inbox`].
    pub inbox: Option<Inbox>,
}

impl<M: Module> Component<M> for InboxComponent {
    type Interface = Inbox;
    type Parameters = InboxParameters;

    fn build(_: &mut ModuleBuildContext<M>, params: Self::Parameters) -> Box<Inbox> {
        match params.inbox {
            Some(inbox) => Box::new(inbox),
            None => panic!(
                "outbox-di: no inbox parameter; build the module with InboxModule::from_builder"
            ),
        }
    }
}

mod inbox_definition {
    #![allow(missing_docs)]
    use super::*;

    module! {
        pub InboxModule: InboxModuleInterface {
            components = [InboxComponent],
            providers = []
        }
    }
}

pub use inbox_definition::InboxModule;

impl InboxModule {
    /// Builds the module from an [`InboxBuilder`] (from [`Outbox::inbox`]): the PostgreSQL
    /// inbox, the Kafka consumer and the worker with the service's handlers, not started (the
    /// service starts it with [`Inbox::start`]). Fails, changing nothing, on invalid settings, no
    /// handler, a topic with two handlers or a refused consumer property.
    pub fn from_builder(builder: InboxBuilder) -> Result<Self, outbox::Error> {
        Ok(Self::from_inbox(builder.build()?))
    }

    /// Builds the module around an inbox built already.
    pub fn from_inbox(inbox: Inbox) -> Self {
        Self::builder()
            .with_component_parameters::<InboxComponent>(InboxParameters { inbox: Some(inbox) })
            .build()
    }
}
