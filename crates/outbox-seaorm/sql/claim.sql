WITH horizon AS MATERIALIZED (
    SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin
),
parked AS MATERIALIZED (
    SELECT id, xid, topic, event_key, next_attempt_at <= now() AS due
    FROM event_outbox
    WHERE next_attempt_at IS NOT NULL AND published_at IS NULL AND dead_lettered_at IS NULL
),
retries AS (
    SELECT p.id
    FROM parked p
    WHERE p.due
      AND NOT EXISTS (
          SELECT 1 FROM parked w
          WHERE NOT w.due AND w.topic = p.topic AND w.event_key = p.event_key
            AND (w.xid, w.id) < (p.xid, p.id))
    ORDER BY p.xid, p.id
    LIMIT $1
),
fresh AS (
    SELECT o.id, o.xid, o.event_id, o.aggregate_type, o.aggregate_id, o.event_type, o.topic,
           o.event_key, o.payload, o.headers, o.created_at, o.attempts
    FROM event_outbox o
    WHERE o.published_at IS NULL AND o.dead_lettered_at IS NULL AND o.next_attempt_at IS NULL
      AND (o.xid, o.id) > ($2::text::xid8, $3::bigint)
      AND o.xid < (SELECT xmin FROM horizon)
    ORDER BY o.xid, o.id
    LIMIT $1
)
SELECT 1 AS lane, o.xid, false AS blocked,
       o.id, o.event_id, o.aggregate_type, o.aggregate_id, o.event_type, o.topic, o.event_key,
       o.payload, o.headers, o.created_at, o.attempts
FROM retries r JOIN event_outbox o ON o.id = r.id
UNION ALL
SELECT 2 AS lane, f.xid,
       EXISTS (SELECT 1 FROM parked p WHERE p.topic = f.topic AND p.event_key = f.event_key),
       f.id, f.event_id, f.aggregate_type, f.aggregate_id, f.event_type, f.topic, f.event_key,
       f.payload, f.headers, f.created_at, f.attempts
FROM fresh f
ORDER BY lane, xid, id
