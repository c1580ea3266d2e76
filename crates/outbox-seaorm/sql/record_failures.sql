UPDATE event_outbox AS o
SET attempts = o.attempts + CASE WHEN f.kind = 'held' THEN 0 ELSE 1 END,
    last_error = f.error,
    next_attempt_at = CASE f.kind
        WHEN 'dead' THEN NULL
        WHEN 'held' THEN now()
        ELSE now() + make_interval(secs => f.delay) END,
    dead_lettered_at = CASE WHEN f.kind = 'dead' THEN now() ELSE NULL END
FROM unnest($1::bigint[], $2::text[], $3::float8[], $4::text[]) AS f(id, error, delay, kind)
WHERE o.id = f.id AND o.published_at IS NULL AND o.dead_lettered_at IS NULL
