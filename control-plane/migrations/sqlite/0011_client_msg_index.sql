-- A message batch looks its client message ids up together: with the client id before the
-- sender, `group_id = ? AND client_msg_id IN (...)` is one index probe per id (sender first
-- made it a probe per sender and id pair, or a scan). Uniqueness is the same set of columns.
-- Keep in step with ../postgres/0011_client_msg_index.sql.

DROP INDEX group_events_client_msg;
CREATE UNIQUE INDEX group_events_client_msg ON group_events (group_id, client_msg_id, actor_id);
