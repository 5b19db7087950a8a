-- User notifications (seed 000): digests batched several times a day, one e-mail per user
-- per batch. The SQLite migration of the same name has the same shape.

-- Stage timestamp: when the user was first told about the conversion (delay transparency).
ALTER TABLE conversions ADD COLUMN notified_at BIGINT;

CREATE TABLE notification_batches (
    id           BIGSERIAL PRIMARY KEY,
    created_at   BIGINT NOT NULL,
    changes      BIGINT NOT NULL,
    users        BIGINT NOT NULL
);

-- One e-mail per (batch, user), rendered once: a retry sends the very same message.
CREATE TABLE notifications (
    id               BIGSERIAL PRIMARY KEY,
    batch_id         BIGINT NOT NULL REFERENCES notification_batches(id),
    user_id          TEXT NOT NULL,
    email            TEXT,
    subject          TEXT NOT NULL,
    body             TEXT NOT NULL,
    -- pending (to send or retry), sending (handed to SMTP, outcome not recorded yet),
    -- sent, failed (gave up), skipped (the user has no e-mail address).
    state            TEXT NOT NULL CHECK (state IN ('pending', 'sending', 'sent', 'failed', 'skipped')),
    attempts         BIGINT NOT NULL DEFAULT 0,
    next_attempt_at  BIGINT NOT NULL,
    last_error       TEXT,
    created_at       BIGINT NOT NULL,
    sending_at       BIGINT,
    sent_at          BIGINT,
    UNIQUE (batch_id, user_id)
);
CREATE INDEX notifications_due ON notifications(state, next_attempt_at);
