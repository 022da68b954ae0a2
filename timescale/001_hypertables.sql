-- Run by migration 0001 only when the timescaledb extension is available.
-- Turns the time-series tables into hypertables and declares how they compress.
-- Compression and retention *policies* depend on settings and are (re)applied at
-- server start by app/storage/timescale.py (see timescale/policies.sql).

SELECT create_hypertable('sessions', 'started_at',
       chunk_time_interval => INTERVAL '7 days', migrate_data => true, if_not_exists => true);
SELECT create_hypertable('watch_intervals', 'session_started_at',
       chunk_time_interval => INTERVAL '7 days', migrate_data => true, if_not_exists => true);
SELECT create_hypertable('events', 'at',
       chunk_time_interval => INTERVAL '1 day', migrate_data => true, if_not_exists => true);

-- Queries always filter by video and time: segment by video, order by time.
ALTER TABLE sessions SET (timescaledb.compress,
      timescaledb.compress_segmentby = 'video_id',
      timescaledb.compress_orderby = 'started_at DESC, id');
ALTER TABLE watch_intervals SET (timescaledb.compress,
      timescaledb.compress_segmentby = 'video_id',
      timescaledb.compress_orderby = 'session_started_at DESC, session_id');
ALTER TABLE events SET (timescaledb.compress,
      timescaledb.compress_segmentby = 'video_id',
      timescaledb.compress_orderby = 'at DESC, session_id');
