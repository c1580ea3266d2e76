-- Every part reads each parked row a bounded number of times: a claim costs in proportion to the
-- parked rows and the batch, never to their product (a broker outage can park many thousands).
WITH horizon AS MATERIALIZED (
    SELECT pg_snapshot_xmin(pg_current_snapshot()) AS xmin
),
parked AS MATERIALIZED (
    SELECT id, xid, topic, event_key, next_attempt_at <= now() AS due
    FROM event_outbox
    WHERE next_attempt_at IS NOT NULL AND published_at IS NULL AND dead_lettered_at IS NULL
),
-- The first parked row of each topic and key that is not due yet: it holds back the rest.
waiting AS (
    SELECT DISTINCT ON (topic, event_key) topic, event_key, xid, id
    FROM parked
    WHERE NOT due
    ORDER BY topic, event_key, xid, id
),
retries AS (
    SELECT p.id
    FROM parked p
    LEFT JOIN waiting w ON w.topic = p.topic AND w.event_key = p.event_key
    WHERE p.due AND (w.id IS NULL OR (p.xid, p.id) < (w.xid, w.id))
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
-- Whether a parked row of its topic and key exists: one probe of event_outbox_parked_idx.
SELECT 2 AS lane, f.xid,
       EXISTS (SELECT 1 FROM event_outbox p
               WHERE p.topic = f.topic AND p.event_key = f.event_key
                 AND p.next_attempt_at IS NOT NULL AND p.published_at IS NULL
                 AND p.dead_lettered_at IS NULL),
       f.id, f.event_id, f.aggregate_type, f.aggregate_id, f.event_type, f.topic, f.event_key,
       f.payload, f.headers, f.created_at, f.attempts
FROM fresh f
ORDER BY lane, xid, id
