INSERT INTO event_outbox
    (event_id, aggregate_type, aggregate_id, event_type, topic, event_key, payload, headers)
VALUES
