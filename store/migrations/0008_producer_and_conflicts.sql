-- Issue #11: who produced each stored event, both payloads of an id conflict, and partitions created
-- one month at a time (never every month between two far dates).

-- "http:<token subject>" when HTTP ingest signed it, otherwise "nats:<event source>". NULL on rows
-- stored before this migration.
ALTER TABLE pattern_events ADD COLUMN producer text;

-- For an id_conflict dead letter: the canonical payload already stored under the id (the dead
-- letter's own payload is the conflicting one).
ALTER TABLE dead_letters ADD COLUMN conflict_payload bytea;

-- Make sure the monthly partitions of the given months exist, creating at most max_new of them (in
-- the order given). Returns the months (first instant, UTC) that exist afterwards; the months left out
-- were over the budget and are for a later call. Idempotent and safe from several hub nodes at once.
-- On a hypertable (TimescaleDB makes its own chunks) every month is returned.
CREATE FUNCTION tickstock_ensure_months(months timestamptz[], max_new integer) RETURNS timestamptz[]
LANGUAGE plpgsql AS $fn$
DECLARE
    m       timestamptz;
    month   timestamptz;
    next    timestamptz;
    part    text;
    created integer := 0;
    locked  boolean := false;
    ready   timestamptz[] := '{}';
BEGIN
    IF (SELECT relkind FROM pg_class WHERE oid = 'pattern_events'::regclass) <> 'p' THEN
        RETURN months;
    END IF;
    FOREACH m IN ARRAY months LOOP
        month := date_trunc('month', m AT TIME ZONE 'UTC') AT TIME ZONE 'UTC';
        part := format('pattern_events_%s', to_char(month AT TIME ZONE 'UTC', 'YYYY_MM'));
        IF to_regclass(part) IS NULL THEN
            IF created >= max_new THEN
                CONTINUE;
            END IF;
            IF NOT locked THEN
                PERFORM pg_advisory_xact_lock(hashtext('tickstock_ensure_partitions'));
                locked := true;
            END IF;
            IF to_regclass(part) IS NULL THEN  -- another node may have made it while we waited
                next := (month AT TIME ZONE 'UTC' + interval '1 month') AT TIME ZONE 'UTC';
                EXECUTE format('CREATE TABLE %I PARTITION OF pattern_events FOR VALUES FROM (%L) TO (%L)',
                               part, month, next);
                created := created + 1;
            END IF;
        END IF;
        ready := ready || month;
    END LOOP;
    RETURN ready;
END
$fn$;
