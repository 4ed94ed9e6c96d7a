//! Token claims and the compact EdDSA JWT codec (RFC 7519 + RFC 8037) every part shares.
//!
//! The control plane signs with a [`Signer`]; media nodes and location engines verify with
//! [`VerifyingKeys`] built from the control plane's JWKS and never hold a signing secret.
//! Token kinds are told apart by the `typ` claim and by `aud`: a token of one kind is refused where
//! another is expected. Time is an argument (`now`, Unix seconds): this module reads no clock.

use crate::api::{Jwk, Jwks, SessionKind};
use crate::ids::{GroupId, NodeId, SessionId, UserId};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fmt;

/// Longest token accepted by [`VerifyingKeys::verify`]; longer input is refused before decoding.
pub const MAX_TOKEN_LEN: usize = 4096;

/// Audience of access tokens.
pub const AUD_API: &str = "api";
/// Audience of location tokens.
pub const AUD_LOCATION: &str = "location";

/// The kinds of token, carried in the `typ` claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenKind {
    Access,
    Join,
    Location,
    Moderation,
    /// Between a correct password and the second factor (control plane only).
    MfaChallenge,
    /// Marks a device that signed in before (control plane only).
    TrustedDevice,
}

/// Claims every token kind has.
pub trait Claims: Serialize + DeserializeOwned {
    /// The `typ` this claim set must carry.
    const KIND: TokenKind;
}

/// Access token (aud `api`, ~10 min): who is calling the REST API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccessClaims {
    pub iss: String,
    pub sub: UserId,
    pub aud: String,
    pub typ: TokenKind,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
    /// The sign-in session (refresh-token family) it was issued for: what logout and the device
    /// list act on. Absent on tokens minted outside a sign-in (tests, tools).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<uuid::Uuid>,
}

impl Claims for AccessClaims {
    const KIND: TokenKind = TokenKind::Access;
}

/// Join token (aud = the media node id, ≤ 5 min, single use by `jti`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinClaims {
    pub iss: String,
    pub sub: UserId,
    pub aud: NodeId,
    pub typ: TokenKind,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
    /// The session (room) this token joins.
    pub sid: SessionId,
    /// The group the session belongs to.
    pub grp: GroupId,
    pub kind: SessionKind,
    /// May publish audio.
    #[serde(rename = "pub")]
    pub publish: bool,
    /// May receive media.
    pub sub_media: bool,
    /// May control the room's music.
    pub music_ctl: bool,
    /// The room mixes instead of forwarding. Never with `e2ee`: the server cannot mix what it
    /// cannot decrypt (see [`JoinClaims::consistent`]).
    pub mix: bool,
    /// A group admin: may mute, allow to speak and remove others in the room.
    #[serde(rename = "adm", default)]
    pub admin: bool,
    /// The session is end-to-end encrypted: the media node forwards payloads untouched.
    #[serde(default)]
    pub e2ee: bool,
}

impl Claims for JoinClaims {
    const KIND: TokenKind = TokenKind::Join;
}

impl JoinClaims {
    /// Whether the grants agree with each other: an end-to-end encrypted session is never mixed.
    pub fn consistent(&self) -> bool {
        !(self.e2ee && self.mix)
    }
}

/// Moderation token (aud = the media node id, ≤ 1 min): the control plane asks a node to act on
/// a participant of one session on behalf of `sub`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModerationClaims {
    pub iss: String,
    /// The user on whose behalf the control plane acts.
    pub sub: UserId,
    pub aud: NodeId,
    pub typ: TokenKind,
    pub iat: u64,
    pub exp: u64,
    pub jti: String,
    pub sid: SessionId,
}

impl Claims for ModerationClaims {
    const KIND: TokenKind = TokenKind::Moderation;
}

