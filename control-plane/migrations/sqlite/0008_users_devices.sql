-- Profile, settings and subscription fields of an account, and its devices for notifications.
-- Settings are one column each, so a partial update is one UPDATE with COALESCE (no
-- read-modify-write). Subscription fields are set by billing operations, never by the user.
-- Keep in step with ../postgres/0008_users_devices.sql.

ALTER TABLE users ADD COLUMN picture_url TEXT;
ALTER TABLE users ADD COLUMN notify_messages TEXT NOT NULL DEFAULT 'all'
    CHECK (notify_messages IN ('all', 'mentions', 'none'));
ALTER TABLE users ADD COLUMN notify_calls INTEGER NOT NULL DEFAULT 1 CHECK (notify_calls IN (0, 1));
ALTER TABLE users ADD COLUMN notify_proximity INTEGER NOT NULL DEFAULT 1
    CHECK (notify_proximity IN (0, 1));
ALTER TABLE users ADD COLUMN show_presence INTEGER NOT NULL DEFAULT 1
    CHECK (show_presence IN (0, 1));
ALTER TABLE users ADD COLUMN share_location INTEGER NOT NULL DEFAULT 1
    CHECK (share_location IN (0, 1));
ALTER TABLE users ADD COLUMN noise_suppression INTEGER NOT NULL DEFAULT 1
    CHECK (noise_suppression IN (0, 1));
ALTER TABLE users ADD COLUMN echo_cancellation INTEGER NOT NULL DEFAULT 1
    CHECK (echo_cancellation IN (0, 1));
ALTER TABLE users ADD COLUMN auto_gain INTEGER NOT NULL DEFAULT 1 CHECK (auto_gain IN (0, 1));
ALTER TABLE users ADD COLUMN voice_volume INTEGER NOT NULL DEFAULT 100
    CHECK (voice_volume BETWEEN 0 AND 200);
ALTER TABLE users ADD COLUMN music_volume INTEGER NOT NULL DEFAULT 80
    CHECK (music_volume BETWEEN 0 AND 100);
ALTER TABLE users ADD COLUMN subscription_tier TEXT NOT NULL DEFAULT 'free'
    CHECK (subscription_tier IN ('free', 'plus', 'family'));
ALTER TABLE users ADD COLUMN subscription_status TEXT NOT NULL DEFAULT 'active'
    CHECK (subscription_status IN ('active', 'trialing', 'past_due', 'canceled'));
ALTER TABLE users ADD COLUMN subscription_renews_at BIGINT;

-- A device that receives notifications. token is what the push service knows the device by:
-- an APNs or FCM token, or a Web Push endpoint URL (then p256dh and auth are its keys). A token
-- belongs to one account at a time: registering it again moves it.
CREATE TABLE devices (
    id           TEXT PRIMARY KEY NOT NULL,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    platform     TEXT NOT NULL CHECK (platform IN ('web', 'ios', 'android')),
    token        TEXT NOT NULL UNIQUE,
    p256dh       TEXT,
    auth         TEXT,
    created_at   BIGINT NOT NULL,
    last_seen_at BIGINT NOT NULL
);
CREATE INDEX devices_user ON devices (user_id, last_seen_at);
