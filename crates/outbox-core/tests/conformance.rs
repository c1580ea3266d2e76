//! The in-memory store passes the same conformance suite as the PostgreSQL repository, so the
//! worker's unit tests run against a double that behaves like the real store.

outbox_core::relay_store_conformance!(outbox_core::conformance::MemoryTarget::new());
