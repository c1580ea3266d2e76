-- Takes the rejected row of (consumer $1, event_id $2) out, for a replay in the same transaction.
DELETE FROM event_inbox
WHERE consumer = $1 AND event_id = $2 AND outcome = 'rejected'
RETURNING topic, partition, kafka_offset, key, payload, headers
