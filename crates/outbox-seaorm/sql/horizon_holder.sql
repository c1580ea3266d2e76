SELECT a.pid,
       EXTRACT(EPOCH FROM now() - a.xact_start)::float8 AS age,
       a.state,
       a.query_start,
       left(a.query, 200) AS query,
       a.datname::text AS datname,
       a.usename::text AS usename,
       a.application_name
FROM pg_stat_activity a
WHERE a.backend_xid IS NOT NULL
ORDER BY age(a.backend_xid) DESC
LIMIT 1
