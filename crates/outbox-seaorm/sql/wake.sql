SELECT pg_notify('outbox_wake', '')
