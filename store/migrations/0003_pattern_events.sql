-- Pattern events: one row per event, idempotent on the event id.
--
-- Plain PostgreSQL: range-partitioned by detected_at, one partition per calendar month (UTC), created
-- ahead of time by the hub (tickstock_ensure_partitions) and on demand by the writer for older events.
-- TimescaleDB (when preloaded on the server): a hypertable on detected_at with 7-day chunks instead.
--
-- A partitioned table can only enforce uniqueness on keys that include the partition key, so global
-- uniqueness of the event id is kept by pattern_event_ids, written in the same transaction.

CREATE TABLE pattern_event_ids (
    id           text PRIMARY KEY,
    detected_at  timestamptz NOT NULL
);

DO $migration$
DECLARE
    columns text := $cols$
        id           text NOT NULL CHECK (length(id) BETWEEN 1 AND 128),
        type         text NOT NULL CHECK (type IN ('pattern_detected', 'pattern_updated', 'pattern_expired')),
        symbol       text NOT NULL,
        pattern      text NOT NULL,
        timeframe    text NOT NULL
                     CHECK (timeframe IN ('1min', '5min', '15min', '30min', 'hourly', 'daily', 'weekly', 'monthly')),
        confidence   real NOT NULL CHECK (confidence >= 0 AND confidence <= 1),
        detected_at  timestamptz NOT NULL,
        expires_at   timestamptz,
        price        double precision,
        volume       double precision,
        levels       jsonb NOT NULL DEFAULT '{}',
        indicators   jsonb NOT NULL DEFAULT '{}',
        source       text NOT NULL DEFAULT 'unknown',
        payload      jsonb NOT NULL,
        stream_seq   bigint,
        received_at  timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (id, detected_at)
    $cols$;
BEGIN
    IF current_setting('shared_preload_libraries', true) LIKE '%timescaledb%'
       AND EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
        CREATE EXTENSION IF NOT EXISTS timescaledb;
        EXECUTE format('CREATE TABLE pattern_events (%s)', columns);
        PERFORM create_hypertable('pattern_events', 'detected_at', chunk_time_interval => interval '7 days');
    ELSE
        EXECUTE format('CREATE TABLE pattern_events (%s) PARTITION BY RANGE (detected_at)', columns);
    END IF;
END
$migration$;

-- Indexes for the scan filters. Every one ends in (detected_at, id) so that the default sort
-- (newest first) and keyset pagination on (detected_at, id) read them in order.
CREATE INDEX pattern_events_time_idx ON pattern_events (detected_at DESC, id DESC);
CREATE INDEX pattern_events_symbol_idx ON pattern_events (symbol, detected_at DESC, id DESC);
CREATE INDEX pattern_events_pattern_idx ON pattern_events (pattern, timeframe, detected_at DESC, id DESC);
CREATE INDEX pattern_events_timeframe_idx ON pattern_events (timeframe, detected_at DESC, id DESC);
CREATE INDEX pattern_events_seq_idx ON pattern_events (stream_seq) WHERE stream_seq IS NOT NULL;

-- Create the monthly partitions covering [lo, hi]; returns how many were created. Idempotent and safe
-- to call from several hub nodes at once. A no-op on a hypertable.
CREATE FUNCTION tickstock_ensure_partitions(lo timestamptz, hi timestamptz) RETURNS integer
LANGUAGE plpgsql AS $fn$
DECLARE
    month   timestamptz := date_trunc('month', lo AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
    next    timestamptz;
    part    text;
    created integer := 0;
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = 'pattern_events'::regclass) <> 'p' THEN
        RETURN 0;
    END IF;
    IF hi < lo THEN
        RAISE EXCEPTION 'hi (%) is before lo (%)', hi, lo;
    END IF;
    PERFORM pg_advisory_xact_lock(hashtext('tickstock_ensure_partitions'));
    WHILE month <= hi LOOP
        next := (month AT TIME ZONE 'UTC' + interval '1 month') AT TIME ZONE 'UTC';
        part := format('pattern_events_%s', to_char(month AT TIME ZONE 'UTC', 'YYYY_MM'));
        IF to_regclass(part) IS NULL THEN
            EXECUTE format('CREATE TABLE %I PARTITION OF pattern_events FOR VALUES FROM (%L) TO (%L)',
                           part, month, next);
            created := created + 1;
        END IF;
        month := next;
    END LOOP;
    RETURN created;
END
$fn$;

SELECT tickstock_ensure_partitions(now() - interval '1 month', now() + interval '1 month');
