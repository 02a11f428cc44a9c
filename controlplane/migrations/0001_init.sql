-- Sluice control-plane schema, version 1. One text for SQLite and PostgreSQL: `{{ID}}` and
-- `{{BYTES}}` are the only dialect differences and are replaced by the migration runner.
-- Times are unix milliseconds (BIGINT) so both stores compare and sort them the same way.

CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE signing_keys (
    kid         TEXT PRIMARY KEY,
    private_key {{BYTES}} NOT NULL,      -- sealed with the master key
    public_jwk  TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);

CREATE TABLE api_tokens (
    id         TEXT PRIMARY KEY,
    digest     TEXT NOT NULL UNIQUE,     -- sha256 of the token; the token itself is not kept
    name       TEXT NOT NULL,
    role       TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    revoked_at BIGINT
);

CREATE TABLE policy_documents (
    version     BIGINT PRIMARY KEY,
    document    TEXT NOT NULL,           -- the applied document without credentials
    credentials {{BYTES}} NOT NULL,      -- its credentials, sealed
    source      TEXT NOT NULL,           -- 'apply' or 'rollback:N'
    created_at  BIGINT NOT NULL,
    created_by  TEXT NOT NULL
);

CREATE TABLE connections (
    name             TEXT PRIMARY KEY,
    spec             TEXT NOT NULL,
    credentials      {{BYTES}} NOT NULL,
    document_version BIGINT NOT NULL
);

CREATE TABLE identity_providers (
    name             TEXT PRIMARY KEY,
    spec             TEXT NOT NULL,
    document_version BIGINT NOT NULL
);

CREATE TABLE roles (
    name             TEXT PRIMARY KEY,
    spec             TEXT NOT NULL,
    document_version BIGINT NOT NULL
);

CREATE TABLE policies (
    name             TEXT PRIMARY KEY,
    spec             TEXT NOT NULL,
    document_version BIGINT NOT NULL
);

CREATE TABLE snapshots (
    version          BIGINT PRIMARY KEY,
    document_version BIGINT NOT NULL,
    content_hash     TEXT NOT NULL,
    compiled         {{BYTES}} NOT NULL, -- holds backend credentials, so sealed
    created_at       BIGINT NOT NULL
);

CREATE TABLE grants (
    id         TEXT PRIMARY KEY,
    identity   TEXT NOT NULL,
    connection TEXT NOT NULL,
    role       TEXT NOT NULL,
    issued_at  BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT,
    issued_by  TEXT NOT NULL
);

CREATE TABLE nodes (
    id               TEXT PRIMARY KEY,
    address          TEXT NOT NULL,
    snapshot_version BIGINT,
    drivers          TEXT NOT NULL,
    registered_at    BIGINT NOT NULL,
    last_seen        BIGINT NOT NULL
);

CREATE TABLE audit_batches (
    batch_id    TEXT PRIMARY KEY,
    node_id     TEXT NOT NULL,
    records     BIGINT NOT NULL,
    received_at BIGINT NOT NULL
);

CREATE TABLE audit_records (
    id             {{ID}},
    batch_id       TEXT NOT NULL,
    seq            BIGINT NOT NULL,
    node_id        TEXT NOT NULL,
    at_ms          BIGINT NOT NULL,
    identity       TEXT NOT NULL,
    token_id       TEXT,
    grant_id       TEXT,
    connection     TEXT NOT NULL,
    session_id     TEXT,
    statement      TEXT NOT NULL,
    verdict        TEXT NOT NULL,
    rule_id        TEXT,
    review_id      TEXT,
    approvers      TEXT NOT NULL,        -- JSON array
    masked_columns TEXT NOT NULL,        -- JSON array
    row_count      BIGINT,
    byte_count     BIGINT,
    duration_us    BIGINT,
    error          TEXT,
    UNIQUE (batch_id, seq)
);
CREATE INDEX audit_records_at ON audit_records (at_ms);
CREATE INDEX audit_records_identity ON audit_records (identity, at_ms);
CREATE INDEX audit_records_connection ON audit_records (connection, at_ms);

CREATE TABLE api_audit (
    id     {{ID}},
    at_ms  BIGINT NOT NULL,
    actor  TEXT NOT NULL,
    role   TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL
);
