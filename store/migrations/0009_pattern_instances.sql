-- Issue #12: pattern instances, and pattern definitions announced to every hub node.
--
-- A pattern instance is (symbol, pattern, timeframe, detected_at): a pattern_updated or
-- pattern_expired carries the detected_at of the detection it is about. Every event stays stored (the
-- history); the instance's latest event is its one row with superseded = false, which is what a scan
-- shows unless history is asked for. "Latest" is decided by the writer in the transaction that stores
-- an event (store/patterns.py):
--
--   1. by type: pattern_expired > pattern_updated > pattern_detected (tickstock_event_rank), so a late or
--      replayed detection never displaces a stored update or expiry, nor a late update a stored expiry;
--   2. within one type, the event stored later (later batch, or later in the same batch) wins.
--
-- A redelivered event (an id already stored) changes nothing.

CREATE FUNCTION tickstock_event_rank(event_type text) RETURNS smallint
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (CASE event_type WHEN 'pattern_expired' THEN 2 WHEN 'pattern_updated' THEN 1 ELSE 0 END)::smallint
$$;

-- A constant default: no table rewrite.
ALTER TABLE pattern_events ADD COLUMN superseded boolean NOT NULL DEFAULT false;

-- Events stored before this migration: the same rule, received_at standing for "stored later".
UPDATE pattern_events e SET superseded = true
FROM (
    SELECT id, detected_at,
           row_number() OVER (
               PARTITION BY symbol, pattern, timeframe, detected_at
               ORDER BY tickstock_event_rank(type) DESC, received_at DESC, stream_seq DESC NULLS LAST, id DESC
           ) AS place
    FROM pattern_events
) ranked
WHERE ranked.place > 1 AND e.id = ranked.id AND e.detected_at = ranked.detected_at;

-- At most one latest event per instance, enforced: two writers storing events of one instance at once
-- cannot both leave theirs as the latest (the second one's insert waits for the first one's commit,
-- fails, and is run again, now seeing it). It is also the writer's lookup of an instance's latest row.
-- It holds the partition key (detected_at), as a unique index on a partitioned table must.
CREATE UNIQUE INDEX pattern_events_instance_key ON pattern_events (symbol, pattern, timeframe, detected_at)
    WHERE NOT superseded;

-- latest_patterns: the latest event per symbol among the instances' latest events.
DROP MATERIALIZED VIEW latest_patterns;
CREATE MATERIALIZED VIEW latest_patterns AS
SELECT DISTINCT ON (symbol)
       symbol, id, type, pattern, timeframe, confidence, detected_at, expires_at, price
FROM pattern_events
WHERE NOT superseded
ORDER BY symbol, detected_at DESC, id DESC
WITH DATA;
CREATE UNIQUE INDEX latest_patterns_key ON latest_patterns (symbol);
CREATE INDEX latest_patterns_time_idx ON latest_patterns (detected_at DESC);

-- Pattern definitions change at run time (PUT /api/patterns/definitions/{name}, tickstock patterns
-- define): every hub node reloads its pattern catalog on this notice (payload 'pattern_definitions').
CREATE TRIGGER pattern_definitions_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON pattern_definitions
    FOR EACH STATEMENT EXECUTE FUNCTION tickstock_reference_changed();

-- tickstock dlq replay --reason R: the oldest dead letters with a reason not yet replayed, in order.
CREATE INDEX dead_letters_pending_idx ON dead_letters (reason, id) WHERE replayed_at IS NULL;
