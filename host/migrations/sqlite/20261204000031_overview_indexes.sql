-- The dashboard overview's "today" queries (issue 16, point 5). The PostgreSQL and SQLite
-- migrations of this name are the same. `tests/it/plans.rs` asserts that each query's
-- plan uses its index, on both backends; the plans are written to target/test-output/plans/.

-- "Processed today": the first change of a conversion to status `processed` (not a
-- click's CREATED) since midnight. The range scan on `at` reads only such changes; the
-- NOT EXISTS probe per conversion is served by UNIQUE (conversion_id, version).
CREATE INDEX conversion_changes_processed_at ON conversion_changes (at)
    WHERE status = 'processed' AND state <> 'CREATED';

-- "Reported today".
CREATE INDEX conversions_reported_at ON conversions (reported_at);

-- "Paid today": paid payouts by the time they were paid (`payouts_paid` alone loses to
-- `payouts_status`, which would read every paid payout ever).
CREATE INDEX payouts_status_paid ON payouts (status, paid_at);
