-- Alerts of location engines already logged, by id: a redelivered alert is logged once.
CREATE TABLE location_alerts (
    id TEXT PRIMARY KEY,
    group_id TEXT NOT NULL,
    at_ms BIGINT NOT NULL
);
CREATE INDEX location_alerts_at ON location_alerts (at_ms);
