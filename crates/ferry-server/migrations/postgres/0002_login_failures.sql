-- Failed-login counts and bans shared by every server (issue 16), so that a
-- flood spread across servers is still counted. One row per counter:
--   scope 'addr': a source address (IPv6 cut to its /64), bans;
--   scope 'user': a user name, delays only;
--   scope 'pair': address and user, what a success forgives.
-- Keys are bytes: a name from the network may hold any byte, NUL included.
-- Times are the database's clock, the one all servers share.

CREATE TABLE login_failures (
    scope        TEXT NOT NULL CHECK (scope IN ('addr', 'user', 'pair')),
    key          BYTEA NOT NULL,
    failures     INTEGER NOT NULL,
    last_failure TIMESTAMPTZ NOT NULL,
    banned_until TIMESTAMPTZ,
    PRIMARY KEY (scope, key)
);

-- For the sweep of counters that are forgotten and not banned.
CREATE INDEX login_failures_last_failure ON login_failures (last_failure);
