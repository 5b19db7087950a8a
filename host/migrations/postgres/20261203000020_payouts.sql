-- Payouts (issue 13, point 3): a user's available cashback paid out. A request moves the
-- amount from the user's `available` account to `payout_in_flight`; a rejection or a
-- failed payment moves it back; a payment moves it out to the platform's `payouts_paid`
-- (docs/LEDGER.md). Each step is a journaled command applied by the group-commit writer;
-- this table is its state. The SQLite migration of the same name has the same shape.

CREATE TABLE payouts (
    id            TEXT PRIMARY KEY,
    user_id       TEXT NOT NULL,
    currency      TEXT NOT NULL,
    -- Minor units; fixed when requested.
    amount        BIGINT NOT NULL CHECK (amount > 0),
    status        TEXT NOT NULL CHECK (status IN ('requested', 'approved', 'rejected', 'paid', 'failed')),
    -- The requester's idempotency key (the API's Idempotency-Key, or one generated):
    -- the same key for the same user is the same payout, on every replica.
    request_key   TEXT NOT NULL,
    -- Who asked: the API token's name, or the operator of the CLI.
    requested_by  TEXT NOT NULL,
    -- The external payment reference (bank transfer id...), once paid.
    reference     TEXT,
    -- Who made the last decision, and why (a rejection or a failed payment).
    operator      TEXT,
    reason        TEXT,
    requested_at  BIGINT NOT NULL,
    approved_at   BIGINT,
    paid_at       BIGINT,
    -- When it was rejected or its payment failed.
    closed_at     BIGINT,
    updated_at    BIGINT NOT NULL,
    -- Bumped on every change: a transition names the version it saw (optimistic
    -- concurrency), and the outbox orders a payout's changes by it.
    version       BIGINT NOT NULL DEFAULT 0,
    UNIQUE (user_id, request_key)
);
CREATE INDEX payouts_status ON payouts(status, requested_at);
CREATE INDEX payouts_user ON payouts(user_id, requested_at);
CREATE INDEX payouts_requested ON payouts(requested_at);
CREATE INDEX payouts_paid ON payouts(paid_at) WHERE paid_at IS NOT NULL;

-- Every step of every payout, who made it and why.
CREATE TABLE payout_history (
    id           BIGSERIAL PRIMARY KEY,
    payout_id    TEXT NOT NULL,
    journal_seq  BIGINT,
    at           BIGINT NOT NULL,
    from_status  TEXT,
    to_status    TEXT NOT NULL,
    operator     TEXT,
    detail       TEXT NOT NULL
);
CREATE INDEX payout_history_payout ON payout_history(payout_id);

-- The outbox carries payout changes too: `subject` says which. For a payout,
-- `conversion_id` holds the payout's id, `version` its version, `state` and `status`
-- its status, and `snapshot` the payout's values (callbacks::outbox::PayoutSnapshot).
ALTER TABLE conversion_changes ADD COLUMN subject TEXT NOT NULL DEFAULT 'conversion'
    CHECK (subject IN ('conversion', 'payout'));

-- What an endpoint is sent: conversion changes (as before: on by default) and payout
-- changes (off by default: a partner opts in).
ALTER TABLE callback_endpoints ADD COLUMN send_conversions BIGINT NOT NULL DEFAULT 1;
ALTER TABLE callback_endpoints ADD COLUMN send_payouts BIGINT NOT NULL DEFAULT 0;
