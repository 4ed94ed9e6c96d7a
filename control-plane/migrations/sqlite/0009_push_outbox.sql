-- The notification outbox. push_progress says up to which seq each group's log has been turned
-- into notifications: a notifier advances it (compare-and-set, so one replica wins) in the same
-- transaction that inserts the deliveries, so a crash loses nothing and repeats nothing.
-- push_deliveries holds each message still to push to one device, with its retry schedule.
-- server_secrets holds process-wide keys (the VAPID key), sealed with the data key.
-- Keep in step with ../postgres/0009_push_outbox.sql.

CREATE TABLE push_progress (
    group_id TEXT PRIMARY KEY NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    upto     BIGINT NOT NULL
);
-- Existing history is not notified.
INSERT INTO push_progress (group_id, upto) SELECT id, last_seq FROM groups;

CREATE TABLE push_deliveries (
    id              TEXT PRIMARY KEY NOT NULL,
    device_id       TEXT NOT NULL REFERENCES devices (id) ON DELETE CASCADE,
    group_id        TEXT NOT NULL,
    seq             BIGINT NOT NULL,
    payload         TEXT NOT NULL,
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    expires_at      BIGINT NOT NULL,
    last_error      TEXT,
    UNIQUE (device_id, group_id, seq)
);
CREATE INDEX push_deliveries_due ON push_deliveries (next_attempt_at);

CREATE TABLE server_secrets (
    name       TEXT PRIMARY KEY NOT NULL,
    value      TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
