-- Ed25519 signing keys by generation, sealed with the data key (AES-256-GCM). The newest key
-- whose activates_at has passed signs; see keyring.rs for publication and retirement. The
-- generation is the primary key, so replicas planning the same rotation insert one key.
-- Keep in step with ../postgres/0006_signing_keys.sql.

CREATE TABLE signing_keys (
    generation   BIGINT PRIMARY KEY NOT NULL,
    kid          TEXT NOT NULL UNIQUE,
    seed_sealed  TEXT NOT NULL,
    created_at   BIGINT NOT NULL,
    activates_at BIGINT NOT NULL
);
