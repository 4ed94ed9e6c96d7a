-- Sign-in sessions: one per refresh-token family (a device). Rotation spends a token (rotated_at)
-- and issues its child (parent_id); presenting a spent token after the grace window revokes the
-- whole session. Times are Unix milliseconds. Keep in step with ../sqlite/0004_auth_sessions.sql.

CREATE TABLE auth_sessions (
    id             TEXT PRIMARY KEY NOT NULL,
    user_id        TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at     BIGINT NOT NULL,
    last_used_at   BIGINT NOT NULL,
    expires_at     BIGINT NOT NULL,
    user_agent     TEXT,
    revoked_at     BIGINT,
    revoked_reason TEXT
);
CREATE INDEX auth_sessions_user ON auth_sessions (user_id);

-- Families issued before this migration become sessions.
INSERT INTO auth_sessions (id, user_id, created_at, last_used_at, expires_at)
SELECT family_id, MIN(user_id), MIN(created_at), MAX(created_at), MAX(expires_at)
FROM refresh_tokens GROUP BY family_id;

ALTER TABLE refresh_tokens ADD COLUMN parent_id TEXT;
ALTER TABLE refresh_tokens ADD COLUMN rotated_at BIGINT;
CREATE INDEX refresh_tokens_parent ON refresh_tokens (parent_id);
