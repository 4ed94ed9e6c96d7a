-- A user's own location history, kept only with their consent (location_history_days > 0) and
-- only for that many days.
ALTER TABLE users ADD COLUMN location_history_days BIGINT NOT NULL DEFAULT 0
    CHECK (location_history_days BETWEEN 0 AND 365);
CREATE TABLE location_history (
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    t_ms BIGINT NOT NULL,
    lat DOUBLE PRECISION NOT NULL,
    lon DOUBLE PRECISION NOT NULL,
    acc DOUBLE PRECISION NOT NULL,
    alt DOUBLE PRECISION,
    speed DOUBLE PRECISION,
    heading DOUBLE PRECISION,
    PRIMARY KEY (user_id, t_ms)
);
CREATE INDEX location_history_t ON location_history (t_ms);
