//! Minting and checking the tokens the control plane issues (DESIGN.md §3).
//!
//! - access tokens: EdDSA JWTs, aud `api`, [`ACCESS_TTL_SECS`];
//! - join tokens: EdDSA JWTs for one media node (aud = node id), [`JOIN_TTL_SECS`];
//! - refresh tokens: 32 random bytes, handed out once, stored only as their SHA-256;
//! - MFA challenge tokens (aud `login`, 5 min): the password was right, the second factor is due;
//! - trusted-device tokens (aud `login`, 180 days): a device that signed in before.
//!
//! Time is an argument (Unix seconds); this module reads no clock.

use crate::keyring::Ring;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use protocol::api::{Jwks, SessionKind};
use protocol::ids::{GroupId, NodeId, SessionId, UserId};
use protocol::token::{
    AUD_API, AccessClaims, Claims, JoinClaims, ModerationClaims, Signer, TokenError, TokenKind,
    VerifyingKeys,
};
use rand::RngCore as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

impl Current {
    fn of(ring: Ring) -> Self {
        Self {
            keys: VerifyingKeys::from_jwks(&ring.jwks),
            signer: ring.signer,
            jwks: ring.jwks,
            verified: Mutex::default(),
        }
    }
}

/// Access tokens held in the verified-token cache at most; when full, the expired go, and if
/// none has expired the whole cache is dropped (verification still answers, just slower).
const VERIFIED_CAPACITY: usize = 16_384;

/// Lifetime of an access token.
pub(crate) const ACCESS_TTL_SECS: u64 = 600;
/// Lifetime of a join token.
pub(crate) const JOIN_TTL_SECS: u64 = 120;
/// Lifetime of a refresh token (each refresh issues one with a new lifetime).
pub(crate) const REFRESH_TTL_SECS: u64 = 30 * 24 * 3600;
/// How long after a refresh token is spent presenting it again counts as a retry (the answer was
/// lost) rather than theft.
pub(crate) const REFRESH_REUSE_GRACE_SECS: u64 = 10;
/// Clock skew tolerated when verifying.
pub(crate) const LEEWAY_SECS: u64 = 30;

/// `count` random bytes from the OS, base64url without padding.
pub(crate) fn random_b64(count: usize) -> String {
    let mut bytes = vec![0u8; count];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    B64.encode(bytes)
}

/// Why an access token was refused; the message is safe to show the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("the token was issued by another issuer")]
    Issuer,
}

/// What a join token grants, besides the session it names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct JoinGrant {
    pub user: UserId,
    pub node: NodeId,
    pub session: SessionId,
    pub group: GroupId,
    pub kind: SessionKind,
    pub music_ctl: bool,
    /// A group admin: may moderate the room.
    pub admin: bool,
    /// The session is end-to-end encrypted.
    pub e2ee: bool,
}

/// The control plane's key ring (the signing key and the published public keys, replaced
/// whole when keys rotate, see `keyring`) and its issuer name.
#[derive(Debug)]
pub(crate) struct Tokens {
    current: RwLock<Arc<Current>>,
    issuer: String,
}

#[derive(Debug)]
struct Current {
    signer: Signer,
    keys: VerifyingKeys,
    jwks: Jwks,
    /// Access tokens whose signature, kind, audience and issuer were checked with `keys`, by
    /// their exact text. A client presents the same token on every request for its lifetime and
    /// an Ed25519 verification costs tens of microseconds (a fifth of a core at 2,000 sends a
    /// second). Only the time window is checked again; a new key ring starts an empty cache.
    verified: Mutex<HashMap<Box<str>, AccessClaims>>,
}

impl Tokens {
    /// Tokens signed by `signer` alone.
    #[cfg(test)]
    pub(crate) fn new(signer: Signer, issuer: String) -> Self {
        let jwks = Jwks {
            keys: vec![signer.jwk()],
        };
        Self::with_ring(Ring { signer, jwks }, issuer)
    }

    pub(crate) fn with_ring(ring: Ring, issuer: String) -> Self {
        Self {
            current: RwLock::new(Arc::new(Current::of(ring))),
            issuer,
        }
    }

