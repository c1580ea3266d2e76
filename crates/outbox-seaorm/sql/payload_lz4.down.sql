-- Reverts payload_lz4.up.sql: new payloads use the server's default compression again.
SET LOCAL lock_timeout = '5s';

DO $$
BEGIN
    EXECUTE 'ALTER TABLE event_outbox ALTER COLUMN payload SET COMPRESSION default';
EXCEPTION WHEN feature_not_supported OR syntax_error THEN
    NULL;
END
$$;
