-- Users, their SSH keys, and settings every ferry server of one site shares
-- (issue 16). The columns follow the SQLite store (auth/sqlite.rs).

CREATE TABLE users (
    name        TEXT PRIMARY KEY,
    -- SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>; never a password.
    verifier    TEXT NOT NULL,
    -- NULL: unlimited.
    quota_bytes BIGINT CHECK (quota_bytes >= 0),
    allow_exec  BOOLEAN NOT NULL DEFAULT FALSE,
    -- NULL: the server's default; -1: unlimited.
    max_files   BIGINT,
    home        TEXT,
    -- Unix seconds.
    created     BIGINT NOT NULL
);

CREATE TABLE ssh_keys (
    username    TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    fingerprint TEXT NOT NULL,
    key         TEXT NOT NULL,
    comment     TEXT NOT NULL DEFAULT '',
    added       BIGINT NOT NULL,
    -- Insertion order, for listing keys in the order they were added.
    seq         BIGSERIAL NOT NULL,
    PRIMARY KEY (username, fingerprint)
);

-- The server secret that keys unknown users' fake salts: one for all
-- servers, or comparing two servers' answers would tell unknown names apart.
CREATE TABLE server_settings (
    name  TEXT PRIMARY KEY,
    value BYTEA NOT NULL
);
