-- Rejected messages, oldest first, of consumer $1 (all when NULL), at most $2.
SELECT consumer, event_id, topic, partition, kafka_offset, event_type, correlation_id, error,
       processed_at, key, payload, headers
FROM event_inbox
WHERE outcome = 'rejected' AND ($1::text IS NULL OR consumer = $1)
ORDER BY processed_at, consumer, event_id
LIMIT $2
