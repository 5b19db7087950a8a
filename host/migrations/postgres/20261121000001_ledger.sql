-- Ledger and conversion lifecycle. Times are UTC milliseconds since the epoch; money is
-- integer minor units. The SQLite migration of the same name has the same shape.

CREATE TABLE users (
    id          TEXT PRIMARY KEY,
    email       TEXT,
    created_at  BIGINT NOT NULL
);

CREATE TABLE merchants (
    id                 TEXT PRIMARY KEY,
    name               TEXT NOT NULL,
    processing_mode    TEXT NOT NULL DEFAULT 'automatic' CHECK (processing_mode IN ('automatic', 'manual')),
    reward_delay_days  BIGINT NOT NULL DEFAULT 30,
    created_at         BIGINT NOT NULL
);

-- Which merchant a network's merchant reference means.
CREATE TABLE merchant_refs (
    network_id    TEXT NOT NULL,
    merchant_ref  TEXT NOT NULL,
    merchant_id   TEXT NOT NULL REFERENCES merchants(id),
    PRIMARY KEY (network_id, merchant_ref)
);

CREATE TABLE clicks (
    click_id     TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL,
    merchant_id  TEXT,
    network_id   TEXT,
    ref_id       TEXT,
    created_at   BIGINT NOT NULL
);

-- Plugin components, content-addressed: every replica reads the same bytes.
CREATE TABLE plugins (
    digest      TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    version     TEXT NOT NULL,
    kind        TEXT NOT NULL,
    bytes       BYTEA NOT NULL,
    created_at  BIGINT NOT NULL
);

-- A merchant's rule chain, applied in position order.
CREATE TABLE merchant_rules (
    merchant_id    TEXT NOT NULL REFERENCES merchants(id),
    position       BIGINT NOT NULL,
    plugin_digest  TEXT NOT NULL REFERENCES plugins(digest),
    config         TEXT NOT NULL DEFAULT '{}',
    PRIMARY KEY (merchant_id, position)
);

-- Every command that changed or may change state, in order: replaying it from empty
-- rebuilds every balance. Network events are deduplicated on their fingerprint.
CREATE TABLE journal (
    seq          BIGSERIAL PRIMARY KEY,
    kind         TEXT NOT NULL,
    fingerprint  TEXT UNIQUE,
    payload      TEXT NOT NULL,
    recorded_at  BIGINT NOT NULL
);

CREATE TABLE conversions (
    id                  TEXT PRIMARY KEY,
    network_id          TEXT NOT NULL,
    transaction_id      TEXT NOT NULL,
    click_id            TEXT,
    user_id             TEXT,
    merchant_id         TEXT,
    order_id            TEXT,
    event_type          TEXT NOT NULL,
    state               TEXT NOT NULL,
    status              TEXT NOT NULL,
    status_reason       TEXT,
    currency            TEXT NOT NULL,
    amount              BIGINT NOT NULL,
    commission          BIGINT NOT NULL,
    cashback            BIGINT NOT NULL DEFAULT 0,
    reward_delay_days   BIGINT,
    posted_pending      BIGINT NOT NULL DEFAULT 0,
    posted_available    BIGINT NOT NULL DEFAULT 0,
    posted_receivable   BIGINT NOT NULL DEFAULT 0,
    line_items          TEXT NOT NULL DEFAULT '[]',
    decision            TEXT,
    completed_at        BIGINT,
    matures_at          BIGINT,
    matured_at          BIGINT,
    event_time          BIGINT NOT NULL,
    clicked_at          BIGINT,
    reported_at         BIGINT NOT NULL,
    rule_at             BIGINT,
    ledger_at           BIGINT,
    updated_at          BIGINT NOT NULL,
    version             BIGINT NOT NULL DEFAULT 0,
    UNIQUE (network_id, transaction_id)
);
CREATE INDEX conversions_status ON conversions(status);
CREATE INDEX conversions_click ON conversions(click_id);
CREATE INDEX conversions_user ON conversions(user_id);
CREATE INDEX conversions_maturity ON conversions(matures_at) WHERE matured_at IS NULL;

-- What happened to each conversion, including what was ignored and why.
CREATE TABLE conversion_history (
    id             BIGSERIAL PRIMARY KEY,
    conversion_id  TEXT NOT NULL,
    journal_seq    BIGINT,
    at             BIGINT NOT NULL,
    kind           TEXT NOT NULL,
    from_state     TEXT,
    to_state       TEXT,
    detail         TEXT NOT NULL
);
CREATE INDEX conversion_history_conversion ON conversion_history(conversion_id);

CREATE TABLE accounts (
    id        BIGSERIAL PRIMARY KEY,
    owner     TEXT NOT NULL,
    kind      TEXT NOT NULL,
    currency  TEXT NOT NULL,
    balance   BIGINT NOT NULL DEFAULT 0,
    UNIQUE (owner, kind, currency)
);

-- Append-only. The idempotency key is derived from the cause, so a replay posts nothing twice.
CREATE TABLE ledger_transactions (
    id               BIGSERIAL PRIMARY KEY,
    idempotency_key  TEXT NOT NULL UNIQUE,
    conversion_id    TEXT,
    journal_seq      BIGINT,
    cause            TEXT NOT NULL,
    operator         TEXT,
    reason           TEXT,
    plugin_name      TEXT,
    plugin_version   TEXT,
    plugin_digest    TEXT,
    created_at       BIGINT NOT NULL
);
CREATE INDEX ledger_transactions_conversion ON ledger_transactions(conversion_id);

CREATE TABLE ledger_entries (
    id              BIGSERIAL PRIMARY KEY,
    transaction_id  BIGINT NOT NULL REFERENCES ledger_transactions(id),
    account_id      BIGINT NOT NULL REFERENCES accounts(id),
    amount          BIGINT NOT NULL,
    currency        TEXT NOT NULL
);
CREATE INDEX ledger_entries_account ON ledger_entries(account_id);
CREATE INDEX ledger_entries_transaction ON ledger_entries(transaction_id);

-- The ledger is append-only: the database itself refuses edits and deletions.
CREATE FUNCTION refuse_ledger_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the ledger is append-only (% on %)', TG_OP, TG_TABLE_NAME;
END;
$$;
CREATE TRIGGER ledger_entries_append_only BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION refuse_ledger_change();
CREATE TRIGGER ledger_transactions_append_only BEFORE UPDATE OR DELETE ON ledger_transactions
    FOR EACH ROW EXECUTE FUNCTION refuse_ledger_change();
