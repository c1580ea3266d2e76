-- Deletes up to $2 inbox rows processed more than $1 seconds ago, oldest first.
DELETE FROM event_inbox WHERE (consumer, event_id) IN (
    SELECT consumer, event_id FROM event_inbox
    WHERE processed_at < now() - make_interval(secs => $1)
    ORDER BY processed_at
    LIMIT $2)
