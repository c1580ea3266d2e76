-- The Batch Orchestrator's own tables. The outbox table (and the inbox's) come from
-- outbox-seaorm's migrations, which the service's migrator runs first.

-- One row per registered batch; columns as the Python service's `batches` table, with `status`
-- as text checked against the 12 BatchStatus values and `provisioning_completed_at` added.
CREATE TABLE batches (
    id                        varchar(36)  PRIMARY KEY,
    correlation_id            varchar(36)  NOT NULL,
    name                      varchar(255) NOT NULL,
    description               text,
    class_id                  varchar(255),
    status                    text         NOT NULL
        CHECK (status IN (
            'awaiting_content_validation',
            'content_ingestion_failed',
            'awaiting_pipeline_configuration',
            'ready_for_pipeline_execution',
            'processing_pipelines',
            'awaiting_student_validation',
            'student_validation_completed',
            'validation_timeout_processed',
            'completed_successfully',
            'completed_with_failures',
            'failed_critically',
            'cancelled'
        )),
    requested_pipelines       json,
    pipeline_configuration    json,
    total_essays              integer,
    processed_essays          integer      NOT NULL DEFAULT 0,
    version                   integer      NOT NULL DEFAULT 1,
    created_at                timestamp    NOT NULL DEFAULT now(),
    updated_at                timestamp    NOT NULL DEFAULT now(),
    completed_at              timestamp,
    processing_metadata       json,
    error_details             json,
    -- Set in the transaction that writes BatchContentProvisioningCompletedV1: at most one.
    provisioning_completed_at timestamptz
);
CREATE INDEX ix_batches_correlation_id ON batches (correlation_id);
CREATE INDEX ix_batches_class_id ON batches (class_id);
CREATE INDEX ix_batches_status ON batches (status);

-- The essays of a batch whose content is complete; replaced per batch (delete, then insert).
CREATE TABLE batch_essays (
    id                  serial       PRIMARY KEY,
    batch_id            varchar(36)  NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    essay_id            varchar(36)  NOT NULL,
    content_reference   json         NOT NULL,
    student_metadata    json         NOT NULL DEFAULT '{}',
    processing_metadata json         NOT NULL DEFAULT '{}',
    created_at          timestamp    NOT NULL DEFAULT now(),
    updated_at          timestamp    NOT NULL DEFAULT now()
);
CREATE INDEX ix_batch_essays_batch_id ON batch_essays (batch_id);
CREATE INDEX ix_batch_essays_essay_id ON batch_essays (essay_id);

-- The readiness module's slots (ELS's role): one per essay id, written with the batch.
-- `available` until content takes it (`assigned`) or a failed file uses it up (`failed`).
CREATE TABLE essay_slots (
    batch_id              varchar(36) NOT NULL REFERENCES batches (id) ON DELETE CASCADE,
    essay_id              varchar(36) NOT NULL,
    status                text        NOT NULL DEFAULT 'available'
        CHECK (status IN ('available', 'assigned', 'failed')),
    file_upload_id        text,
    text_storage_id       text,
    original_file_name    text,
    file_size_bytes       bigint,
    content_md5_hash      text,
    validation_error_code text,
    updated_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (batch_id, essay_id)
);
-- A file fills at most one slot of its batch (the natural key of duplicate deliveries).
CREATE UNIQUE INDEX ux_essay_slots_batch_file_upload
    ON essay_slots (batch_id, file_upload_id) WHERE file_upload_id IS NOT NULL;
-- ELS's ix_essay_states_batch_tsid_unique: one slot per stored text.
CREATE UNIQUE INDEX ux_essay_slots_batch_text_storage
    ON essay_slots (batch_id, text_storage_id) WHERE text_storage_id IS NOT NULL;
-- The lowest free slot of a batch, found without scanning its taken ones.
CREATE INDEX ix_essay_slots_available
    ON essay_slots (batch_id, essay_id) WHERE status = 'available';
