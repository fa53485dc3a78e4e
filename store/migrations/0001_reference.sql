-- Reference data: symbols, universes and their members, pattern definitions.

CREATE TABLE symbols (
    symbol      text PRIMARY KEY CHECK (symbol ~ '^[A-Z0-9.$\-/^=]{1,15}$'),
    name        text NOT NULL DEFAULT '',
    exchange    text,
    type        text NOT NULL DEFAULT 'stock'
                CHECK (type IN ('stock', 'etf', 'fund', 'preferred', 'warrant', 'unit', 'right', 'note', 'index', 'other')),
    sector      text,
    industry    text,
    market_cap  bigint CHECK (market_cap IS NULL OR market_cap >= 0),
    active      boolean NOT NULL DEFAULT true,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX symbols_sector_idx ON symbols (sector) WHERE sector IS NOT NULL;
CREATE INDEX symbols_exchange_idx ON symbols (exchange);
-- Prefix search on symbol and case-insensitive prefix search on name.
CREATE INDEX symbols_symbol_prefix_idx ON symbols (symbol text_pattern_ops);
CREATE INDEX symbols_name_prefix_idx ON symbols (lower(name) text_pattern_ops);

CREATE TABLE universes (
    key          text PRIMARY KEY CHECK (key ~ '^[a-z0-9][a-z0-9_\-]{0,63}$'),
    name         text NOT NULL,
    kind         text NOT NULL CHECK (kind IN ('index', 'sector', 'etf', 'theme', 'custom')),
    description  text NOT NULL DEFAULT '',
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE universe_members (
    universe  text NOT NULL REFERENCES universes (key) ON DELETE CASCADE,
    symbol    text NOT NULL REFERENCES symbols (symbol) ON DELETE CASCADE,
    weight    double precision CHECK (weight IS NULL OR weight >= 0),
    PRIMARY KEY (universe, symbol)
);
CREATE INDEX universe_members_symbol_idx ON universe_members (symbol);

CREATE TABLE pattern_definitions (
    name        text PRIMARY KEY CHECK (name ~ '^[a-z0-9_]{1,64}$'),
    aliases     text[] NOT NULL DEFAULT '{}',
    category    text NOT NULL CHECK (category IN ('candlestick', 'chart', 'indicator')),
    direction   text NOT NULL DEFAULT 'neutral' CHECK (direction IN ('bullish', 'bearish', 'neutral')),
    description text NOT NULL DEFAULT '',
    timeframes  text[] NOT NULL DEFAULT '{1min,5min,15min,30min,hourly,daily,weekly,monthly}',
    enabled     boolean NOT NULL DEFAULT true,
    updated_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pattern_definitions_aliases_idx ON pattern_definitions USING gin (aliases);
