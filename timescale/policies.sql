-- Applied at every server start (idempotent). :compress_after, :retention and
-- :raw_retention are replaced by intervals built from integer settings (never user
-- text); a NULL retention means "keep forever".
SELECT remove_compression_policy(t, if_exists => true)
  FROM unnest(ARRAY['sessions', 'watch_intervals', 'events']::regclass[]) AS t;
SELECT add_compression_policy(t, compress_after => :compress_after)
  FROM unnest(ARRAY['sessions', 'watch_intervals', 'events']::regclass[]) AS t;
SELECT remove_retention_policy(t, if_exists => true)
  FROM unnest(ARRAY['sessions', 'watch_intervals', 'events']::regclass[]) AS t;
SELECT add_retention_policy(t, drop_after => :retention)
  FROM unnest(ARRAY['sessions', 'watch_intervals']::regclass[]) AS t
 WHERE :retention IS NOT NULL;
SELECT add_retention_policy('events', drop_after => :raw_retention)
 WHERE :raw_retention IS NOT NULL;
SELECT remove_continuous_aggregate_policy('sessions_hourly', if_exists => true);
-- start_offset NULL: every refresh covers all time, so backfilled or imported sessions
-- (older than any fixed window) are materialised too; only invalidated buckets are redone.
SELECT add_continuous_aggregate_policy('sessions_hourly',
       start_offset => NULL, end_offset => INTERVAL '1 hour',
       schedule_interval => INTERVAL '30 minutes');
