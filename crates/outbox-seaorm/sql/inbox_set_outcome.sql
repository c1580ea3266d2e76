UPDATE event_inbox SET outcome = $3 WHERE consumer = $1 AND event_id = $2
