-- Records a message that can never be processed, with its error and bytes; nothing when the
-- inbox already holds (consumer, event_id).
INSERT INTO event_inbox (consumer, event_id, topic, partition, kafka_offset, event_type,
                         correlation_id, outcome, error, key, payload, headers)
VALUES ($1, $2, $3, $4, $5, $6, $7, 'rejected', $8, $9, $10, $11)
ON CONFLICT (consumer, event_id) DO NOTHING
