-- Hourly (UTC) roll-up of sessions per video and device class: the building block for
-- dashboards over long spans. The REST API answers exactly from the base tables (so
-- that plain PostgreSQL and TimescaleDB agree to the last digit); this aggregate is
-- for ad-hoc SQL and future fast paths.
CREATE MATERIALIZED VIEW sessions_hourly
WITH (timescaledb.continuous, timescaledb.materialized_only = false) AS
SELECT video_id,
       time_bucket(INTERVAL '1 hour', started_at) AS bucket,
       browser, platform, device,
       count(*) AS sessions,
       count(*) FILTER (WHERE watch_seconds >= 1) AS views,
       sum(watch_seconds) AS watch_seconds
FROM sessions
GROUP BY video_id, bucket, browser, platform, device
WITH NO DATA;