    /// Replaces the signing key and the published keys at once.
    pub(crate) fn install(&self, ring: Ring) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(Current::of(ring));
    }

    fn current(&self) -> Arc<Current> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The key that signs now.
    pub(crate) fn signer(&self) -> Signer {
        self.current().signer.clone()
    }

    /// The keys published now.
    pub(crate) fn jwks(&self) -> Jwks {
        self.current().jwks.clone()
    }

    /// A fresh access token for `user`, in sign-in session `session`.
    pub(crate) fn access(&self, user: UserId, session: Option<uuid::Uuid>, now: u64) -> String {
        self.current().signer.sign(&AccessClaims {
            iss: self.issuer.clone(),
            sub: user,
            aud: AUD_API.into(),
            typ: TokenKind::Access,
            iat: now,
            exp: now + ACCESS_TTL_SECS,
            jti: random_b64(16),
            sid: session,
        })
    }

    /// Checks an access token: signature, kind, audience, time window, issuer.
    pub(crate) fn verify_access(&self, token: &str, now: u64) -> Result<AccessClaims, Refused> {
        let current = self.current();
        let cached = current
            .verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(token)
            .cloned();
        if let Some(claims) = cached {
            protocol::token::time_window(claims.exp, Some(claims.iat), now, LEEWAY_SECS)?;
            return Ok(claims);
        }
        let claims: AccessClaims = current.keys.verify(token, AUD_API, now, LEEWAY_SECS)?;
        if claims.iss != self.issuer {
            return Err(Refused::Issuer);
        }
        let mut verified = current
            .verified
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if verified.len() >= VERIFIED_CAPACITY {
            verified.retain(|_, c| c.exp.saturating_add(LEEWAY_SECS) > now);
            if verified.len() >= VERIFIED_CAPACITY {
                verified.clear();
            }
        }
        verified.insert(token.into(), claims.clone());
        Ok(claims)
    }

    /// A join token for one node, single use by its random `jti`.
    pub(crate) fn join(&self, grant: JoinGrant, now: u64) -> String {
        self.current().signer.sign(&JoinClaims {
            iss: self.issuer.clone(),
            sub: grant.user,
            aud: grant.node,
            typ: TokenKind::Join,
            iat: now,
            exp: now + JOIN_TTL_SECS,
            jti: random_b64(16),
            sid: grant.session,
            grp: grant.group,
            kind: grant.kind,
            publish: true,
            sub_media: true,
            music_ctl: grant.music_ctl,
            // No session is mixed yet; an end-to-end encrypted one never may be.
            mix: false,
            admin: grant.admin,
            e2ee: grant.e2ee,
        })
    }
}

impl Tokens {
    /// A location token for `user` sharing with `groups`, valid until `exp` (Unix seconds);
    /// `hist`: the user keeps a location history.
    pub(crate) fn location(
        &self,
        user: UserId,
        groups: Vec<protocol::location::Grant>,
        hist: bool,
        now: u64,
        exp: u64,
    ) -> String {
        self.current()
            .signer
            .sign(&protocol::location::LocationClaims {
                iss: self.issuer.clone(),
                sub: user,
                aud: protocol::token::AUD_LOCATION.into(),
                typ: TokenKind::Location,
                iat: now,
                exp,
                jti: random_b64(16),
                groups,
                hist,
            })
    }

    /// Checks a location token (what a location engine presents to fetch a group's places):
    /// signature, kind, audience, time window, issuer.
    pub(crate) fn verify_location(
        &self,
        token: &str,
        now: u64,
    ) -> Result<protocol::location::LocationClaims, Refused> {
        let claims: protocol::location::LocationClaims =
            self.current()
                .keys
                .verify(token, protocol::token::AUD_LOCATION, now, LEEWAY_SECS)?;
        if claims.iss != self.issuer {
            return Err(Refused::Issuer);
        }
        Ok(claims)
    }

    /// A moderation token for `node`: act on a participant of `session` for `user` (60 s).
    pub(crate) fn moderation(
        &self,
        user: UserId,
        node: NodeId,
        session: SessionId,
        now: u64,
    ) -> String {
        self.current().signer.sign(&ModerationClaims {
            iss: self.issuer.clone(),
            sub: user,
            aud: node,
            typ: TokenKind::Moderation,
            iat: now,
            exp: now + MODERATION_TTL_SECS,
            jti: random_b64(16),
            sid: session,
        })
    }
}

/// Audience of the tokens only the control plane's login reads.
const AUD_LOGIN: &str = "login";
/// Lifetime of the token between a correct password and the second factor.
pub(crate) const MFA_CHALLENGE_TTL_SECS: u64 = 300;
/// Lifetime of a trusted-device token (renewed at every sign-in on the device).
pub(crate) const TRUSTED_DEVICE_TTL_SECS: u64 = 180 * 24 * 3600;

