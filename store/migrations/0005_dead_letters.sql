-- Dead letters: messages the hub could not accept, with the original payload and headers and why.

CREATE TABLE dead_letters (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    source_key    text NOT NULL UNIQUE,       -- e.g. 'ingest:<stream seq>': dead-lettering is idempotent
    subject       text NOT NULL,
    payload       bytea NOT NULL,
    headers       jsonb NOT NULL DEFAULT '{}',
    reason        text NOT NULL,
    detail        text NOT NULL DEFAULT '',
    errors        jsonb NOT NULL DEFAULT '[]',
    event_id      text,
    deliveries    integer NOT NULL DEFAULT 1 CHECK (deliveries >= 0),
    first_seen    timestamptz NOT NULL DEFAULT now(),
    last_seen     timestamptz NOT NULL DEFAULT now(),
    replayed_at   timestamptz,
    replay_count  integer NOT NULL DEFAULT 0
);
CREATE INDEX dead_letters_last_seen_idx ON dead_letters (last_seen DESC, id DESC);
CREATE INDEX dead_letters_reason_idx ON dead_letters (reason, last_seen DESC);
