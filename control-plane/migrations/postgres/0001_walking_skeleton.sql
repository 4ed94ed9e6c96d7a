-- Accounts, groups, invites and media sessions (walking skeleton).
-- Portable schema: ids are TEXT (hyphenated UUID v7), times are BIGINT Unix milliseconds,
-- flags are INTEGER 0/1. Keep in step with ../sqlite/0001_walking_skeleton.sql.

CREATE TABLE users (
    id            TEXT PRIMARY KEY NOT NULL,
    username      TEXT NOT NULL UNIQUE,
    email         TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    last_login_at BIGINT
);
-- "Ann" and "ann" are one name.
CREATE UNIQUE INDEX users_username_lower ON users (lower(username));

CREATE TABLE refresh_tokens (
    id         TEXT PRIMARY KEY NOT NULL,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family_id  TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX refresh_tokens_user ON refresh_tokens (user_id);
CREATE INDEX refresh_tokens_family ON refresh_tokens (family_id);

CREATE TABLE groups (
    id         TEXT PRIMARY KEY NOT NULL,
    name       TEXT NOT NULL,
    created_by TEXT NOT NULL REFERENCES users (id),
    created_at BIGINT NOT NULL
);

CREATE TABLE group_members (
    group_id  TEXT NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    user_id   TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role      TEXT NOT NULL CHECK (role IN ('admin', 'member')),
    joined_at BIGINT NOT NULL,
    PRIMARY KEY (group_id, user_id)
);
CREATE INDEX group_members_user ON group_members (user_id);

CREATE TABLE invites (
    code       TEXT PRIMARY KEY NOT NULL,
    group_id   TEXT NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    created_by TEXT NOT NULL REFERENCES users (id),
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX invites_group ON invites (group_id);

CREATE TABLE sessions (
    id         TEXT PRIMARY KEY NOT NULL,
    group_id   TEXT NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    kind       TEXT NOT NULL CHECK (kind IN ('audio', 'music')),
    node_id    TEXT NOT NULL,
    state      TEXT NOT NULL CHECK (state IN ('active', 'ended')),
    created_at BIGINT NOT NULL,
    ended_at   BIGINT
);
-- At most one active session of each kind per group: concurrent allocations insert-or-fetch.
CREATE UNIQUE INDEX sessions_one_active ON sessions (group_id, kind) WHERE state = 'active';

CREATE TABLE participants (
    id              TEXT PRIMARY KEY NOT NULL,
    session_id      TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    user_id         TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    joined_at       BIGINT NOT NULL,
    left_at         BIGINT,
    mute_microphone INTEGER NOT NULL DEFAULT 0 CHECK (mute_microphone IN (0, 1)),
    mute_speaker    INTEGER NOT NULL DEFAULT 0 CHECK (mute_speaker IN (0, 1))
);
CREATE INDEX participants_session ON participants (session_id);
CREATE INDEX participants_user ON participants (user_id);
