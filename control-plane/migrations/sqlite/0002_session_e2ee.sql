-- End-to-end encrypted sessions: the media node forwards their payloads untouched and never mixes
-- them. A flag, INTEGER 0/1 like the others. Keep in step with ../postgres/0002_session_e2ee.sql.

ALTER TABLE sessions ADD COLUMN e2ee INTEGER NOT NULL DEFAULT 0 CHECK (e2ee IN (0, 1));
