-- The plugin registry (issue 5): who activated which version where, candidates running in
-- shadow, and what they would have decided.

CREATE INDEX plugins_name ON plugins (name, created_at);

-- Every activation, rollback and shadow change, newest last. A rollback re-activates the
-- previous row's digest and config.
CREATE TABLE plugin_activations (
    id               BIGSERIAL PRIMARY KEY,
    target_kind      TEXT NOT NULL,          -- merchant | network
    target_id        TEXT NOT NULL,
    position         BIGINT NOT NULL,          -- place in the merchant's chain; 0 for a network
    action           TEXT NOT NULL,          -- activate | rollback | shadow | unshadow
    plugin_name      TEXT NOT NULL,
    digest           TEXT NOT NULL,
    previous_digest  TEXT,
    config           TEXT NOT NULL,
    previous_config  TEXT,
    actor            TEXT NOT NULL,
    at               BIGINT NOT NULL
);
CREATE INDEX plugin_activations_target ON plugin_activations (target_kind, target_id, position, id);

-- A candidate version beside a merchant's active chain: it replaces the plugin at
-- `position` in a second evaluation of every live conversion; nothing it decides is posted.
CREATE TABLE merchant_shadow (
    merchant_id    TEXT NOT NULL REFERENCES merchants(id),
    position       BIGINT NOT NULL,
    plugin_digest  TEXT NOT NULL REFERENCES plugins(digest),
    config         TEXT NOT NULL DEFAULT '{}',
    since          BIGINT NOT NULL,
    PRIMARY KEY (merchant_id)
);

-- What the candidate decided next to what the active chain decided, per conversion
-- (the last evaluation of each).
CREATE TABLE shadow_decisions (
    merchant_id        TEXT NOT NULL,
    conversion_id      TEXT NOT NULL,
    candidate_digest   TEXT NOT NULL,
    active_digests     TEXT NOT NULL,
    currency           TEXT NOT NULL,
    active_cashback    BIGINT,
    shadow_cashback    BIGINT,
    active_error       TEXT,
    shadow_error       TEXT,
    shadow_decision    TEXT,
    at                 BIGINT NOT NULL,
    PRIMARY KEY (conversion_id, candidate_digest)
);
CREATE INDEX shadow_decisions_merchant ON shadow_decisions (merchant_id, candidate_digest, at);
