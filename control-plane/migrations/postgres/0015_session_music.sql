-- A music session's music as its media node last reported it (JSON of protocol::music::MusicState)
-- and the node's time of that report: reports apply latest first, whatever order they arrive in.
ALTER TABLE sessions ADD COLUMN music_state TEXT;
ALTER TABLE sessions ADD COLUMN music_changed_at BIGINT NOT NULL DEFAULT 0;
