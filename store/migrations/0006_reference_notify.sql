-- Reference data changes are announced to every hub node (NOTIFY tickstock_reference, sent at commit),
-- which drops its in-process copy of universes and sectors and the cached responses built on them.
-- Statement-level, so a bulk load sends one notice per statement, not one per row.

CREATE FUNCTION tickstock_reference_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tickstock_reference', TG_TABLE_NAME);
    RETURN NULL;
END
$$;

CREATE TRIGGER symbols_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON symbols
    FOR EACH STATEMENT EXECUTE FUNCTION tickstock_reference_changed();
CREATE TRIGGER universes_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON universes
    FOR EACH STATEMENT EXECUTE FUNCTION tickstock_reference_changed();
CREATE TRIGGER universe_members_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON universe_members
    FOR EACH STATEMENT EXECUTE FUNCTION tickstock_reference_changed();
