-- The File Service's own tables. The outbox table comes from outbox-seaorm's migration, which
-- the service's migrator runs first.

-- Batch ownership when no Batch Orchestrator is configured: the first uploader owns the batch.
CREATE TABLE batches (
    batch_id   text        PRIMARY KEY,
    user_id    text        NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- One row per uploaded file: pending until processed, then completed or failed; removed when
-- deleted from its batch.
CREATE TABLE file_uploads (
    file_upload_id  uuid        PRIMARY KEY,
    batch_id        text        NOT NULL,
    user_id         text        NOT NULL,
    assignment_id   text,
    filename        text        NOT NULL,
    file_size_bytes bigint      NOT NULL,
    content_md5     text        NOT NULL,
    raw_storage_id  uuid        NOT NULL,
    text_storage_id uuid,
    status          text        NOT NULL
                    CHECK (status IN ('pending', 'completed', 'failed', 'removed')),
    error_code      text,
    error_message   text,
    correlation_id  uuid        NOT NULL,
    traceparent     text,
    uploaded_at     timestamptz NOT NULL DEFAULT now(),
    processed_at    timestamptz,
    removed_at      timestamptz
);
CREATE INDEX file_uploads_batch_idx ON file_uploads (batch_id, uploaded_at);
CREATE INDEX file_uploads_pending_idx ON file_uploads (uploaded_at) WHERE status = 'pending';

-- The uploaded bytes.
CREATE TABLE raw_files (
    storage_id uuid        PRIMARY KEY,
    content    bytea       NOT NULL,
    stored_at  timestamptz NOT NULL DEFAULT now()
);

-- The extracted text of a successfully processed upload.
CREATE TABLE extracted_texts (
    storage_id     uuid        PRIMARY KEY,
    file_upload_id uuid        NOT NULL REFERENCES file_uploads (file_upload_id),
    content        text        NOT NULL,
    stored_at      timestamptz NOT NULL DEFAULT now()
);
