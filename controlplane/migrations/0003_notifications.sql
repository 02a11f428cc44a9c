-- Sluice control-plane schema, version 3: webhook deliveries. Each row is one event for one
-- webhook, written in the transaction of the change it tells about, then sent (and retried)
-- by the control plane's delivery task. Times are unix milliseconds.

CREATE TABLE notification_deliveries (
    id               {{ID}},
    event            TEXT NOT NULL,
    webhook          TEXT NOT NULL,
    url              TEXT NOT NULL,
    -- the review id, grant id or audit record's batch and statement it is about
    subject          TEXT NOT NULL,
    -- the environment variable holding the signing key, as the document named it then
    secret_env       TEXT,
    -- the body, exactly as sent on every attempt
    payload          TEXT NOT NULL,
    -- pending, delivered, failed (attempts used up)
    status           TEXT NOT NULL,
    attempts         BIGINT NOT NULL DEFAULT 0,
    last_http_status BIGINT,
    last_error       TEXT,
    created_at_ms    BIGINT NOT NULL,
    next_attempt_ms  BIGINT NOT NULL,
    delivered_at_ms  BIGINT
);
CREATE INDEX notification_deliveries_due ON notification_deliveries (status, next_attempt_ms);
