//! Location tokens verified lately, so that a client sending the same token with every batch
//! (`POST /v1/fixes`: a phone uploads every few seconds for a token's quarter of an hour, or a
//! gateway forwards many phones' batches over one connection) pays for one signature check, not
//! one a batch. An Ed25519 verification and two JSON parses are tens of microseconds; a hit is a
//! SHA-256 of the token's text and a lookup.
//!
//! Sans-IO: time comes in as an argument. Entries are keyed by the SHA-256 of the whole token,
//! so a hit is the very text that was verified (a token with another payload or signature has
//! another digest). A hit still checks the token's time window against `now`, and the caller
//! checks that its key is still published. Two generations bound the memory: when the current
//! one holds `capacity` entries it becomes the previous one (the one before is dropped); a hit
//! in the previous generation moves the entry forward. So at most `2 × capacity` entries, and a
//! token in use survives.

use protocol::location::LocationClaims;
use protocol::token::time_window;
use sha2::{Digest as _, Sha256};
use std::collections::HashMap;

/// The key of a token: the SHA-256 of its text.
pub type Digest = [u8; 32];

/// What was verified of a token.
#[derive(Debug, Clone)]
struct Entry {
    claims: LocationClaims,
    /// The key it was signed with.
    kid: String,
}

/// The cache (see the module).
#[derive(Debug)]
pub struct Verified {
    current: HashMap<Digest, Entry>,
    previous: HashMap<Digest, Entry>,
    capacity: usize,
}

impl Verified {
    /// At most `2 × capacity` tokens (and at least one a generation).
    pub fn new(capacity: usize) -> Self {
        Self {
            current: HashMap::new(),
            previous: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// The key of `token`.
    pub fn digest(token: &str) -> Digest {
        Sha256::digest(token.as_bytes()).into()
    }

    /// The claims of the token with this digest if it was verified and still holds at `now`
    /// (Unix seconds, `leeway` seconds of skew as at verification), with the key id it was
    /// signed with (the caller checks that the key is still published). An entry that no
    /// longer holds is dropped.
    pub fn get(
        &mut self,
        digest: &Digest,
        now: u64,
        leeway: u64,
    ) -> Option<(LocationClaims, &str)> {
        if !self.current.contains_key(digest) {
            let entry = self.previous.remove(digest)?;
            self.insert_entry(*digest, entry);
        }
        let entry = self.current.get(digest)?;
        if time_window(entry.claims.exp, Some(entry.claims.iat), now, leeway).is_err() {
            self.current.remove(digest);
            return None;
        }
        let entry = self.current.get(digest)?;
        Some((entry.claims.clone(), entry.kid.as_str()))
    }

    /// Notes a token verified just now, signed with key `kid`.
    pub fn insert(&mut self, digest: Digest, claims: LocationClaims, kid: String) {
        self.insert_entry(digest, Entry { claims, kid });
    }

    fn insert_entry(&mut self, digest: Digest, entry: Entry) {
        if self.current.len() >= self.capacity && !self.current.contains_key(&digest) {
            self.previous = std::mem::take(&mut self.current);
        }
        self.current.insert(digest, entry);
    }

    /// Forgets a token (its key was withdrawn, say).
    pub fn remove(&mut self, digest: &Digest) {
        self.current.remove(digest);
        self.previous.remove(digest);
    }

    /// Tokens held.
    pub fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::ids::{GroupId, UserId};
    use protocol::location::{Grant, Precision};
    use protocol::token::TokenKind;

    fn claims(user: u128, iat: u64, exp: u64) -> LocationClaims {
        LocationClaims {
            iss: "test".into(),
            sub: UserId(uuid::Uuid::from_u128(user)),
            aud: protocol::token::AUD_LOCATION.into(),
            typ: TokenKind::Location,
            iat,
            exp,
            jti: format!("j{user}"),
            groups: vec![Grant {
                grp: GroupId(uuid::Uuid::from_u128(7)),
                precision: Precision::Exact,
                until: None,
                near_m: 200,
                places: 0,
            }],
            hist: false,
        }
    }

    #[test]
    fn a_hit_is_the_same_text_only() {
        let mut cache = Verified::new(8);
        let token = "header.payload.signature";
        cache.insert(Verified::digest(token), claims(1, 100, 1_000), "k1".into());
        let (got, kid) = cache
            .get(&Verified::digest(token), 500, 30)
            .expect("verified");
        assert_eq!(got, claims(1, 100, 1_000));
        assert_eq!(kid, "k1");
        // One character off (payload or signature): another token, never a hit.
        for other in [
            "header.payload.signaturf",
            "header.paylaod.signature",
            "header.payload.signature.",
        ] {
            assert!(
                cache.get(&Verified::digest(other), 500, 30).is_none(),
                "{other}"
            );
        }
    }

    #[test]
    fn a_hit_holds_only_inside_the_token_s_time_window() {
        let mut cache = Verified::new(8);
        let d = Verified::digest("t");
        cache.insert(d, claims(1, 100, 1_000), "k".into());
        assert!(cache.get(&d, 1_029, 30).is_some(), "inside the leeway");
        assert!(cache.get(&d, 1_030, 30).is_none(), "expired");
        assert!(cache.is_empty(), "an expired entry is dropped");
        cache.insert(d, claims(1, 100, 1_000), "k".into());
        assert!(cache.get(&d, 69, 30).is_none(), "issued in the future");
    }

    #[test]
    fn memory_is_bounded_and_tokens_in_use_survive() {
        let mut cache = Verified::new(100);
        let hot = Verified::digest("hot");
        cache.insert(hot, claims(0, 100, 1_000), "k".into());
        for k in 1..10_000u128 {
            let d = Verified::digest(&format!("token {k}"));
            cache.insert(d, claims(k, 100, 1_000), "k".into());
            assert!(cache.len() <= 200, "{} held", cache.len());
            // The token in use is read now and then: it is never evicted.
            if k % 50 == 0 {
                assert!(cache.get(&hot, 500, 30).is_some(), "evicted at {k}");
            }
        }
        // One read only every 150 inserts: dropped with its generation.
        assert!(cache.get(&Verified::digest("token 1"), 500, 30).is_none());
        cache.remove(&hot);
        assert!(cache.get(&hot, 500, 30).is_none());
    }
}
