SELECT name, setting FROM pg_settings
WHERE name IN ('application_name', 'statement_timeout', 'idle_in_transaction_session_timeout',
               'tcp_keepalives_idle', 'tcp_keepalives_interval', 'tcp_keepalives_count',
               'tcp_user_timeout')
