-- Per-user state, keyed by the token subject (`sub`).

CREATE TABLE user_universes (
    subject        text PRIMARY KEY CHECK (length(subject) BETWEEN 1 AND 256),
    symbols        text[] NOT NULL DEFAULT '{}',
    universe_keys  text[] NOT NULL DEFAULT '{}',
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE user_watchlists (
    subject     text NOT NULL CHECK (length(subject) BETWEEN 1 AND 256),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    symbols     text[] NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (subject, name)
);

CREATE TABLE user_filters (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subject     text NOT NULL CHECK (length(subject) BETWEEN 1 AND 256),
    name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    filter      jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (subject, name)
);
