-- The consumer's inbox (outbox-seaorm migration m20261130_000002_create_event_inbox): one row per
-- message a consumer applied or rejected, so a redelivered message applies nothing. Services on
-- other migration tools can apply this file as it is; it is the same SQL the SeaORM migration runs.

CREATE TABLE event_inbox (
    -- The handler's name: the inbox deduplicates per (consumer, event_id).
    consumer       text        NOT NULL,
    -- The `event_id` header, else the envelope's `event_id` (a hash of the position for a
    -- rejected message that has neither).
    event_id       uuid        NOT NULL,
    -- Where the message came from, for operators.
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    kafka_offset   bigint      NOT NULL,
    event_type     text,
    correlation_id text,
    -- `applied`, `rejected`, or the handler's own outcome (`stale`, `unknown_batch`, ...).
    outcome        text        NOT NULL DEFAULT 'applied',
    -- Why a rejected message was rejected.
    error          text,
    processed_at   timestamptz NOT NULL DEFAULT now(),
    -- The message itself, kept only for rejected rows so an operator can replay it.
    key            bytea,
    payload        bytea,
    -- Its headers in order: [{"name": ..., "value": ...}], `name_hex`/`value_hex` for bytes
    -- that are not NUL-free UTF-8.
    headers        jsonb,
    CONSTRAINT event_inbox_pkey PRIMARY KEY (consumer, event_id),
    CONSTRAINT event_inbox_outcome_check CHECK (outcome <> '')
);

-- Retention cleanup, oldest first.
CREATE INDEX event_inbox_processed_at_idx ON event_inbox (processed_at);

-- Rejected messages, for operators and replay.
CREATE INDEX event_inbox_rejected_idx ON event_inbox (processed_at)
    WHERE outcome = 'rejected';
