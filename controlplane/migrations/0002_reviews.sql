-- Sluice control-plane schema, version 2: the review (human approval) queue.
-- Times are unix milliseconds; booleans are BIGINT 0/1 (sqlx's Any driver maps both stores the
-- same way).

CREATE TABLE reviews (
    id             TEXT PRIMARY KEY,
    identity       TEXT NOT NULL,
    connection     TEXT NOT NULL,
    role           TEXT NOT NULL,
    statement      TEXT NOT NULL,
    -- sha256 of the statement: the de-duplication key (a btree cannot index long texts)
    statement_hash TEXT NOT NULL,
    rule_id        TEXT NOT NULL,
    message        TEXT,
    node_id        TEXT NOT NULL,
    session_id     TEXT,
    min_approvers  BIGINT NOT NULL,
    wait           BIGINT NOT NULL,
    -- as stored: pending, approved, denied, expired, used. A pending review past expires_at,
    -- or an approval past use_until, reads as expired whatever is stored.
    status         TEXT NOT NULL,
    created_at     BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    decided_at     BIGINT,
    use_until      BIGINT,
    reusable       BIGINT NOT NULL DEFAULT 0,
    used_at        BIGINT,
    use_count      BIGINT NOT NULL DEFAULT 0
);
-- One pending review per (identity, connection, statement), also across replicas.
CREATE UNIQUE INDEX reviews_one_pending ON reviews (identity, connection, statement_hash)
    WHERE status = 'pending';
CREATE INDEX reviews_lookup ON reviews (identity, connection, statement_hash, status);
CREATE INDEX reviews_status ON reviews (status, created_at);

CREATE TABLE review_decisions (
    review_id TEXT NOT NULL,
    approver  TEXT NOT NULL,            -- the API token's name
    decision  TEXT NOT NULL,            -- approve or deny
    comment   TEXT,
    window_ms BIGINT,                   -- approve only: the reuse window asked for
    at_ms     BIGINT NOT NULL,
    PRIMARY KEY (review_id, approver)
);
