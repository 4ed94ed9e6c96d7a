//! Join-token verification: signature from the control plane's JWKS, audience = this node,
//! expiry, and single use by `jti`.
//!
//! [`ReplayGuard`] is sans-IO (time is an argument). [`JoinVerifier`] adds the JWKS fetch: keys are
//! loaded at start and refetched, at most once per [`REFRESH_MIN_INTERVAL`], when a token names a
//! key id we do not know (the control plane rotated its key).

use protocol::api::Jwks;
use protocol::token::{self, Claims, JoinClaims, ModerationClaims, TokenError, VerifyingKeys};
use std::collections::HashMap;
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Clock skew tolerated on `exp` and `iat`.
pub const LEEWAY_SECS: u64 = 30;
/// Minimum time between two JWKS fetches triggered by unknown key ids.
pub const REFRESH_MIN_INTERVAL: Duration = Duration::from_secs(5);

/// Why a join token was refused. Messages are safe to show to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("missing bearer token")]
    Missing,
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("the join token has already been used")]
    Replayed,
    #[error("the signing keys could not be fetched")]
    KeysUnavailable,
}

/// Remembers the `jti` of every join token used until it expires.
#[derive(Debug, Default)]
pub struct ReplayGuard {
    seen: HashMap<String, u64>,
    next_prune: u64,
}

impl ReplayGuard {
    /// Records `jti` (valid until `exp`, Unix seconds). Returns `false` if it was already used.
    pub fn use_once(&mut self, jti: &str, exp: u64, now: u64) -> bool {
        if now >= self.next_prune {
            self.seen
                .retain(|_, &mut e| e.saturating_add(LEEWAY_SECS) > now);
            self.next_prune = now + 10;
        }
        if self.seen.contains_key(jti) {
            return false;
        }
        self.seen.insert(jti.to_owned(), exp);
        true
    }

    /// Number of remembered tokens.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no token is remembered.
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// Verifies join tokens for one node.
#[derive(Debug)]
pub struct JoinVerifier {
    node_id: String,
    jwks_url: String,
    http: reqwest::Client,
    keys: RwLock<VerifyingKeys>,
    last_fetch: Mutex<Option<Instant>>,
    replay: Mutex<ReplayGuard>,
}

impl JoinVerifier {
    /// A verifier for tokens whose audience is `node_id`, with keys from `jwks_url`.
    pub fn new(node_id: String, jwks_url: String) -> Self {
        Self {
            node_id,
            jwks_url,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            keys: RwLock::new(VerifyingKeys::default()),
            last_fetch: Mutex::new(None),
            replay: Mutex::new(ReplayGuard::default()),
        }
    }

    /// Fetches the JWKS now.
    pub async fn refresh(&self) -> Result<usize, AuthError> {
        *self.last_fetch.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
        let jwks: Jwks = self
            .http
            .get(&self.jwks_url)
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .map_err(|_| AuthError::KeysUnavailable)?
            .json()
            .await
            .map_err(|_| AuthError::KeysUnavailable)?;
        let keys = VerifyingKeys::from_jwks(&jwks);
        let n = keys.len();
        *self.keys.write().unwrap_or_else(|e| e.into_inner()) = keys;
        Ok(n)
    }

    /// Verifies a join token and consumes it.
    pub async fn verify(&self, bearer: &str) -> Result<JoinClaims, AuthError> {
        self.verify_once(bearer).await
    }

    /// Verifies a moderation token and consumes it.
    pub async fn verify_moderation(&self, bearer: &str) -> Result<ModerationClaims, AuthError> {
        self.verify_once(bearer).await
    }

    /// Verifies a single-use token of kind `C` for this node and consumes it.
    async fn verify_once<C: Claims + SingleUse>(&self, bearer: &str) -> Result<C, AuthError> {
        if let Some(kid) = token::peek_kid(bearer)? {
            let known = self
                .keys
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&kid);
            let may_fetch = self
                .last_fetch
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_none_or(|t| t.elapsed() >= REFRESH_MIN_INTERVAL);
            if !known && may_fetch && self.refresh().await.is_err() {
                // The key may be new and the control plane unreachable: not the client's fault.
                return Err(AuthError::KeysUnavailable);
            }
        }
        let now = unix_now();
        let claims: C = self.keys.read().unwrap_or_else(|e| e.into_inner()).verify(
            bearer,
            &self.node_id,
            now,
            LEEWAY_SECS,
        )?;
        let fresh = self
            .replay
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .use_once(claims.jti(), claims.exp(), now);
        if fresh {
            Ok(claims)
        } else {
            Err(AuthError::Replayed)
        }
    }
}

/// A token used at most once: its id and expiry.
trait SingleUse {
    fn jti(&self) -> &str;
    fn exp(&self) -> u64;
}

impl SingleUse for JoinClaims {
    fn jti(&self) -> &str {
        &self.jti
    }
    fn exp(&self) -> u64 {
        self.exp
    }
}

impl SingleUse for ModerationClaims {
    fn jti(&self) -> &str {
        &self.jti
    }
    fn exp(&self) -> u64 {
        self.exp
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_jti_is_accepted_once_and_forgotten_after_expiry() {
        let mut g = ReplayGuard::default();
        assert!(g.use_once("a", 100, 50));
        assert!(!g.use_once("a", 100, 51));
        assert!(g.use_once("b", 100, 51));
        // Long after expiry (plus leeway) the entries are pruned.
        assert!(g.use_once("c", 500, 200));
        assert_eq!(g.len(), 1);
    }
}
