-- Files uploaded to groups. The bytes live in the object store (a directory or an S3 bucket)
-- under "<group_id>/<id>"; this row is written after the bytes are stored, so a row always has
-- its object. message_seq is set, under the group's row lock, when a message takes the file;
-- until then the uploader may delete it, and a sweeper deletes it after a day.
-- Keep in step with ../sqlite/0010_attachments.sql.

CREATE TABLE attachments (
    id           TEXT PRIMARY KEY NOT NULL,
    group_id     TEXT NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    uploader_id  TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         TEXT NOT NULL,
    content_type TEXT NOT NULL,
    size         BIGINT NOT NULL,
    sha256       TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    message_seq  BIGINT
);
CREATE INDEX attachments_message ON attachments (group_id, message_seq);
CREATE INDEX attachments_unattached ON attachments (created_at) WHERE message_seq IS NULL;
CREATE INDEX attachments_uploader ON attachments (uploader_id) WHERE message_seq IS NULL;
