-- The version of the configuration the hot path caches (issue 14 point 4): networks,
-- merchants, their rule chains and shadow candidates. Every change to those tables bumps
-- it, in the changing transaction, whoever makes it (a replica, a CLI, SQL by hand), and
-- notifies `cashbackd_config` at commit so that every replica drops its cache at once.
-- The write path also reads it once per batch and refuses a command decided on an older
-- version (it is decided again on the new one); see host/src/catalog.rs.
CREATE TABLE config_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version BIGINT NOT NULL
);
INSERT INTO config_version (id, version) VALUES (1, 1);

CREATE FUNCTION cashbackd_config_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    v BIGINT;
BEGIN
    UPDATE config_version SET version = version + 1 WHERE id = 1 RETURNING version INTO v;
    PERFORM pg_notify('cashbackd_config', v::text);
    RETURN NULL;
END;
$$;

CREATE TRIGGER config_networks AFTER INSERT OR UPDATE OR DELETE ON networks
    FOR EACH STATEMENT EXECUTE FUNCTION cashbackd_config_changed();
CREATE TRIGGER config_merchants AFTER INSERT OR UPDATE OR DELETE ON merchants
    FOR EACH STATEMENT EXECUTE FUNCTION cashbackd_config_changed();
CREATE TRIGGER config_rules AFTER INSERT OR UPDATE OR DELETE ON merchant_rules
    FOR EACH STATEMENT EXECUTE FUNCTION cashbackd_config_changed();
CREATE TRIGGER config_shadow AFTER INSERT OR UPDATE OR DELETE ON merchant_shadow
    FOR EACH STATEMENT EXECUTE FUNCTION cashbackd_config_changed();
