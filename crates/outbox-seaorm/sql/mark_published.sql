UPDATE event_outbox SET published_at = now() WHERE id = ANY($1) AND published_at IS NULL