/// The token between a correct password and the second factor: who passed the first step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct MfaChallengeClaims {
    pub iss: String,
    pub sub: UserId,
    pub aud: String,
    pub typ: TokenKind,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
}

impl Claims for MfaChallengeClaims {
    const KIND: TokenKind = TokenKind::MfaChallenge;
}

/// A device that signed in to `sub` before: its attempts get their own budget (`jti`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct TrustedDeviceClaims {
    pub iss: String,
    pub sub: UserId,
    pub aud: String,
    pub typ: TokenKind,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
}

impl Claims for TrustedDeviceClaims {
    const KIND: TokenKind = TokenKind::TrustedDevice;
}

impl Tokens {
    /// The token for the second sign-in step of `user`.
    pub(crate) fn mfa_challenge(&self, user: UserId, now: u64) -> String {
        self.current().signer.sign(&MfaChallengeClaims {
            iss: self.issuer.clone(),
            sub: user,
            aud: AUD_LOGIN.into(),
            typ: TokenKind::MfaChallenge,
            iat: now,
            exp: now + MFA_CHALLENGE_TTL_SECS,
            jti: random_b64(16),
        })
    }

    /// The user a second-step token was issued to.
    pub(crate) fn verify_mfa_challenge(&self, token: &str, now: u64) -> Result<UserId, Refused> {
        let claims: MfaChallengeClaims =
            self.current()
                .keys
                .verify(token, AUD_LOGIN, now, LEEWAY_SECS)?;
        if claims.iss != self.issuer {
            return Err(Refused::Issuer);
        }
        Ok(claims.sub)
    }

    /// A trusted-device token for `user`.
    pub(crate) fn trusted_device(&self, user: UserId, now: u64) -> String {
        self.current().signer.sign(&TrustedDeviceClaims {
            iss: self.issuer.clone(),
            sub: user,
            aud: AUD_LOGIN.into(),
            typ: TokenKind::TrustedDevice,
            iat: now,
            exp: now + TRUSTED_DEVICE_TTL_SECS,
            jti: random_b64(16),
        })
    }

    /// The device id (`jti`) of a trusted-device token, if it is valid and for `user`.
    pub(crate) fn trusted_device_of(&self, token: &str, user: UserId, now: u64) -> Option<String> {
        let claims: TrustedDeviceClaims =
            self.current().keys.verify(token, AUD_LOGIN, now, 0).ok()?;
        (claims.iss == self.issuer && claims.sub == user).then_some(claims.jti)
    }
}

/// Lifetime of a moderation token: it is used at once.
const MODERATION_TTL_SECS: u64 = 60;

/// A new refresh token: the secret for the caller and the hash to store.
pub(crate) struct RefreshToken {
    pub secret: String,
    pub hash: String,
}

impl RefreshToken {
    pub(crate) fn generate() -> Self {
        let secret = random_b64(32);
        let hash = Self::hash_of(&secret);
        Self { secret, hash }
    }