/// Why a token was refused. The messages are safe to show to the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("the token is not a well-formed JWT")]
    Malformed,
    #[error("the token's algorithm is not EdDSA")]
    Algorithm,
    #[error("the token was signed by an unknown key")]
    UnknownKey,
    #[error("the token's signature is invalid")]
    Signature,
    #[error("the token is not of the expected kind")]
    WrongKind,
    #[error("the token is meant for another audience")]
    WrongAudience,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    typ: Option<String>,
    #[serde(default)]
    kid: Option<String>,
}

/// The registered claims every verification checks before the kind-specific ones are parsed.
#[derive(Deserialize)]
struct Registered {
    typ: TokenKind,
    aud: String,
    exp: u64,
    #[serde(default)]
    iat: Option<u64>,
}

/// An Ed25519 signing key with its key id. `Debug` never shows the secret.
#[derive(Clone)]
pub struct Signer {
    kid: String,
    key: SigningKey,
}

impl fmt::Debug for Signer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Signer")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Signer {
    /// A signer for a 32-byte Ed25519 seed. The key id is derived from the public key, so the same
    /// seed always yields the same `kid`.
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let key = SigningKey::from_bytes(seed);
        let pk = key.verifying_key().to_bytes();
        let kid = B64.encode(&pk[..12]);
        Self { kid, key }
    }

    /// The key id placed in every token header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public half as a JWK.
    pub fn jwk(&self) -> Jwk {
        Jwk {
            kid: self.kid.clone(),
            kty: "OKP".into(),
            crv: "Ed25519".into(),
            x: B64.encode(self.key.verifying_key().to_bytes()),
            alg: Some("EdDSA".into()),
            use_: Some("sig".into()),
        }
    }

    /// Signs a claim set into a compact JWT.
    pub fn sign<C: Claims>(&self, claims: &C) -> String {
        let header = Header {
            alg: "EdDSA".into(),
            typ: Some("JWT".into()),
            kid: Some(self.kid.clone()),
        };
        // Serializing these plain structs cannot fail.
        let h = serde_json::to_vec(&header).unwrap_or_default();
        let c = serde_json::to_vec(claims).unwrap_or_default();
        let mut out = String::with_capacity(h.len() * 2 + c.len() * 2 + 90);
        B64.encode_string(&h, &mut out);
        out.push('.');
        B64.encode_string(&c, &mut out);
        let sig = self.key.sign(out.as_bytes());
        out.push('.');
        B64.encode_string(sig.to_bytes(), &mut out);
        out
    }
}

/// Public keys by `kid`, as published in a JWKS.
#[derive(Debug, Clone, Default)]
pub struct VerifyingKeys {
    keys: HashMap<String, VerifyingKey>,
}

impl VerifyingKeys {
    /// Keys from a JWKS; entries that are not Ed25519 OKP keys are skipped.
    pub fn from_jwks(jwks: &Jwks) -> Self {
        let mut keys = HashMap::new();
        for jwk in &jwks.keys {
            if jwk.kty != "OKP" || jwk.crv != "Ed25519" {
                continue;
            }
            let Ok(bytes) = B64.decode(jwk.x.as_bytes()) else {
                continue;
            };
            let Ok(bytes) = <[u8; 32]>::try_from(bytes.as_slice()) else {
                continue;
            };
            if let Ok(vk) = VerifyingKey::from_bytes(&bytes) {
                keys.insert(jwk.kid.clone(), vk);
            }
        }
        Self { keys }
    }

