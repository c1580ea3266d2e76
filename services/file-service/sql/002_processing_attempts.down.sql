ALTER TABLE file_uploads DROP COLUMN IF EXISTS last_attempt_at;
ALTER TABLE file_uploads DROP COLUMN IF EXISTS processing_attempts;
