//! `VerifyingKeys::verify` on arbitrary text: never panics and never accepts (nothing here is
//! signed by the key it trusts, except by breaking Ed25519).
//!
//! Input: 8 bytes of `now` (little endian), then the token (lossy UTF-8).
#![no_main]

use libfuzzer_sys::fuzz_target;
use protocol::api::Jwks;
use protocol::token::{AUD_API, AccessClaims, JoinClaims, Signer, VerifyingKeys};
use std::sync::LazyLock;

static KEYS: LazyLock<VerifyingKeys> = LazyLock::new(|| {
    VerifyingKeys::from_jwks(&Jwks {
        keys: vec![Signer::from_seed(&[7; 32]).jwk()],
    })
});

fuzz_target!(|data: &[u8]| {
    let (now, token) = match data.split_first_chunk::<8>() {
        Some((now, rest)) => (u64::from_le_bytes(*now), rest),
        None => (0, data),
    };
    let token = String::from_utf8_lossy(token);
    let join = KEYS.verify::<JoinClaims>(&token, "node-a", now, 60);
    assert!(join.is_err(), "accepted a forged join token: {join:?}");
    let access = KEYS.verify::<AccessClaims>(&token, AUD_API, now, 60);
    assert!(
        access.is_err(),
        "accepted a forged access token: {access:?}"
    );
    let _ = protocol::token::peek_kid(&token);
});
