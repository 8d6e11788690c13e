-- State shared by every server on shared homes (issue 16). Quota usage, so that
-- uploads of one user through several servers never together pass a quota.
-- Signed like the in-process counters: changes arrive in any order (a file
-- removed may be counted out before its upload is counted in).

CREATE TABLE quota_usage (
    username       TEXT PRIMARY KEY REFERENCES users (name) ON DELETE CASCADE,
    used           BIGINT NOT NULL DEFAULT 0,
    reserved       BIGINT NOT NULL DEFAULT 0,
    files          BIGINT NOT NULL DEFAULT 0,
    files_reserved BIGINT NOT NULL DEFAULT 0
);

-- One row per reservation in flight, renewed by the server that holds it;
-- an expired lease (its server is gone) is withdrawn by any server's sweep.
CREATE TABLE quota_leases (
    id         BIGSERIAL PRIMARY KEY,
    username   TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    server_id  TEXT NOT NULL,
    bytes      BIGINT NOT NULL,
    files      BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL
);

CREATE INDEX quota_leases_username ON quota_leases (username);
CREATE INDEX quota_leases_expires_at ON quota_leases (expires_at);

-- Upload claims (which writer may write an upload id), shared so that a
-- resume through one server takes the upload over from a writer on
-- another. A takeover makes a newer generation; a writer whose generation
-- is gone stops and never commits. Expired claims (their server died) may
-- be taken by anyone.
CREATE TABLE upload_claims (
    username   TEXT NOT NULL REFERENCES users (name) ON DELETE CASCADE,
    upload_id  TEXT NOT NULL,
    server_id  TEXT NOT NULL,
    generation BIGINT NOT NULL,
    expires_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (username, upload_id)
);

CREATE INDEX upload_claims_expires_at ON upload_claims (expires_at);
