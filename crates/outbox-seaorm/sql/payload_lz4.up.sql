-- Event payloads compressed with lz4 (outbox-seaorm migration
-- m20261207_000001_compress_outbox_payloads_lz4). Apply after event_outbox.up.sql, in one
-- transaction (`psql -1 -f`); it is the same SQL the SeaORM migration runs.
--
-- PostgreSQL compresses a row's large values once the row passes about 2 KiB. With its default
-- method, pglz, a 32 KiB event cost the writer's transaction about 3.5 times a 1 KiB one on a
-- 2-core machine; with lz4, about 1.3 times (docs/benchmarks.md, section 1b).
--
-- Safe on a live, populated table: a catalog-only change (no rewrite; rows already stored keep
-- their compression, new rows use lz4), and lock_timeout makes it fail fast instead of queueing
-- writers behind it. A server built without lz4 keeps pglz and says so in a notice.
SET LOCAL lock_timeout = '5s';

DO $$
BEGIN
    EXECUTE 'ALTER TABLE event_outbox ALTER COLUMN payload SET COMPRESSION lz4';
EXCEPTION WHEN feature_not_supported OR syntax_error THEN
    RAISE NOTICE 'event_outbox.payload keeps the default compression: %', SQLERRM;
END
$$;
