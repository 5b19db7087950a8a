-- Dashboard sessions (issue 16, point 4). The PostgreSQL and SQLite migrations of this
-- name have the same shape.
--
-- The cookie holds a random session id; only its SHA-256 is stored, so the database
-- cannot be replayed as a cookie, and the API token never leaves the sign-in request.
-- A session carries the scope its token had at sign-in, expires, and is revoked by
-- signing out, by `cashbackd session revoke`, or with its token (checked on every request).
CREATE TABLE dashboard_sessions (
    id          TEXT PRIMARY KEY,
    id_hash     TEXT NOT NULL UNIQUE,
    token_id    TEXT NOT NULL REFERENCES api_tokens (id),
    scope       TEXT NOT NULL CHECK (scope IN ('read', 'write', 'admin')),
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    revoked_at  INTEGER
);
-- Listing and revoking a token's sessions.
CREATE INDEX dashboard_sessions_token ON dashboard_sessions (token_id);
