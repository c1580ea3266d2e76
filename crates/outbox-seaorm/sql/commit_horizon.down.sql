-- Reverts commit_horizon.up.sql: back to id-ordered claims.
SET LOCAL lock_timeout = '5s';

CREATE INDEX IF NOT EXISTS event_outbox_pending_idx ON event_outbox (id)
    WHERE published_at IS NULL AND dead_lettered_at IS NULL;
CREATE INDEX IF NOT EXISTS event_outbox_retry_idx ON event_outbox (topic, event_key, id)
    WHERE next_attempt_at IS NOT NULL AND published_at IS NULL AND dead_lettered_at IS NULL;
DROP INDEX IF EXISTS event_outbox_claim_idx;
DROP INDEX IF EXISTS event_outbox_parked_idx;
ALTER TABLE event_outbox DROP COLUMN IF EXISTS xid;
