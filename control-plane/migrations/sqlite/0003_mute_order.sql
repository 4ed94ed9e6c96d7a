-- Mute changes carry the node's time (strictly increasing per node); control planes of one
-- consumer group may apply them out of order, so a change older than the stored one is ignored.
-- Unix milliseconds, 0 for "never changed". Keep in step with ../postgres/0003_mute_order.sql.

ALTER TABLE participants ADD COLUMN mute_changed_at BIGINT NOT NULL DEFAULT 0;
