//! The service's shaku module: its event writer, with the outbox module as a submodule.

use outbox_di::{OutboxModule, OutboxPublisher, OutboxRelayWorker, OutboxRepository};
use shaku::module;

use crate::events::OutboxFileEventWriter;

mod definition {
    #![allow(missing_docs)]
    use super::*;

    module! {
        pub FileServiceModule {
            components = [OutboxFileEventWriter],
            providers = [],
            use OutboxModule {
                components = [dyn OutboxRepository, dyn OutboxPublisher, dyn OutboxRelayWorker],
                providers = []
            }
        }
    }
}

/// The File Service's module: resolves `dyn FileEventWriter` (writing through the outbox
/// repository) and, from the outbox submodule, the repository, publisher and relay.
pub use definition::FileServiceModule;