    /// Whether a key with this id is known.
    pub fn contains(&self, kid: &str) -> bool {
        self.keys.contains_key(kid)
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are no keys.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Verifies signature, kind, audience and time window (with `leeway` seconds of clock skew),
    /// then parses the kind-specific claims.
    pub fn verify<C: Claims>(
        &self,
        token: &str,
        audience: &str,
        now: u64,
        leeway: u64,
    ) -> Result<C, TokenError> {
        let parts = split(token)?;
        let kid = parts.header.kid.as_deref().ok_or(TokenError::UnknownKey)?;
        let key = self.keys.get(kid).ok_or(TokenError::UnknownKey)?;
        key.verify(parts.signed.as_bytes(), &parts.signature)
            .map_err(|_| TokenError::Signature)?;
        let reg: Registered =
            serde_json::from_slice(&parts.payload).map_err(|_| TokenError::Malformed)?;
        if reg.typ != C::KIND {
            return Err(TokenError::WrongKind);
        }
        if reg.aud != audience {
            return Err(TokenError::WrongAudience);
        }
        time_window(reg.exp, reg.iat, now, leeway)?;
        serde_json::from_slice(&parts.payload).map_err(|_| TokenError::Malformed)
    }
}

/// Whether a token expiring at `exp` and issued at `iat` (Unix seconds) holds at `now`, with
/// `leeway` seconds of clock skew either way: the time check of [`VerifyingKeys::verify`], for
/// callers that hold claims verified earlier.
pub fn time_window(exp: u64, iat: Option<u64>, now: u64, leeway: u64) -> Result<(), TokenError> {
    if exp.saturating_add(leeway) <= now {
        return Err(TokenError::Expired);
    }
    if iat.is_some_and(|iat| iat > now.saturating_add(leeway)) {
        return Err(TokenError::NotYetValid);
    }
    Ok(())
}

/// The key id a token names, without verifying anything (to decide whether to refresh a JWKS).
pub fn peek_kid(token: &str) -> Result<Option<String>, TokenError> {
    Ok(split(token)?.header.kid)
}

struct Parts<'a> {
    header: Header,
    payload: Vec<u8>,
    signed: &'a str,
    signature: Signature,
}

