-- The version of the configuration the hot path caches (issue 14 point 4): networks,
-- merchants, their rule chains and shadow candidates. Every change to those tables bumps
-- it, in the changing transaction, whoever makes it (a server, a CLI in another process,
-- SQL by hand). The write path reads it once per batch and refuses a command decided on
-- an older version (it is decided again on the new one); see host/src/catalog.rs.
CREATE TABLE config_version (
    id      INTEGER PRIMARY KEY CHECK (id = 1),
    version INTEGER NOT NULL
);
INSERT INTO config_version (id, version) VALUES (1, 1);

CREATE TRIGGER config_networks_insert AFTER INSERT ON networks
BEGIN UPDATE config_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER config_networks_update AFTER UPDATE ON networks
BEGIN UPDATE config_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER config_networks_delete AFTER DELETE ON networks
BEGIN UPDATE config_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER config_merchants_insert AFTER INSERT ON merchants
BEGIN UPDATE config_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER config_merchants_update AFTER UPDATE ON merchants
BEGIN UPDATE config_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER config_merchants_delete AFTER DELETE ON merchants
BEGIN UPDATE config_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER config_rules_insert AFTER INSERT ON merchant_rules
BEGIN UPDATE config_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER config_rules_update AFTER UPDATE ON merchant_rules
BEGIN UPDATE config_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER config_rules_delete AFTER DELETE ON merchant_rules
BEGIN UPDATE config_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER config_shadow_insert AFTER INSERT ON merchant_shadow
BEGIN UPDATE config_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER config_shadow_update AFTER UPDATE ON merchant_shadow
BEGIN UPDATE config_version SET version = version + 1 WHERE id = 1; END;
CREATE TRIGGER config_shadow_delete AFTER DELETE ON merchant_shadow
BEGIN UPDATE config_version SET version = version + 1 WHERE id = 1; END;
