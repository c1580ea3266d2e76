-- Claims on a commit horizon (outbox-seaorm migration m20261130_000001_add_commit_horizon).
-- Apply after event_outbox.up.sql, in one transaction (`psql -1 -f`); it is the same SQL the
-- SeaORM migration runs.
--
-- Safe on a live, populated table:
-- - adding a column with a constant default and then changing the default are catalog-only
--   changes: no table rewrite, the exclusive lock is held for milliseconds;
-- - the two indexes cover pending rows only, which a working relay keeps few (100,000 pending
--   rows index in a fraction of a second; for a larger backlog, build them beforehand with
--   CREATE INDEX CONCURRENTLY under the same names: these statements then skip them);
-- - lock_timeout makes the migration fail fast, instead of queueing every writer behind it,
--   while a long transaction holds the table. Run it again later.
SET LOCAL lock_timeout = '5s';

-- The writer's transaction id (xid8: 64 bits, never wraps). Rows already in the table were
-- committed before this statement ran (it waits for every transaction that wrote to the table),
-- so they all take 0 and keep their id order, ahead of every row written after it.
ALTER TABLE event_outbox ADD COLUMN IF NOT EXISTS xid xid8 NOT NULL DEFAULT '0';
ALTER TABLE event_outbox ALTER COLUMN xid SET DEFAULT pg_current_xact_id();

-- The relay's claim of new events: pending rows in (xid, id) order.
CREATE INDEX IF NOT EXISTS event_outbox_claim_idx ON event_outbox (xid, id)
    WHERE published_at IS NULL AND dead_lettered_at IS NULL AND next_attempt_at IS NULL;

-- Parked rows (backing off after a failure, or waiting behind one of their key): few; they hold
-- back later events of their key.
CREATE INDEX IF NOT EXISTS event_outbox_parked_idx ON event_outbox (topic, event_key, xid, id)
    WHERE next_attempt_at IS NOT NULL AND published_at IS NULL AND dead_lettered_at IS NULL;

-- The indexes of id-ordered claims, which the two above replace.
DROP INDEX IF EXISTS event_outbox_pending_idx;
DROP INDEX IF EXISTS event_outbox_retry_idx;
