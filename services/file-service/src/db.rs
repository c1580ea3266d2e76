//! The service's tables: SeaORM entities, its migration, and the migrator that includes the
//! outbox's.

use sea_orm_migration::prelude::*;

/// Upload states.
pub mod status {
    /// Stored, waiting for text extraction and validation.
    pub const PENDING: &str = "pending";
    /// Text extracted, validated and stored.
    pub const COMPLETED: &str = "completed";
    /// Extraction or validation failed.
    pub const FAILED: &str = "failed";
    /// Deleted from its batch.
    pub const REMOVED: &str = "removed";
}

/// `file_uploads`: one row per uploaded file.
pub mod file_upload {
    use sea_orm::entity::prelude::*;

    /// An uploaded file and its processing state.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "file_uploads")]
    pub struct Model {
        /// The upload's id (`file_upload_id` in events).
        #[sea_orm(primary_key, auto_increment = false)]
        pub file_upload_id: Uuid,
        /// The batch it belongs to.
        pub batch_id: String,
        /// Who uploaded it.
        pub user_id: String,
        /// The assignment, when the form named one.
        pub assignment_id: Option<String>,
        /// The original file name.
        pub filename: String,
        /// Size of the raw bytes.
        pub file_size_bytes: i64,
        /// Hex MD5 of the raw bytes.
        pub content_md5: String,
        /// Where the raw bytes are (`raw_files`).
        pub raw_storage_id: Uuid,
        /// Where the extracted text is (`extracted_texts`), once completed.
        pub text_storage_id: Option<Uuid>,
        /// `pending`, `completed`, `failed` or `removed`.
        pub status: String,
        /// The validation error code of a failed upload.
        pub error_code: Option<String>,
        /// The validation error message of a failed upload.
        pub error_message: Option<String>,
        /// The upload request's correlation id, carried into every event about this file.
        pub correlation_id: Uuid,
        /// The W3C traceparent of the upload request, when it had one.
        pub traceparent: Option<String>,
        /// When it was uploaded.
        pub uploaded_at: DateTimeWithTimeZone,
        /// When processing finished.
        pub processed_at: Option<DateTimeWithTimeZone>,
        /// When it was removed.
        pub removed_at: Option<DateTimeWithTimeZone>,
        /// Times it was taken up for processing (counted before each attempt).
        pub processing_attempts: i32,
        /// When it was last taken up for processing.
        pub last_attempt_at: Option<DateTimeWithTimeZone>,
    }

    /// No relations are navigated.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `raw_files`: uploaded bytes.
pub mod raw_file {
    use sea_orm::entity::prelude::*;

    /// The bytes of one upload.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "raw_files")]
    pub struct Model {
        /// `raw_file_storage_id` in events.
        #[sea_orm(primary_key, auto_increment = false)]
        pub storage_id: Uuid,
        /// The bytes.
        pub content: Vec<u8>,
        /// When they were stored.
        pub stored_at: DateTimeWithTimeZone,
    }

    /// No relations are navigated.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `extracted_texts`: the text of completed uploads.
pub mod extracted_text {
    use sea_orm::entity::prelude::*;

    /// The extracted text of one upload.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "extracted_texts")]
    pub struct Model {
        /// `text_storage_id` in events.
        #[sea_orm(primary_key, auto_increment = false)]
        pub storage_id: Uuid,
        /// The upload.
        pub file_upload_id: Uuid,
        /// The text.
        pub content: String,
        /// When it was stored.
        pub stored_at: DateTimeWithTimeZone,
    }

    /// No relations are navigated.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// `batches`: local ownership of batches (used without a Batch Orchestrator).
pub mod batch {
    use sea_orm::entity::prelude::*;

    /// A batch and its owner.
    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "batches")]
    pub struct Model {
        /// The batch id.
        #[sea_orm(primary_key, auto_increment = false)]
        pub batch_id: String,
        /// Its owner: the first uploader.
        pub user_id: String,
        /// When it was first uploaded to.
        pub created_at: DateTimeWithTimeZone,
    }

    /// No relations are navigated.
    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

/// Creates the service's tables (`sql/001_file_service.up.sql`).
#[derive(Debug, Clone, Copy, Default)]
pub struct CreateFileServiceTables;

impl MigrationName for CreateFileServiceTables {
    fn name(&self) -> &str {
        "m20261127_000002_create_file_service_tables"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CreateFileServiceTables {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(include_str!("../sql/001_file_service.up.sql"))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(include_str!("../sql/001_file_service.down.sql"))
            .await?;
        Ok(())
    }
}

/// Counts processing attempts of uploads (`sql/002_processing_attempts.up.sql`).
#[derive(Debug, Clone, Copy, Default)]
pub struct AddProcessingAttempts;

impl MigrationName for AddProcessingAttempts {
    fn name(&self) -> &str {
        "m20261130_000001_add_file_upload_processing_attempts"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for AddProcessingAttempts {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(include_str!("../sql/002_processing_attempts.up.sql"))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(include_str!("../sql/002_processing_attempts.down.sql"))
            .await?;
        Ok(())
    }
}

/// Makes PostgreSQL compress new uploaded bytes and extracted texts with lz4 instead of pglz
/// (`sql/003_contents_lz4.up.sql`): with pglz, a 40 KB upload cost about twice a 1 KB one.
#[derive(Debug, Clone, Copy, Default)]
pub struct CompressFileContentsWithLz4;

impl MigrationName for CompressFileContentsWithLz4 {
    fn name(&self) -> &str {
        "m20261207_000002_compress_file_contents_lz4"
    }
}

#[async_trait::async_trait]
impl MigrationTrait for CompressFileContentsWithLz4 {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(include_str!("../sql/003_contents_lz4.up.sql"))
            .await?;
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(include_str!("../sql/003_contents_lz4.down.sql"))
            .await?;
        Ok(())
    }
}

/// The service's migrator: the outbox table first, then the service's own.
#[derive(Debug, Clone, Copy, Default)]
pub struct Migrator;

impl MigratorTrait for Migrator {
    fn migrations() -> Vec<Box<dyn MigrationTrait>> {
        vec![
            Box::new(outbox_seaorm::CreateEventOutbox),
            Box::new(outbox_seaorm::AddCommitHorizon),
            Box::new(CreateFileServiceTables),
            Box::new(AddProcessingAttempts),
            Box::new(outbox_seaorm::CompressPayloadsWithLz4),
            Box::new(CompressFileContentsWithLz4),
        ]
    }
}
