-- Aggregates read most often, refreshed CONCURRENTLY by the hub on a schedule
-- (each needs a unique index for that).

CREATE MATERIALIZED VIEW pattern_stats_daily AS
SELECT (date_trunc('day', detected_at AT TIME ZONE 'UTC'))::date AS day,
       pattern,
       timeframe,
       count(*)::bigint            AS events,
       count(DISTINCT symbol)::bigint AS symbols,
       avg(confidence)::real       AS avg_confidence,
       max(confidence)             AS max_confidence,
       max(detected_at)            AS last_detected_at
FROM pattern_events
GROUP BY 1, 2, 3
WITH DATA;
CREATE UNIQUE INDEX pattern_stats_daily_key ON pattern_stats_daily (day, pattern, timeframe);

CREATE MATERIALIZED VIEW latest_patterns AS
SELECT DISTINCT ON (symbol)
       symbol, id, type, pattern, timeframe, confidence, detected_at, expires_at, price
FROM pattern_events
ORDER BY symbol, detected_at DESC, id DESC
WITH DATA;
CREATE UNIQUE INDEX latest_patterns_key ON latest_patterns (symbol);
CREATE INDEX latest_patterns_time_idx ON latest_patterns (detected_at DESC);
