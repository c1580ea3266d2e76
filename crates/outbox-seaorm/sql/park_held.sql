UPDATE event_outbox SET next_attempt_at = now(),
    last_error = 'waiting behind an earlier event of its key'
WHERE id = ANY($1) AND next_attempt_at IS NULL AND published_at IS NULL
  AND dead_lettered_at IS NULL
