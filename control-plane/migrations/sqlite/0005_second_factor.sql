-- Second factor and password changes. A TOTP secret is stored sealed (AES-256-GCM, see
-- sealed.rs); last_step is the highest step whose code was accepted, so each code works once.
-- Recovery codes are stored as SHA-256 of 80 random bits, each usable once (used_at).
-- Keep in step with ../postgres/0005_second_factor.sql.

CREATE TABLE totp_factors (
    user_id       TEXT PRIMARY KEY NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    secret_sealed TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    enabled_at    BIGINT,
    last_step     BIGINT
);

CREATE TABLE recovery_codes (
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    code_hash  TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    used_at    BIGINT,
    PRIMARY KEY (user_id, code_hash)
);

ALTER TABLE users ADD COLUMN password_changed_at BIGINT;
