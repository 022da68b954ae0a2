-- Applied at every server start (idempotent). :compress_after and :retention are replaced
-- by intervals built from integer settings (never user text); a NULL retention means
-- "keep forever".
-- Raw events live inside the session rows (sessions.events): the server drops them after
-- METRICS_RAW_EVENTS_RETENTION_DAYS itself; no policy can drop one column.
SELECT remove_compression_policy('sessions', if_exists => true);
SELECT add_compression_policy('sessions', compress_after => :compress_after);
SELECT remove_retention_policy(t, if_exists => true)
  FROM unnest(ARRAY['sessions', 'impressions']::regclass[]) AS t;
SELECT add_retention_policy(t, drop_after => :retention)
  FROM unnest(ARRAY['sessions', 'impressions']::regclass[]) AS t
 WHERE :retention IS NOT NULL;
SELECT remove_continuous_aggregate_policy('sessions_hourly', if_exists => true);
-- start_offset NULL: every refresh covers all time, so backfilled or imported sessions
-- (older than any fixed window) are materialised too; only invalidated buckets are redone.
SELECT add_continuous_aggregate_policy('sessions_hourly',
       start_offset => NULL, end_offset => INTERVAL '1 hour',
       schedule_interval => INTERVAL '30 minutes');
