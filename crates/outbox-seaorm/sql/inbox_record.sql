-- Records a batch of inbox entries in one statement: one array a column ($1 consumers, $2 event
-- ids, $3 topics, $4 partitions, $5 offsets, $6 event types, $7 correlation ids). Returns the
-- rows inserted; an entry the inbox already holds, or one repeated in the batch, is skipped.
INSERT INTO event_inbox (consumer, event_id, topic, partition, kafka_offset, event_type, correlation_id)
SELECT * FROM unnest($1::text[], $2::uuid[], $3::text[], $4::integer[], $5::bigint[], $6::text[], $7::text[])
ON CONFLICT (consumer, event_id) DO NOTHING
RETURNING consumer, event_id
