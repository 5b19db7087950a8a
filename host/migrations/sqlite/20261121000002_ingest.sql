-- Networks, tracked links, clicks' sub ids, and the log of refused postbacks.

CREATE TABLE networks (
    id              TEXT PRIMARY KEY,
    name            TEXT NOT NULL,
    adapter_digest  TEXT REFERENCES plugins(digest),
    adapter_config  TEXT NOT NULL DEFAULT '{}',
    -- How inbound postbacks prove they come from the network.
    auth_kind       TEXT NOT NULL DEFAULT 'token' CHECK (auth_kind IN ('none', 'token', 'ip', 'hmac')),
    auth_secret     TEXT,
    auth_ips        TEXT,
    created_at      INTEGER NOT NULL
);

-- A tracked link: GET /c/{id} records a click and redirects to the merchant.
CREATE TABLE links (
    id            TEXT PRIMARY KEY,
    merchant_id   TEXT NOT NULL REFERENCES merchants(id),
    network_id    TEXT NOT NULL REFERENCES networks(id),
    url_template  TEXT NOT NULL,
    created_at    INTEGER NOT NULL
);

ALTER TABLE clicks ADD COLUMN link_id TEXT;
ALTER TABLE clicks ADD COLUMN sub1 TEXT;
ALTER TABLE clicks ADD COLUMN sub2 TEXT;
ALTER TABLE clicks ADD COLUMN sub3 TEXT;
ALTER TABLE clicks ADD COLUMN sub4 TEXT;
ALTER TABLE clicks ADD COLUMN sub5 TEXT;

-- Postbacks answered with a 4xx: kept for inspection (secrets removed).
CREATE TABLE postback_rejects (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    network_id   TEXT NOT NULL,
    received_at  INTEGER NOT NULL,
    method       TEXT NOT NULL,
    query        TEXT NOT NULL,
    body         TEXT NOT NULL,
    remote_addr  TEXT,
    status       INTEGER NOT NULL,
    reason       TEXT NOT NULL
);
CREATE INDEX postback_rejects_network ON postback_rejects(network_id, received_at);
