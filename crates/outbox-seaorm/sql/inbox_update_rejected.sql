-- A replay failed for good: the rejected row takes the new error, and its retention restarts.
UPDATE event_inbox SET error = $3, processed_at = now()
WHERE consumer = $1 AND event_id = $2 AND outcome = 'rejected'