fn split(token: &str) -> Result<Parts<'_>, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let (signed, sig) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
    let (h, p) = signed.split_once('.').ok_or(TokenError::Malformed)?;
    let header: Header = serde_json::from_slice(&B64.decode(h).map_err(|_| TokenError::Malformed)?)
        .map_err(|_| TokenError::Malformed)?;
    if header.alg != "EdDSA" {
        return Err(TokenError::Algorithm);
    }
    let payload = B64.decode(p).map_err(|_| TokenError::Malformed)?;
    let sig = B64.decode(sig).map_err(|_| TokenError::Malformed)?;
    let sig = <[u8; 64]>::try_from(sig.as_slice()).map_err(|_| TokenError::Malformed)?;
    Ok(Parts {
        header,
        payload,
        signed,
        signature: Signature::from_bytes(&sig),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn join(aud: &str, exp: u64) -> JoinClaims {
        JoinClaims {
            iss: "convoy".into(),
            sub: UserId::from_uuid(Uuid::from_u128(1)),
            aud: NodeId::new(aud).unwrap(),
            typ: TokenKind::Join,
            iat: 1_000,
            exp,
            jti: "j1".into(),
            sid: SessionId::from_uuid(Uuid::from_u128(2)),
            grp: GroupId::from_uuid(Uuid::from_u128(3)),
            kind: SessionKind::Audio,
            publish: true,
            sub_media: true,
            music_ctl: false,
            mix: false,
            admin: false,
            e2ee: false,
        }
    }

    fn keys(signer: &Signer) -> VerifyingKeys {
        VerifyingKeys::from_jwks(&Jwks {
            keys: vec![signer.jwk()],
        })
    }

    #[test]
    fn a_signed_join_token_verifies_for_its_node_only() {
        let s = Signer::from_seed(&[7; 32]);
        let t = s.sign(&join("node-a", 2_000));
        let k = keys(&s);
        let c: JoinClaims = k.verify(&t, "node-a", 1_500, 0).unwrap();
        assert_eq!(c, join("node-a", 2_000));
        assert_eq!(
            k.verify::<JoinClaims>(&t, "node-b", 1_500, 0),
            Err(TokenError::WrongAudience)
        );
        assert_eq!(
            k.verify::<JoinClaims>(&t, "node-a", 2_000, 0),
            Err(TokenError::Expired)
        );
        assert_eq!(
            k.verify::<AccessClaims>(&t, "node-a", 1_500, 0),
            Err(TokenError::WrongKind)
        );
        assert_eq!(
            k.verify::<JoinClaims>(&t, "node-a", 900 - 61, 60),
            Err(TokenError::NotYetValid)
        );
    }

    #[test]
    fn the_e2ee_claim_defaults_to_off_and_never_goes_with_mix() {
        let s = Signer::from_seed(&[7; 32]);
        let k = keys(&s);
        let e2ee = JoinClaims {
            e2ee: true,
            ..join("node-a", 2_000)
        };
        let c: JoinClaims = k.verify(&s.sign(&e2ee), "node-a", 1_500, 0).unwrap();
        assert!(c.e2ee && c.consistent());
        // A token minted before the claim existed.
        let mut old = serde_json::to_value(join("node-a", 2_000)).unwrap();
        old.as_object_mut().unwrap().remove("e2ee");
        let old: JoinClaims = serde_json::from_value(old).unwrap();
        assert!(!old.e2ee);
        let mixed = JoinClaims { mix: true, ..e2ee };
        assert!(!mixed.consistent());
        assert!(
            JoinClaims {
                e2ee: false,
                ..mixed
            }
            .consistent()
        );
    }

    #[test]
    fn tampering_and_foreign_keys_are_refused() {
        let s = Signer::from_seed(&[7; 32]);
        let other = Signer::from_seed(&[8; 32]);
        let t = s.sign(&join("node-a", 2_000));
        let forged = other.sign(&join("node-a", 2_000));
        let k = keys(&s);
        assert_eq!(
            k.verify::<JoinClaims>(&forged, "node-a", 1_500, 0),
            Err(TokenError::UnknownKey)
        );
        // Same kid, other key: the signature check catches it.
        let mut jwks = Jwks {
            keys: vec![other.jwk()],
        };
        jwks.keys[0].kid = s.kid().to_string();
        let swapped = VerifyingKeys::from_jwks(&jwks);
        assert_eq!(
            swapped.verify::<JoinClaims>(&t, "node-a", 1_500, 0),
            Err(TokenError::Signature)
        );
        // Flip one byte of the payload.
        let mut bytes = t.clone().into_bytes();
        let dot = t.find('.').unwrap();
        bytes[dot + 3] = if bytes[dot + 3] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert!(
            k.verify::<JoinClaims>(&tampered, "node-a", 1_500, 0)
                .is_err()
        );
    }

    #[test]
    fn garbage_is_malformed_not_a_panic() {
        let k = keys(&Signer::from_seed(&[1; 32]));
        for bad in [
            "",
            ".",
            "..",
            "a.b.c",
            "x".repeat(MAX_TOKEN_LEN + 1).as_str(),
            "é.é.é",
        ] {
            assert!(k.verify::<JoinClaims>(bad, "n", 0, 0).is_err(), "{bad:?}");
        }
        let none_alg = format!(
            "{}.{}.",
            B64.encode(br#"{"alg":"none"}"#),
            B64.encode(b"{}")
        );
        assert_eq!(
            k.verify::<JoinClaims>(&none_alg, "n", 0, 0),
            Err(TokenError::Algorithm)
        );
    }

    #[test]
    fn random_bytes_never_panic() {
        use rand::{Rng, SeedableRng};
        let k = keys(&Signer::from_seed(&[1; 32]));
        let mut rng = rand::rngs::StdRng::seed_from_u64(42);
        for _ in 0..2000 {
            let len = rng.gen_range(0..200);
            let s: String = (0..len)
                .map(|_| *b"ab.c-_=+/eyJ0{}\"".get(rng.gen_range(0..16)).unwrap() as char)
                .collect();
            let _ = k.verify::<JoinClaims>(&s, "n", 0, 0);
        }
    }
}
