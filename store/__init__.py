"""TickStock Hub storage: PostgreSQL pool, migrations, reference data and queries."""
