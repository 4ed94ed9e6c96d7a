-- Group details and settings, each group's event log (messages are its 'message' entries),
-- and members' markers. groups.last_seq is the group's latest event; every change to a group
-- bumps it first, which locks the group's row, so a group's events commit in seq order.
-- Keep in step with ../postgres/0007_groups_messages.sql.

ALTER TABLE groups ADD COLUMN description TEXT NOT NULL DEFAULT '';
ALTER TABLE groups ADD COLUMN avatar_url TEXT;
ALTER TABLE groups ADD COLUMN privacy TEXT NOT NULL DEFAULT 'private'
    CHECK (privacy IN ('private', 'public'));
ALTER TABLE groups ADD COLUMN join_permission TEXT NOT NULL DEFAULT 'admins'
    CHECK (join_permission IN ('admins', 'members'));
ALTER TABLE groups ADD COLUMN location_sharing INTEGER NOT NULL DEFAULT 1
    CHECK (location_sharing IN (0, 1));
ALTER TABLE groups ADD COLUMN music_sharing INTEGER NOT NULL DEFAULT 1
    CHECK (music_sharing IN (0, 1));
ALTER TABLE groups ADD COLUMN last_seq BIGINT NOT NULL DEFAULT 0;

-- joined_seq: the group's seq when the member joined (a client that has no cursor for the
-- group replays from there). read_upto / delivered_upto only grow.
ALTER TABLE group_members ADD COLUMN joined_seq BIGINT NOT NULL DEFAULT 0;
ALTER TABLE group_members ADD COLUMN read_upto BIGINT NOT NULL DEFAULT 0;
ALTER TABLE group_members ADD COLUMN delivered_upto BIGINT NOT NULL DEFAULT 0;

-- kind 'message': body is the current text (NULL once deleted), client_msg_id makes a send
-- idempotent forever. Other kinds keep their fields as JSON in data; ref_seq names the
-- message an edit or delete is about.
CREATE TABLE group_events (
    group_id      TEXT NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    seq           BIGINT NOT NULL,
    kind          TEXT NOT NULL,
    actor_id      TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    data          TEXT NOT NULL DEFAULT '{}',
    ref_seq       BIGINT,
    client_msg_id TEXT,
    body          TEXT,
    edited_at     BIGINT,
    deleted_at    BIGINT,
    PRIMARY KEY (group_id, seq)
);
CREATE UNIQUE INDEX group_events_client_msg ON group_events (group_id, actor_id, client_msg_id);
CREATE INDEX group_events_ref ON group_events (group_id, ref_seq) WHERE ref_seq IS NOT NULL;
