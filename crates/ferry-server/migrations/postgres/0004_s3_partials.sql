-- The state of each partial upload on S3 (issue 16), when the servers
-- share a database: the multipart upload id, each part's ETag, size and
-- the SHA-256 state after it, the tail length and the epoch, as JSON
-- (`storage/s3/state.rs`, `PartialState`). `home` is the home's key
-- prefix in the bucket; `id` the upload id. Without a database the same
-- JSON is kept as an object in the bucket.

CREATE TABLE s3_partials (
    home     TEXT NOT NULL,
    id       TEXT NOT NULL,
    state    TEXT NOT NULL,
    modified TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (home, id)
);
