-- The transactional outbox table (outbox-seaorm migration m20261127_000001_create_event_outbox).
-- Services on other migration tools can apply this file as it is; it is the same SQL the SeaORM
-- migration runs.

CREATE TABLE event_outbox (
    -- Relay order. ALWAYS: ids come from the sequence only, never from a caller.
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    -- Message id: Kafka header `event_id` and the envelope's `event_id`; consumers dedupe by it.
    event_id         uuid        NOT NULL,
    aggregate_type   text        NOT NULL,
    aggregate_id     text        NOT NULL,
    event_type       text        NOT NULL,
    topic            text        NOT NULL,
    -- Kafka key and ordering unit (defaults to aggregate_id in the library).
    event_key        text        NOT NULL,
    -- One of 256 key-hash partitions, for several relays sharing the table later.
    partition        smallint    NOT NULL
                     GENERATED ALWAYS AS ((hashtextextended(event_key, 0) & 255)::smallint) STORED,
    -- The exact bytes sent as the Kafka value.
    payload          bytea       NOT NULL,
    -- Extra Kafka headers (content-type, traceparent, ...), a JSON object of strings.
    headers          jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    -- Permanent failures so far, when the next attempt may run, and why the last one failed.
    attempts         integer     NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz,
    last_error       text,
    -- Set when the event was parked after max_attempts permanent failures.
    dead_lettered_at timestamptz,
    -- Set only when published rows are kept for a retention period.
    published_at     timestamptz,
    CONSTRAINT event_outbox_event_id_key UNIQUE (event_id),
    CONSTRAINT event_outbox_fields_check CHECK (topic <> '' AND event_key <> '' AND event_type <> ''),
    CONSTRAINT event_outbox_attempts_check CHECK (attempts >= 0),
    CONSTRAINT event_outbox_headers_check CHECK (jsonb_typeof(headers) = 'object')
);

-- The relay's claim: pending rows in id order.
CREATE INDEX event_outbox_pending_idx ON event_outbox (id)
    WHERE published_at IS NULL AND dead_lettered_at IS NULL;

-- Rows backing off after a failure: few, and they hold back later events of their key.
CREATE INDEX event_outbox_retry_idx ON event_outbox (topic, event_key, id)
    WHERE next_attempt_at IS NOT NULL AND published_at IS NULL AND dead_lettered_at IS NULL;

-- Dead letters, for the gauge and for replay.
CREATE INDEX event_outbox_dead_letter_idx ON event_outbox (dead_lettered_at, id)
    WHERE dead_lettered_at IS NOT NULL;

-- Cleanup of published rows under retention.
CREATE INDEX event_outbox_published_idx ON event_outbox (published_at)
    WHERE published_at IS NOT NULL;

-- A queue table: rows are inserted and deleted all day. Vacuum it early so the claim's index
-- scan does not wade through dead entries.
ALTER TABLE event_outbox SET (
    autovacuum_vacuum_scale_factor = 0.01,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.02
);
