//! Encryption at rest for sensitive columns (TOTP secrets): AES-256-GCM with a fresh random
//! 96-bit nonce per value and the value's place (table, column, row) as associated data, so a
//! sealed value copied into another row or column does not open.
//!
//! Stored form: `v1.<kid>.<base64url(nonce ‖ ciphertext ‖ tag)>`, where `kid` is the first 8 hex
//! digits of SHA-256 of the key: a value sealed under another key is reported as such instead of
//! as corruption. The key comes from a file or the environment (see [`crate::DataKeySource`]);
//! it never reaches a log.

use aes_gcm::aead::{Aead as _, KeyInit as _, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

const VERSION: &str = "v1";
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// Why a sealed value did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SealError {
    #[error("the sealed value is not in the v1 format")]
    Format,
    #[error("the value was sealed under another data key (kid {0}); configure that key")]
    OtherKey(String),
    #[error("the sealed value fails authentication (altered, or moved from another row)")]
    Tampered,
}

/// The AES-256-GCM data key.
#[derive(Clone)]
pub(crate) struct DataKey {
    cipher: Aes256Gcm,
    kid: String,
}

impl std::fmt::Debug for DataKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DataKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl DataKey {
    pub(crate) fn from_bytes(key: &[u8; 32]) -> Self {
        let digest = Sha256::digest(key);
        let kid = digest[..4].iter().map(|b| format!("{b:02x}")).collect();
        Self {
            cipher: Aes256Gcm::new(key.into()),
            kid,
        }
    }

    /// The key's id, as written into every value it seals.
    pub(crate) fn kid(&self) -> &str {
        &self.kid
    }

    /// Seals `plaintext` for the place `context` names (e.g. `totp_factors.secret:<user id>`).
    pub(crate) fn seal(&self, plaintext: &[u8], context: &str) -> String {
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: plaintext,
                    aad: context.as_bytes(),
                },
            )
            // Only fails for inputs beyond GCM's 64 GiB limit.
            .unwrap_or_default();
        let mut bytes = Vec::with_capacity(NONCE_LEN + sealed.len());
        bytes.extend_from_slice(&nonce);
        bytes.extend_from_slice(&sealed);
        format!("{VERSION}.{}.{}", self.kid, B64.encode(bytes))
    }

    /// Opens a value [`Self::seal`] made for the same `context`.
    pub(crate) fn open(&self, sealed: &str, context: &str) -> Result<Vec<u8>, SealError> {
        let mut parts = sealed.splitn(3, '.');
        let (Some(VERSION), Some(kid), Some(body)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(SealError::Format);
        };
        if kid != self.kid {
            return Err(SealError::OtherKey(kid.chars().take(16).collect()));
        }
        let bytes = B64.decode(body).map_err(|_| SealError::Format)?;
        if bytes.len() < NONCE_LEN + TAG_LEN {
            return Err(SealError::Format);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_LEN);
        let nonce: [u8; NONCE_LEN] = nonce.try_into().map_err(|_| SealError::Format)?;
        self.cipher
            .decrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| SealError::Tampered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sealed_value_opens_only_with_its_key_and_in_its_place() {
        let key = DataKey::from_bytes(&[7; 32]);
        let sealed = key.seal(b"secret bytes", "t.c:1");
        assert!(
            sealed.starts_with(&format!("v1.{}.", key.kid())),
            "{sealed}"
        );
        assert!(!sealed.contains("secret"));
        assert_eq!(key.open(&sealed, "t.c:1").unwrap(), b"secret bytes");
        // Fresh nonce each time.
        assert_ne!(sealed, key.seal(b"secret bytes", "t.c:1"));
        // Another row.
        assert_eq!(key.open(&sealed, "t.c:2"), Err(SealError::Tampered));
        // Another key.
        let other = DataKey::from_bytes(&[8; 32]);
        assert_eq!(
            other.open(&sealed, "t.c:1"),
            Err(SealError::OtherKey(key.kid().to_owned()))
        );
    }

    #[test]
    fn altered_or_malformed_values_are_errors_not_panics() {
        let key = DataKey::from_bytes(&[7; 32]);
        let sealed = key.seal(b"x", "ctx");
        let mut flipped = sealed.clone().into_bytes();
        // A character inside the payload: all six of its bits count (the last character's
        // low bits are padding, so changing only those is a format error, not tampering).
        let inner = flipped.len() - 10;
        flipped[inner] = if flipped[inner] == b'A' { b'B' } else { b'A' };
        let flipped = String::from_utf8(flipped).unwrap();
        assert_eq!(key.open(&flipped, "ctx"), Err(SealError::Tampered));
        let kid = key.kid();
        for bad in [
            "",
            "v1",
            "v2.x.y",
            &format!("v1.{kid}"),
            &format!("v1.{kid}.!!"),
            &format!("v1.{kid}.AAAA"),
        ] {
            assert_eq!(key.open(bad, "ctx"), Err(SealError::Format), "{bad:?}");
        }
    }
}
