-- Reverts 003_contents_lz4.up.sql: new contents use the server's default compression again.
SET LOCAL lock_timeout = '5s';

DO $$
BEGIN
    EXECUTE 'ALTER TABLE raw_files ALTER COLUMN content SET COMPRESSION default';
    EXECUTE 'ALTER TABLE extracted_texts ALTER COLUMN content SET COMPRESSION default';
EXCEPTION WHEN feature_not_supported OR syntax_error THEN
    NULL;
END
$$;
