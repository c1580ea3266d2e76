-- Uploaded bytes and extracted texts compressed with lz4 instead of PostgreSQL's default, pglz:
-- with pglz, a 40 KB upload cost about twice a 1 KB one, compressing the file twice (its bytes,
-- then its text). Catalog-only: stored rows keep their compression, new rows use lz4. A server
-- built without lz4 keeps pglz and says so in a notice.
SET LOCAL lock_timeout = '5s';

DO $$
BEGIN
    EXECUTE 'ALTER TABLE raw_files ALTER COLUMN content SET COMPRESSION lz4';
    EXECUTE 'ALTER TABLE extracted_texts ALTER COLUMN content SET COMPRESSION lz4';
EXCEPTION WHEN feature_not_supported OR syntax_error THEN
    RAISE NOTICE 'file contents keep the default compression: %', SQLERRM;
END
$$;
