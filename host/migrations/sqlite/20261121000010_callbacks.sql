-- Partner callbacks (seeds 001, 003, 004): partners, their endpoints, the transactional
-- outbox of conversion changes, deliveries with their attempts, and operator alerts.
-- The PostgreSQL migration of the same name has the same shape.

CREATE TABLE partners (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    created_at  INTEGER NOT NULL
);

-- Where and how a partner is told about conversion changes.
CREATE TABLE callback_endpoints (
    id                    TEXT PRIMARY KEY,
    partner_id            TEXT NOT NULL REFERENCES partners(id),
    url_template          TEXT NOT NULL,
    method                TEXT NOT NULL DEFAULT 'GET' CHECK (method IN ('GET', 'POST')),
    -- Static custom parameters, a JSON object of strings.
    params                TEXT NOT NULL DEFAULT '{}',
    -- Signing secrets, newest first, one per line (several while a secret is rotated).
    secrets               TEXT NOT NULL DEFAULT '',
    signature_param       TEXT NOT NULL DEFAULT 'signature',
    -- Only conversions of this merchant / network (NULL: all).
    merchant_id           TEXT,
    network_id            TEXT,
    -- Seed 003: no ref_id on the click, no callback.
    require_ref_id        INTEGER NOT NULL DEFAULT 0,
    -- Retries: seed 003's default is 3 tries 5 minutes apart.
    max_attempts          INTEGER NOT NULL DEFAULT 3,
    backoff               TEXT NOT NULL DEFAULT 'fixed' CHECK (backoff IN ('fixed', 'exponential')),
    retry_delay_ms        INTEGER NOT NULL DEFAULT 300000,
    max_delay_ms          INTEGER NOT NULL DEFAULT 86400000,
    jitter_pct            INTEGER NOT NULL DEFAULT 0,
    timeout_ms            INTEGER NOT NULL DEFAULT 10000,
    -- After this many failed attempts in a row the endpoint is disabled (and an alert raised).
    disable_after         INTEGER NOT NULL DEFAULT 20,
    enabled               INTEGER NOT NULL DEFAULT 1,
    consecutive_failures  INTEGER NOT NULL DEFAULT 0,
    -- When the current run of failures began (what re-enabling replays).
    failing_since         INTEGER,
    disabled_at           INTEGER,
    disabled_reason       TEXT,
    created_at            INTEGER NOT NULL,
    updated_at            INTEGER NOT NULL
);

-- The outbox: one row per change of a conversion (state, status, amounts), written in the
-- same transaction as the change itself, so a crash can neither lose nor invent one.
CREATE TABLE conversion_changes (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    conversion_id    TEXT NOT NULL,
    -- The conversion's version after the change: orders the changes of one conversion.
    version          INTEGER NOT NULL,
    journal_seq      INTEGER,
    user_id          TEXT,
    click_id         TEXT,
    merchant_id      TEXT,
    network_id       TEXT,
    state            TEXT NOT NULL,
    status           TEXT NOT NULL,
    -- What the user's digest says about it (tracked, adjusted, completed, rejected,
    -- reversed), or NULL when the user is not told.
    notify_kind      TEXT,
    -- The values callbacks and digests show, as they were at the change (JSON).
    snapshot         TEXT NOT NULL,
    at               INTEGER NOT NULL,
    -- The notification batch that took it.
    notify_batch_id  INTEGER,
    UNIQUE (conversion_id, version)
);
CREATE INDEX conversion_changes_unbatched ON conversion_changes(at) WHERE notify_batch_id IS NULL AND notify_kind IS NOT NULL;
CREATE INDEX conversion_changes_batch ON conversion_changes(notify_batch_id, user_id);

-- One row per (endpoint, change).
CREATE TABLE callback_deliveries (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    endpoint_id      TEXT NOT NULL REFERENCES callback_endpoints(id),
    change_id        INTEGER NOT NULL REFERENCES conversion_changes(id),
    conversion_id    TEXT NOT NULL,
    version          INTEGER NOT NULL,
    -- pending (to send or retry), delivered (a 200), failed (retries exhausted),
    -- skipped (the endpoint's filter refused it at send time).
    state            TEXT NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'delivered', 'failed', 'skipped')),
    -- Attempts since it was created or last replayed.
    attempts         INTEGER NOT NULL DEFAULT 0,
    next_attempt_at  INTEGER NOT NULL,
    -- The replica sending it owns it while its lease lasts.
    lease_owner      TEXT,
    lease_until      INTEGER,
    last_status      INTEGER,
    last_error       TEXT,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL,
    delivered_at     INTEGER,
    UNIQUE (endpoint_id, change_id)
);
CREATE INDEX callback_deliveries_due ON callback_deliveries(state, next_attempt_at);
CREATE INDEX callback_deliveries_order ON callback_deliveries(endpoint_id, conversion_id, version);
CREATE INDEX callback_deliveries_created ON callback_deliveries(created_at);

-- The delivery log: every attempt, and every tester request (delivery_id NULL).
-- Signatures are masked; secrets are never written here.
CREATE TABLE callback_attempts (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    delivery_id       INTEGER,
    endpoint_id       TEXT NOT NULL,
    attempt           INTEGER NOT NULL,
    started_at        INTEGER NOT NULL,
    latency_ms        INTEGER NOT NULL,
    method            TEXT NOT NULL,
    url               TEXT NOT NULL,
    request_headers   TEXT NOT NULL,
    request_body      TEXT,
    status            INTEGER,
    error             TEXT,
    response_excerpt  TEXT,
    -- delivered, retry, failed (given up), test
    outcome           TEXT NOT NULL
);
CREATE INDEX callback_attempts_delivery ON callback_attempts(delivery_id);
CREATE INDEX callback_attempts_endpoint ON callback_attempts(endpoint_id, id);

-- Events an operator must see (an endpoint disabled after repeated failures...).
CREATE TABLE alerts (
    id               INTEGER PRIMARY KEY AUTOINCREMENT,
    at               INTEGER NOT NULL,
    kind             TEXT NOT NULL,
    subject          TEXT NOT NULL,
    message          TEXT NOT NULL,
    acknowledged_at  INTEGER
);

-- Two more system jobs: callback retries and notification batches. SQLite cannot alter a
-- CHECK constraint: the table is rebuilt with the same rows.
CREATE TABLE jobs_new (
    name         TEXT PRIMARY KEY,
    schedule     TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('mature', 'import', 'deliver', 'notify')),
    target       TEXT,
    enabled      INTEGER NOT NULL DEFAULT 1,
    next_run_at  INTEGER NOT NULL,
    lease_owner  TEXT,
    lease_until  INTEGER,
    created_at   INTEGER NOT NULL
);
INSERT INTO jobs_new (name, schedule, kind, target, enabled, next_run_at, lease_owner, lease_until, created_at)
    SELECT name, schedule, kind, target, enabled, next_run_at, lease_owner, lease_until, created_at FROM jobs;
DROP TABLE jobs;
ALTER TABLE jobs_new RENAME TO jobs;
