-- Poison uploads cannot loop: every time an upload is taken up for processing, its attempt is
-- counted here first (committed on its own, so a crash of the whole service counts too). Past
-- FILE_SERVICE_MAX_PROCESSING_ATTEMPTS the upload is failed with its outcome event instead of
-- being processed again.
ALTER TABLE file_uploads ADD COLUMN processing_attempts integer NOT NULL DEFAULT 0;
ALTER TABLE file_uploads ADD COLUMN last_attempt_at timestamptz;
