//! The transactional outbox on PostgreSQL through SeaORM.
//!
//! - [`CreateEventOutbox`], [`AddCommitHorizon`] and [`CompressPayloadsWithLz4`]: the
//!   migrations that create `event_outbox`, to add to your migrator in three lines (or
//!   [`migration::UP_SQL`], [`migration::COMMIT_HORIZON_UP_SQL`] and
//!   [`migration::PAYLOAD_LZ4_UP_SQL`] for other migration tools), and [`CreateEventInbox`]
//!   for a service that consumes through the inbox ([`migration::INBOX_UP_SQL`]);
//! - [`entity`]: the SeaORM entity of the table, for queries of your own;
//! - [`PostgresOutbox`]: the repository. It adds events on your transaction
//!   ([`OutboxWriter`](outbox_core::OutboxWriter)), serves the relay worker
//!   ([`RelayStore`](outbox_core::RelayStore), with one active relay elected by an advisory
//!   lock), and lists, replays and discards dead letters;
//! - [`WAKE_SQL`]: what a writer in another process runs after its commit to wake the relay;
//! - [`PostgresInbox`]: the consumer side's store
//!   ([`InboxStore`](outbox_core::InboxStore)) over `event_inbox`: it records each consumed
//!   message's event id on the handler's transaction in one statement a batch (a duplicate
//!   applies nothing), keeps rejected messages with their bytes for replay, and deletes rows
//!   past retention.
//!
//! # Example
//!
//! ```no_run
//! use std::sync::Arc;
//! use outbox_core::{NewOutboxEvent, OutboxWriter, TopicMap};
//! use outbox_seaorm::{OutboxMigrator, PostgresOutbox};
//! use sea_orm::{ConnectionTrait, Database, TransactionTrait};
//! use sea_orm_migration::MigratorTrait;
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let db = Database::connect("postgres://outbox:outbox@127.0.0.1:5432/outbox").await?;
//! OutboxMigrator::up(&db, None).await?;
//!
//! let topics = TopicMap::new().with("OrderPlaced", "orders.v1")?;
//! let outbox = PostgresOutbox::new(db.clone())?.with_mapper(Arc::new(topics));
//!
//! // The business row and its event commit together, or not at all.
//! let txn = db.begin().await?;
//! txn.execute_unprepared("INSERT INTO orders (id, total) VALUES ('o-1', 42)").await?;
//! let event = NewOutboxEvent::json("order", "o-1", "OrderPlaced", &serde_json::json!({"total": 42}))?;
//! outbox.add_event(&txn, event).await?;
//! txn.commit().await?;
//! # Ok(()) }
//! ```
//!
//! # Inside
//!
//! The repository is split by concern, each module with its statements in `sql/` (included at
//! compile time; only what must be built at run time, a multi-row `VALUES` list or the lock's
//! key, is written in Rust). Each concern has one query style, for a reason:
//!
//! - **writing** (`write`): a SeaORM `Statement` on the caller's connection or transaction,
//!   because the event must commit with the business change, on the SeaORM type the caller
//!   holds;
//! - **leadership** (`leadership`): sqlx on a connection of the relay's own, detached from the
//!   pool, because the advisory lock lives as long as that session; the statements that check
//!   which backend answers use the simple query protocol, so that a connection pooler in
//!   transaction mode is detected instead of silently breaking the election;
//! - **claims, acknowledgements, failures** (`claim`): sqlx on that same session, because a relay
//!   that lost the lock must be unable to acknowledge, with array parameters so that one
//!   statement serves a batch;
//! - **wake-ups** (`wake`), **stats** (`stats`) and **cleanup** (`cleanup`): sqlx on the pool,
//!   like the rest of the relay's statements: hand-written SQL (`pg_notify`, `LISTEN`,
//!   `pg_stat_activity`, bounded deletes) that the query builder does not express;
//! - **dead letters** (`dead_letters`): the SeaORM query builder over [`entity`], because a
//!   [`DeadLetterFilter`](outbox_core::DeadLetterFilter) becomes a condition that composes with
//!   ids, pages and counts ([`entity::Entity::find_dead_letters`]);
//! - **row mapping** (`rows`): rows and models into events and dead letters;
//! - **the inbox** (`inbox`): SeaORM `Statement`s on any `ConnectionTrait`, because recording a
//!   message must share the handler's transaction, whatever type wraps it; a batch is one
//!   `INSERT ... SELECT FROM unnest(...)`.
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

mod claim;
mod cleanup;
mod dead_letters;
pub mod entity;
mod inbox;
mod leadership;
pub mod migration;
mod outbox;
mod rows;
mod stats;
mod wake;
mod write;

#[doc(hidden)]
pub use claim::CLAIM;
pub use inbox::{PostgresInbox, is_permanent, sqlx_is_permanent};
pub use migration::{
    AddCommitHorizon, CompressPayloadsWithLz4, CreateEventInbox, CreateEventOutbox, OutboxMigrator,
};
pub use outbox::PostgresOutbox;
pub use wake::WAKE_SQL;
