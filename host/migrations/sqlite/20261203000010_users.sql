-- User accounts owned by the site (issue 13): a name for the digests' greeting, whether
-- the user wants digests at all, where the account came from, and when it last changed.
ALTER TABLE users ADD COLUMN name TEXT;
ALTER TABLE users ADD COLUMN notify INTEGER NOT NULL DEFAULT 1;
ALTER TABLE users ADD COLUMN source TEXT NOT NULL DEFAULT 'api';
ALTER TABLE users ADD COLUMN updated_at INTEGER;

-- The network's merchant reference of a conversion, kept so that a conversion parked
-- because its reference was not mapped can be found, and processed, once it is.
ALTER TABLE conversions ADD COLUMN merchant_ref TEXT;
CREATE INDEX conversions_parked_ref ON conversions (network_id, merchant_ref) WHERE status = 'parked';
-- A user's conversions, newest first (GET /api/v1/users/{id}/conversions).
CREATE INDEX conversions_user_reported ON conversions (user_id, reported_at, id);
