//! The shell around `keyring`: reads the sealed keys from the database, stores a new generation
//! when one is due, and answers the ring of the moment for `Tokens`. Every replica runs this
//! at start and every [`REFRESH_INTERVAL`], so they all sign with and publish the same keys.

use crate::keyring::{self, KeyEntry, Ring};
use crate::sealed::DataKey;
use crate::store::{Inserted, SigningKeyRow, Store};
use anyhow::Context as _;
use protocol::token::Signer;
use std::time::Duration;

/// How often replicas re-read the keys (well inside [`keyring::PUBLISH_LEAD_MS`]).
pub(crate) const REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// What the refresh needs besides the clock.
#[derive(Debug, Clone)]
pub(crate) struct KeySource {
    pub store: Store,
    pub data_key: DataKey,
    /// Time between rotations.
    pub period_ms: i64,
    /// A seed from a key file: becomes the first generation when the database has none.
    pub import: Option<[u8; 32]>,
}

fn context(generation: i64) -> String {
    format!("signing_keys.seed_sealed:{generation}")
}

impl KeySource {
    /// Brings the stored keys up to date for `now`: the ring to install.
    pub(crate) async fn ring(&self, now_ms: i64) -> anyhow::Result<Ring> {
        let rows = self.store.signing_keys().await?;
        let mut entries = self.open(&rows);
        let newest_stored = rows.iter().map(|r| r.generation).max().unwrap_or(0);
        let due = if entries.is_empty() {
            // Nothing usable: a first key, active at once (nobody holds tokens of ours yet).
            if newest_stored > 0 {
                tracing::warn!(
                    newest_stored,
                    "no stored signing key opens with this data key: starting a new generation"
                );
            }
            Some((
                newest_stored + 1,
                now_ms,
                self.import.filter(|_| newest_stored == 0),
            ))
        } else {
            keyring::plan(&entries, now_ms, self.period_ms)
                .map(|p| (p.generation, p.activates_at_ms, None))
        };
        if let Some((generation, activates_at_ms, seed)) = due {
            let seed = seed.unwrap_or_else(crate::keys::ephemeral_seed);
            let signer = Signer::from_seed(&seed);
            let row = SigningKeyRow {
                generation,
                kid: signer.kid().to_owned(),
                seed_sealed: self.data_key.seal(&seed, &context(generation)),
                activates_at_ms,
            };
            if self.store.insert_signing_key(&row, now_ms).await? == Inserted::Done {
                tracing::info!(
                    generation,
                    kid = signer.kid(),
                    activates_at_ms,
                    "new signing key"
                );
            }
            // Ours or another replica's: read back what won.
            entries = self.open(&self.store.signing_keys().await?);
        }
        keyring::ring(&entries, now_ms).context("no signing key is active")
    }

    /// The keys that open with this data key.
    fn open(&self, rows: &[SigningKeyRow]) -> Vec<KeyEntry> {
        rows.iter()
            .filter_map(|row| {
                let seed = self
                    .data_key
                    .open(&row.seed_sealed, &context(row.generation))
                    .map_err(|e| tracing::warn!(generation = row.generation, error = %e, "a signing key does not open"))
                    .ok()?;
                let seed = <[u8; 32]>::try_from(seed.as_slice()).ok()?;
                Some(KeyEntry {
                    generation: row.generation,
                    activates_at_ms: row.activates_at_ms,
                    signer: Signer::from_seed(&seed),
                })
            })
            .collect()
    }
}
