WITH horizon AS MATERIALIZED (
    SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin
)
SELECT
    (SELECT count(*) FROM event_outbox
     WHERE published_at IS NULL AND dead_lettered_at IS NULL) AS pending,
    (SELECT EXTRACT(EPOCH FROM now() - min(created_at))::float8 FROM (
        (SELECT created_at FROM event_outbox
         WHERE published_at IS NULL AND dead_lettered_at IS NULL AND next_attempt_at IS NULL
         ORDER BY xid, id LIMIT 1)
        UNION ALL
        (SELECT min(created_at) FROM event_outbox
         WHERE published_at IS NULL AND dead_lettered_at IS NULL AND next_attempt_at IS NOT NULL)
    ) oldest) AS oldest_age,
    (SELECT count(*) FROM event_outbox WHERE dead_lettered_at IS NOT NULL) AS dead,
    (SELECT EXTRACT(EPOCH FROM now() - created_at)::float8 FROM event_outbox
     WHERE published_at IS NULL AND dead_lettered_at IS NULL AND next_attempt_at IS NULL
       AND xid >= (SELECT xmin FROM horizon)
     ORDER BY xid, id LIMIT 1) AS horizon_wait