    /// Hex SHA-256 of a refresh token, as stored.
    pub(crate) fn hash_of(secret: &str) -> String {
        Sha256::digest(secret.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

impl fmt::Debug for RefreshToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshToken")
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn tokens() -> Tokens {
        Tokens::new(Signer::from_seed(&[9; 32]), "convoy-test".into())
    }

    #[test]
    fn access_tokens_verify_until_they_expire_with_leeway() {
        let t = tokens();
        let user = UserId::from_uuid(Uuid::now_v7());
        let token = t.access(user, None, 1_000);
        assert_eq!(t.verify_access(&token, 1_000).unwrap().sub, user);
        assert!(
            t.verify_access(&token, 1_000 + ACCESS_TTL_SECS + LEEWAY_SECS - 1)
                .is_ok()
        );
        assert_eq!(
            t.verify_access(&token, 1_000 + ACCESS_TTL_SECS + LEEWAY_SECS),
            Err(Refused::Token(TokenError::Expired))
        );
    }

    #[test]
    fn another_issuer_or_a_join_token_is_refused_as_access() {
        let t = tokens();
        let user = UserId::from_uuid(Uuid::now_v7());
        let foreign = Tokens::new(Signer::from_seed(&[9; 32]), "elsewhere".into());
        assert_eq!(
            t.verify_access(&foreign.access(user, None, 1_000), 1_000),
            Err(Refused::Issuer)
        );
        let join = t.join(
            JoinGrant {
                user,
                node: NodeId::new("n1").unwrap(),
                session: SessionId::from_uuid(Uuid::now_v7()),
                group: GroupId::from_uuid(Uuid::now_v7()),
                kind: SessionKind::Audio,
                music_ctl: false,
                admin: false,
                e2ee: false,
            },
            1_000,
        );
        assert!(t.verify_access(&join, 1_000).is_err());
    }

    #[test]
    fn a_verified_token_is_still_checked_for_time_tampering_and_its_key() {
        let t = tokens();
        let user = UserId::from_uuid(Uuid::now_v7());
        let token = t.access(user, None, 1_000);
        assert!(t.verify_access(&token, 1_000).is_ok());
        // From the cache now: the time window still holds at both ends.
        assert!(t.verify_access(&token, 1_001).is_ok());
        assert_eq!(
            t.verify_access(&token, 1_000 - LEEWAY_SECS - 1),
            Err(Refused::Token(TokenError::NotYetValid))
        );
        // Any other text is verified afresh: a flipped signature character is refused.
        let at = token.len() - 10;
        let c = &token[at..=at];
        let flipped = format!(
            "{}{}{}",
            &token[..at],
            if c == "A" { "B" } else { "A" },
            &token[at + 1..]
        );
        assert_eq!(
            t.verify_access(&flipped, 1_001),
            Err(Refused::Token(TokenError::Signature))
        );
        // A key ring without the token's key refuses it, cached or not.
        let other = Signer::from_seed(&[7; 32]);
        let jwks = Jwks {
            keys: vec![other.jwk()],
        };
        t.install(Ring {
            signer: other,
            jwks,
        });
        assert_eq!(
            t.verify_access(&token, 1_001),
            Err(Refused::Token(TokenError::UnknownKey))
        );
    }

    #[test]
    fn the_verified_cache_stays_bounded() {
        let t = tokens();
        let user = UserId::from_uuid(Uuid::now_v7());
        for i in 0..VERIFIED_CAPACITY as u64 + 10 {
            let token = t.access(user, None, 1_000 + i / 1_000);
            assert!(t.verify_access(&token, 1_000 + i / 1_000).is_ok());
        }
        let held = t.current().verified.lock().unwrap().len();
        assert!(held <= VERIFIED_CAPACITY, "{held}");
        assert!(held > 0);
    }

    #[test]
    fn login_tokens_are_not_access_tokens_and_are_bound_to_their_user() {
        let t = tokens();
        let ann = UserId::from_uuid(Uuid::now_v7());
        let bob = UserId::from_uuid(Uuid::now_v7());
        let challenge = t.mfa_challenge(ann, 1_000);
        assert_eq!(t.verify_mfa_challenge(&challenge, 1_000), Ok(ann));
        assert!(t.verify_access(&challenge, 1_000).is_err());
        assert!(
            t.verify_mfa_challenge(&challenge, 1_000 + MFA_CHALLENGE_TTL_SECS + LEEWAY_SECS)
                .is_err()
        );
        let device = t.trusted_device(ann, 1_000);
        assert!(t.trusted_device_of(&device, ann, 1_000).is_some());
        assert_eq!(t.trusted_device_of(&device, bob, 1_000), None);
        assert_eq!(t.trusted_device_of(&challenge, ann, 1_000), None);
        assert!(t.verify_mfa_challenge(&device, 1_000).is_err());
        assert!(t.verify_access(&device, 1_000).is_err());
        let access = t.access(ann, None, 1_000);
        assert!(t.verify_mfa_challenge(&access, 1_000).is_err());
        assert_eq!(t.trusted_device_of(&access, ann, 1_000), None);
    }

    #[test]
    fn refresh_tokens_are_random_and_stored_hashed() {
        let a = RefreshToken::generate();
        let b = RefreshToken::generate();
        assert_ne!(a.secret, b.secret);
        assert_eq!(B64.decode(&a.secret).unwrap().len(), 32);
        assert_eq!(a.hash, RefreshToken::hash_of(&a.secret));
        assert_eq!(a.hash.len(), 64);
        assert!(!format!("{a:?}").contains(&a.secret));
        assert_eq!(
            RefreshToken::hash_of("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
