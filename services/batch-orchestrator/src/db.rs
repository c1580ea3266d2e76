//! The service's tables, their migration, and the migrator that includes the outbox's.

use sea_orm_migration::prelude::*;

/// Batch statuses written in this slice (the table accepts all 12 `BatchStatus` values).
pub mod batch_status {
    /// Registered; its content has not all arrived.
    pub const AWAITING_CONTENT_VALIDATION: &str = "awaiting_content_validation";
    /// Content complete with no usable essay (Rust only: Python never writes it).
    pub const CONTENT_INGESTION_FAILED: &str = "content_ingestion_failed";
    /// A GUEST batch whose content is complete.
    pub const READY_FOR_PIPELINE_EXECUTION: &str = "ready_for_pipeline_execution";
    /// A REGULAR batch whose content is complete, waiting for student matching.
    pub const AWAITING_STUDENT_VALIDATION: &str = "awaiting_student_validation";
}

/// Slot statuses of the readiness module.
pub mod slot_status {
    /// No content yet.
    pub const AVAILABLE: &str = "available";
    /// Content assigned.
    pub const ASSIGNED: &str = "assigned";
    /// Used up by a file that failed validation.
    pub const FAILED: &str = "failed";
}

/// Creates `batches`, `batch_essays` and `essay_slots` (`sql/001_batch_orchestrator.up.sql`).
#[derive(Debug, Clone, Copy, Default)]
pub struct CreateBatchOrchestratorTables;

impl MigrationName for CreateBatchOrchestratorTables {
    fn name(&self) -> &str {
        "m20261130_000101_create_batch_orchestrator_tables"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateBatchOrchestratorTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(include_str!("../sql/001_batch_orchestrator.up.sql"))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(include_str!("../sql/001_batch_orchestrator.down.sql"))
            .await?;
        Ok(())
    }
}

/// The service's migrator: the outbox's tables (`event_outbox`, `event_inbox`) first, then the
/// service's own.
#[derive(Debug, Clone, Copy, Default)]
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(outbox_seaorm::CreateEventOutbox),
            Box::new(outbox_seaorm::AddCommitHorizon),
            Box::new(outbox_seaorm::CreateEventInbox),
            Box::new(CreateBatchOrchestratorTables),
            Box::new(outbox_seaorm::CompressPayloadsWithLz4),
        ]
    }
}
