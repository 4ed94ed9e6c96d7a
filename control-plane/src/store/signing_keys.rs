//! The signing keys, sealed (see `keyring` for what is done with them).

use super::{Inserted, Store, is_unique_violation};
use sqlx::Row as _;

/// A stored key, still sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SigningKeyRow {
    pub generation: i64,
    pub kid: String,
    pub seed_sealed: String,
    pub activates_at_ms: i64,
}

impl Store {
    /// Every stored key, oldest generation first.
    pub(crate) async fn signing_keys(&self) -> Result<Vec<SigningKeyRow>, sqlx::Error> {
        let rows = sqlx::query(
            "SELECT generation, kid, seed_sealed, activates_at FROM signing_keys \
             ORDER BY generation",
        )
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|row| {
                Ok(SigningKeyRow {
                    generation: row.try_get("generation")?,
                    kid: row.try_get("kid")?,
                    seed_sealed: row.try_get("seed_sealed")?,
                    activates_at_ms: row.try_get("activates_at")?,
                })
            })
            .collect()
    }

    /// Stores a new generation; [`Inserted::Duplicate`] when another replica stored it first.
    pub(crate) async fn insert_signing_key(
        &self,
        key: &SigningKeyRow,
        now_ms: i64,
    ) -> Result<Inserted, sqlx::Error> {
        let result = sqlx::query(
            "INSERT INTO signing_keys (generation, kid, seed_sealed, created_at, activates_at) \
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(key.generation)
        .bind(&key.kid)
        .bind(&key.seed_sealed)
        .bind(now_ms)
        .bind(key.activates_at_ms)
        .execute(&self.pool)
        .await;
        match result {
            Ok(_) => Ok(Inserted::Done),
            Err(e) if is_unique_violation(&e) => Ok(Inserted::Duplicate),
            Err(e) => Err(e),
        }
    }
}
