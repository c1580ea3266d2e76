-- Reverts event_outbox.up.sql. Drops every event still in the outbox.
DROP TABLE IF EXISTS event_outbox;
