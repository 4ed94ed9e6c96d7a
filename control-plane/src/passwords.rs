//! Password hashing: argon2id with the OWASP parameters (m = 19456 KiB, t = 2, p = 1), run on
//! the blocking pool behind a semaphore with one permit per CPU, so a burst of logins queues
//! instead of starving the async threads or exhausting memory (each hash holds 19 MiB).
//!
//! Verifying for an unknown account runs the same work against a dummy hash, so neither the
//! answer nor its timing tells whether the account exists.

use crate::domain::Password;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// Why hashing failed. Never a caller's fault; never shown to callers.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PasswordError {
    #[error("argon2: {0}")]
    Argon2(argon2::password_hash::Error),
    #[error("the hashing task failed")]
    Task(#[from] tokio::task::JoinError),
    #[error("the hashing semaphore is closed")]
    Closed(#[from] tokio::sync::AcquireError),
}

/// The password hasher of one control plane.
#[derive(Debug, Clone)]
pub(crate) struct Passwords {
    permits: Arc<Semaphore>,
    /// A hash of a random password, verified against when the account does not exist.
    dummy: Arc<str>,
}

/// argon2id, OWASP parameters.
fn kdf() -> Argon2<'static> {
    Argon2::new(Algorithm::Argon2id, Version::V0x13, Params::DEFAULT)
}

impl Passwords {
    /// A hasher with one permit per CPU; computes its dummy hash once.
    pub(crate) async fn new() -> Result<Self, PasswordError> {
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let random = crate::tokens::random_b64(24);
        let dummy = tokio::task::spawn_blocking(move || hash_now(&random)).await??;
        Ok(Self {
            permits: Arc::new(Semaphore::new(cpus)),
            dummy: Arc::from(dummy),
        })
    }

    /// The PHC string of `password` with a fresh salt.
    pub(crate) async fn hash(&self, password: Password) -> Result<String, PasswordError> {
        let password = password.into_inner();
        self.run(move || hash_now(&password)).await
    }

    /// Whether `password` matches `stored`; with no stored hash, does the same work against the
    /// dummy hash and answers `false`.
    pub(crate) async fn verify(
        &self,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, PasswordError> {
        let exists = stored.is_some();
        let stored = stored.unwrap_or_else(|| self.dummy.to_string());
        let matches = self.run(move || verify_now(&password, &stored)).await?;
        Ok(exists && matches)
    }

    async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T, PasswordError> + Send + 'static,
    ) -> Result<T, PasswordError> {
        let _permit = self.permits.acquire().await?;
        tokio::task::spawn_blocking(work).await?
    }
}

fn hash_now(password: &str) -> Result<String, PasswordError> {
    let salt = SaltString::generate(&mut OsRng);
    kdf()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(PasswordError::Argon2)
}

fn verify_now(password: &str, stored: &str) -> Result<bool, PasswordError> {
    let parsed = PasswordHash::new(stored).map_err(PasswordError::Argon2)?;
    match kdf().verify_password(password.as_bytes(), &parsed) {
        Ok(()) => Ok(true),
        Err(argon2::password_hash::Error::Password) => Ok(false),
        Err(e) => Err(PasswordError::Argon2(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_owasps() {
        let p = Params::DEFAULT;
        assert_eq!((p.m_cost(), p.t_cost(), p.p_cost()), (19456, 2, 1));
    }

    #[tokio::test]
    async fn a_hash_verifies_its_password_only() {
        let passwords = Passwords::new().await.unwrap();
        let hash = passwords
            .hash(Password::parse("correct horse").unwrap())
            .await
            .unwrap();
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        let ok = passwords.verify("correct horse".into(), Some(hash.clone()));
        assert!(ok.await.unwrap());
        let bad = passwords.verify("correct horsf".into(), Some(hash));
        assert!(!bad.await.unwrap());
    }

    #[tokio::test]
    async fn an_unknown_account_never_matches_and_a_corrupt_hash_is_an_error() {
        let passwords = Passwords::new().await.unwrap();
        assert!(!passwords.verify(String::new(), None).await.unwrap());
        assert!(
            passwords
                .verify("x".into(), Some("not a phc string".into()))
                .await
                .is_err()
        );
    }
}
