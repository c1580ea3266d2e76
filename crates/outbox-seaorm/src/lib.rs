//! The transactional outbox on PostgreSQL through SeaORM.
//!
//! - [`CreateEventOutbox`] and [`AddCommitHorizon`]: the migrations that create `event_outbox`,
//!   to add to your migrator in two lines (or [`migration::UP_SQL`] and
//!   [`migration::COMMIT_HORIZON_UP_SQL`] for other migration tools);
//! - [`entity`]: the SeaORM entity of the table, for queries of your own;
//! - [`PostgresOutbox`]: the repository. It adds events on your transaction
//!   ([`OutboxWriter`](outbox_core::OutboxWriter)), serves the relay worker
//!   ([`RelayStore`](outbox_core::RelayStore), with one active relay elected by an advisory
//!   lock), and lists, replays and discards dead letters.
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
#![cfg_attr(not(test), warn(clippy::unwrap_used, clippy::expect_used))]

pub mod entity;
pub mod migration;
mod repository;

pub use migration::{AddCommitHorizon, CreateEventOutbox, OutboxMigrator};
pub use repository::{
    CLAIM, PgWake, PostgresOutbox, WAKE_CHANNEL, WAKE_SQL, dead_letter_condition,
};
