-- Answers to admin API writes sent with an Idempotency-Key: a retried request gets the
-- first answer instead of acting twice. `scope` is a hash of the caller's credential,
-- method and path (the credential itself is never stored); `status` 0 marks a request
-- still in progress.
CREATE TABLE idempotency_keys (
    key           TEXT NOT NULL,
    scope         TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    status        BIGINT NOT NULL,
    content_type  TEXT,
    body          BYTEA,
    created_at    BIGINT NOT NULL,
    PRIMARY KEY (key, scope)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
