-- Reverts m20261130_000002_create_event_inbox: drops the inbox and every row in it.
DROP TABLE IF EXISTS event_inbox;
