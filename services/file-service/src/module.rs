//! The service's shaku module: its event publisher, with the outbox module as a submodule.

use outbox_di::{OutboxModule, OutboxPublisher, OutboxRelayWorker, OutboxRepository};
use shaku::module;

use crate::events::OutboxFileEventPublisher;

mod definition {
    #![allow(missing_docs)]
    use super::*;

    module! {
        pub FileServiceModule {
            components = [OutboxFileEventPublisher],
            providers = [],
            use OutboxModule {
                components = [dyn OutboxRepository, dyn OutboxPublisher, dyn OutboxRelayWorker],
                providers = []
            }
        }
    }
}

/// The File Service's module: resolves `dyn FileEventPublisher` (writing through the outbox
/// repository) and, from the outbox submodule, the repository, publisher and relay.
pub use definition::FileServiceModule;
