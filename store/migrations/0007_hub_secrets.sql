-- Per-deployment secrets the hub makes for itself (the scan-cursor key, the producer-header key):
-- random, created once by whichever node asks first, shared by every node through the database, and
-- separate from the JWT secret, which a JWKS-only deployment does not have.

CREATE TABLE hub_secrets (
    name       text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]{0,62}$'),
    value      bytea NOT NULL CHECK (octet_length(value) >= 32),
    created_at timestamptz NOT NULL DEFAULT now()
);
