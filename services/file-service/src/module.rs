//! The service's shaku module: its event writer, with the outbox module as a submodule.

use outbox::Outbox;
use outbox_di::OutboxModule;
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
                components = [Outbox],
                providers = []
            }
        }
    }
}

/// The File Service's module: resolves `dyn FileEventWriter` and, from the outbox submodule, the
/// `Outbox` (its store and relay).
pub use definition::FileServiceModule;
