-- Places (geofences) of groups. shape is the JSON of protocol::location::PlaceShape, checked by
-- the location engine's rules before it is stored. groups.places_rev grows with every change to
-- a group's places; location tokens carry it, and engines fetch a group's places when theirs is
-- older. Keep in step with the other engine's 0016_places.sql.
CREATE TABLE places (
    id         TEXT PRIMARY KEY,
    group_id   TEXT NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    name       TEXT NOT NULL,
    shape      TEXT NOT NULL,
    dwell_ms   BIGINT NOT NULL,
    created_by TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX places_group ON places (group_id);
ALTER TABLE groups ADD COLUMN places_rev BIGINT NOT NULL DEFAULT 0;
