//! The migrations that create `event_outbox` and the consumer's `event_inbox`.
//!
//! Add them to your service's migrator, one line each, in this order (`CreateEventInbox` only if
//! the service consumes through the inbox):
//!
//! ```
//! use sea_orm_migration::prelude::*;
//!
//! pub struct Migrator;
//!
//! impl MigratorTrait for Migrator {
//!     fn migrations() -> Vec<Box<dyn MigrationTrait>> {
//!         vec![
//!             // ... your own migrations ...
//!             Box::new(outbox_seaorm::CreateEventOutbox),
//!             Box::new(outbox_seaorm::AddCommitHorizon),
//!             Box::new(outbox_seaorm::CreateEventInbox),
//!             Box::new(outbox_seaorm::CompressPayloadsWithLz4),
//!         ]
//!     }
//! }
//! ```
//!
//! Services on other migration tools apply [`UP_SQL`] (the file `sql/event_outbox.up.sql`),
//! then [`COMMIT_HORIZON_UP_SQL`] (`sql/commit_horizon.up.sql`) and [`PAYLOAD_LZ4_UP_SQL`]
//! (`sql/payload_lz4.up.sql`), each in one transaction, and [`INBOX_UP_SQL`]
//! (`sql/event_inbox.up.sql`) instead.

use sea_orm_migration::prelude::*;

/// The DDL that creates the table and its indexes (`sql/event_outbox.up.sql`).
pub const UP_SQL: &str = include_str!("../sql/event_outbox.up.sql");

/// The DDL that drops the table (`sql/event_outbox.down.sql`).
pub const DOWN_SQL: &str = include_str!("../sql/event_outbox.down.sql");

/// The DDL that adds the writer's transaction id and the claim indexes on it
/// (`sql/commit_horizon.up.sql`). Run it in one transaction.
pub const COMMIT_HORIZON_UP_SQL: &str = include_str!("../sql/commit_horizon.up.sql");

/// The DDL that reverts [`COMMIT_HORIZON_UP_SQL`] (`sql/commit_horizon.down.sql`).
pub const COMMIT_HORIZON_DOWN_SQL: &str = include_str!("../sql/commit_horizon.down.sql");

/// The DDL that makes new payloads compress with lz4 instead of pglz
/// (`sql/payload_lz4.up.sql`). Run it in one transaction.
pub const PAYLOAD_LZ4_UP_SQL: &str = include_str!("../sql/payload_lz4.up.sql");

/// The DDL that reverts [`PAYLOAD_LZ4_UP_SQL`] (`sql/payload_lz4.down.sql`).
pub const PAYLOAD_LZ4_DOWN_SQL: &str = include_str!("../sql/payload_lz4.down.sql");

/// The DDL that creates the consumer's inbox, `event_inbox` (`sql/event_inbox.up.sql`).
pub const INBOX_UP_SQL: &str = include_str!("../sql/event_inbox.up.sql");

/// The DDL that drops `event_inbox` (`sql/event_inbox.down.sql`).
pub const INBOX_DOWN_SQL: &str = include_str!("../sql/event_inbox.down.sql");

/// Creates `event_outbox` with its indexes; its `down` drops the table.
#[derive(Debug, Clone, Copy, Default)]
pub struct CreateEventOutbox;

impl MigrationName for CreateEventOutbox {
    fn name(&self) -> &str {
        "m20261127_000001_create_event_outbox"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateEventOutbox {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.get_connection().execute_unprepared(UP_SQL).await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(DOWN_SQL)
            .await?;
        Ok(())
    }
}

/// Adds `event_outbox.xid`, the writer's transaction id, and the claim indexes on it, so the
/// relay claims on a commit horizon; safe on a live, populated table (see the SQL file's
/// comments). Its `down` goes back to id-ordered indexes.
#[derive(Debug, Clone, Copy, Default)]
pub struct AddCommitHorizon;

impl MigrationName for AddCommitHorizon {
    fn name(&self) -> &str {
        "m20261130_000001_add_commit_horizon"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for AddCommitHorizon {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(COMMIT_HORIZON_UP_SQL)
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(COMMIT_HORIZON_DOWN_SQL)
            .await?;
        Ok(())
    }
}

/// Makes PostgreSQL compress new `event_outbox.payload` values with lz4 instead of its default,
/// pglz, which made a 32 KiB event's transaction cost about 3.5 times a 1 KiB one (lz4: about
/// 1.3 times); catalog-only, safe on a live table, and a notice, not an error, on a server built
/// without lz4. Its `down` goes back to the server's default.
#[derive(Debug, Clone, Copy, Default)]
pub struct CompressPayloadsWithLz4;

impl MigrationName for CompressPayloadsWithLz4 {
    fn name(&self) -> &str {
        "m20261207_000001_compress_outbox_payloads_lz4"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CompressPayloadsWithLz4 {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(PAYLOAD_LZ4_UP_SQL)
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(PAYLOAD_LZ4_DOWN_SQL)
            .await?;
        Ok(())
    }
}

/// Creates the consumer's inbox, `event_inbox`, with its indexes; its `down` drops the table.
#[derive(Debug, Clone, Copy, Default)]
pub struct CreateEventInbox;

impl MigrationName for CreateEventInbox {
    fn name(&self) -> &str {
        "m20261130_000002_create_event_inbox"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateEventInbox {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(INBOX_UP_SQL)
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(INBOX_DOWN_SQL)
            .await?;
        Ok(())
    }
}

/// A migrator holding only the outbox migrations, for programs without a migrator of their own
/// (examples, tools, tests).
#[derive(Debug, Clone, Copy, Default)]
pub struct OutboxMigrator;

impl MigratorTrait for OutboxMigrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(CreateEventOutbox),
            Box::new(AddCommitHorizon),
            Box::new(CreateEventInbox),
            Box::new(CompressPayloadsWithLz4),
        ]
    }
}
