-- Backtests as background jobs (issue 16, point 6). The PostgreSQL and SQLite migrations
-- of this name have the same shape.
--
-- `POST /api/v1/merchants/{merchant}/backtest` (and the dashboard, and the CLI) store a
-- job here and answer at once; whichever replica's worker claims it runs it, a page of
-- conversions at a time, writing its progress and the comparison so far after each page.
-- A claim is a lease: a replica that dies mid-run stops renewing it, and another takes
-- the job over from its last page once the lease ran out.
CREATE TABLE backtests (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    merchant_id    TEXT NOT NULL,
    plugin_digest  TEXT NOT NULL,
    -- The candidate's configuration as resolved when queued (given, or inherited).
    config         TEXT NOT NULL,
    -- Its place in the chain, resolved when queued.
    position       INTEGER NOT NULL,
    -- The window of rule times [from_at, to_at), fixed when queued.
    from_at        INTEGER NOT NULL,
    to_at          INTEGER NOT NULL,
    -- How many differences the result lists.
    diff_limit     INTEGER NOT NULL,
    state          TEXT NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
    -- Conversions of the window read so far (compared or skipped), and how many there are.
    processed      INTEGER NOT NULL DEFAULT 0,
    total          INTEGER,
    skipped        INTEGER NOT NULL DEFAULT 0,
    -- Where the next page starts: the last (rule_at, id) read.
    cursor_at      INTEGER,
    cursor_id      TEXT,
    -- The comparison so far (JSON), final once done.
    result         TEXT,
    error          TEXT,
    created_by     TEXT NOT NULL,
    created_at     INTEGER NOT NULL,
    started_at     INTEGER,
    finished_at    INTEGER,
    -- How many times a worker claimed it (more than one: taken over after a lost lease).
    attempts       INTEGER NOT NULL DEFAULT 0,
    lease_owner    TEXT,
    lease_until    INTEGER
);
-- The workers' claim: queued jobs, and running ones whose lease ran out, oldest first.
CREATE INDEX backtests_state ON backtests (state, id);
-- A merchant's backtests, newest first (the API's and dashboard's lists).
CREATE INDEX backtests_merchant ON backtests (merchant_id, id);
-- A backtest's pages: a merchant's decided conversions by rule time.
CREATE INDEX conversions_merchant_rule_at ON conversions (merchant_id, rule_at, id) WHERE decision IS NOT NULL;
