-- Scheduled jobs (cron), their runs, and where each network's API import stands.

CREATE TABLE jobs (
    name         TEXT PRIMARY KEY,
    schedule     TEXT NOT NULL,
    kind         TEXT NOT NULL CHECK (kind IN ('mature', 'import')),
    target       TEXT,
    enabled      INTEGER NOT NULL DEFAULT 1,
    next_run_at  INTEGER NOT NULL,
    -- A replica owns a due job while its lease lasts; an expired lease can be taken over.
    lease_owner  TEXT,
    lease_until  INTEGER,
    created_at   INTEGER NOT NULL
);

-- One row per tick: the unique key makes "each run happens once" hold across replicas.
CREATE TABLE job_runs (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    job_name       TEXT NOT NULL,
    scheduled_for  INTEGER NOT NULL,
    owner          TEXT NOT NULL,
    started_at     INTEGER NOT NULL,
    finished_at    INTEGER,
    outcome        TEXT NOT NULL,
    missed         INTEGER NOT NULL DEFAULT 0,
    counts         TEXT NOT NULL DEFAULT '{}',
    detail         TEXT,
    UNIQUE (job_name, scheduled_for)
);
CREATE INDEX job_runs_job ON job_runs(job_name, id);

CREATE TABLE import_state (
    network_id    TEXT PRIMARY KEY,
    window_start  INTEGER NOT NULL,
    window_end    INTEGER,
    cursor        TEXT,
    updated_at    INTEGER NOT NULL
);
