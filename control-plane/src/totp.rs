//! Time-based one-time passwords (RFC 6238 over RFC 4226's HOTP: HMAC-SHA-1, 6 digits, 30 s
//! steps, as every authenticator app expects) and recovery codes.
//!
//! Time is an argument (Unix seconds). A code is accepted for the current step and one step on
//! either side (clock drift), and only for a step later than the last one accepted, so each code
//! works once (ASVS 6.5.1); the caller stores the step that [`matching_step`] returns.

use hmac::{Hmac, Mac as _};
use rand::RngCore as _;
use sha1::Sha1;
use sha2::{Digest as _, Sha256};

/// Seconds per step.
pub(crate) const STEP_SECS: u64 = 30;
/// Bytes of a new secret (160 bits, RFC 4226's recommendation).
pub(crate) const SECRET_LEN: usize = 20;
/// Recovery codes per set.
pub(crate) const RECOVERY_CODES: usize = 10;
/// Steps accepted on either side of the current one.
const DRIFT_STEPS: u64 = 1;
const DIGITS: u32 = 6;
/// Base32 characters in a recovery code (16 × 5 = 80 bits).
const RECOVERY_LEN: usize = 16;
const BASE32: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";

/// A new random secret.
pub(crate) fn new_secret() -> [u8; SECRET_LEN] {
    let mut secret = [0u8; SECRET_LEN];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    secret
}

/// The step `now` falls in.
pub(crate) fn step_of(now_secs: u64) -> u64 {
    now_secs / STEP_SECS
}

/// The 6-digit HOTP value of `secret` at counter `step`.
pub(crate) fn code_at(secret: &[u8], step: u64) -> u32 {
    let Ok(mut mac) = Hmac::<Sha1>::new_from_slice(secret) else {
        // HMAC takes keys of any length.
        return u32::MAX;
    };
    mac.update(&step.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let offset = usize::from(digest[19] & 0x0f);
    let binary = u32::from_be_bytes([
        digest[offset] & 0x7f,
        digest[offset + 1],
        digest[offset + 2],
        digest[offset + 3],
    ]);
    binary % 10u32.pow(DIGITS)
}

/// The shape of a TOTP code: six ASCII digits, spaces ignored (`123 456`).
pub(crate) fn parse_code(input: &str) -> Option<u32> {
    let digits: String = input.chars().filter(|c| *c != ' ').collect();
    if digits.len() != DIGITS as usize || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The step whose code `code` is, within the drift window around `now`, if that step is later
/// than `after` (the last step accepted). Every candidate step is computed and compared, so the
/// time taken does not depend on which one matched.
pub(crate) fn matching_step(
    secret: &[u8],
    code: u32,
    now_secs: u64,
    after: Option<u64>,
) -> Option<u64> {
    let now = step_of(now_secs);
    let mut found = None;
    for step in now.saturating_sub(DRIFT_STEPS)..=now + DRIFT_STEPS {
        let equal = code_at(secret, step) == code;
        if equal && after.is_none_or(|last| step > last) && found.is_none() {
            found = Some(step);
        }
    }
    found
}

/// RFC 4648 base32 without padding, as authenticator apps take secrets.
pub(crate) fn base32(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(5) * 8);
    let (mut buffer, mut bits) = (0u32, 0u32);
    for &byte in bytes {
        buffer = (buffer << 8) | u32::from(byte);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            out.push(char::from(BASE32[((buffer >> bits) & 31) as usize]));
        }
    }
    if bits > 0 {
        out.push(char::from(BASE32[((buffer << (5 - bits)) & 31) as usize]));
    }
    out
}

/// The `otpauth://` URI apps read from a QR code (Google Authenticator's key URI format).
pub(crate) fn otpauth_uri(issuer: &str, account: &str, secret: &[u8]) -> String {
    let issuer = percent_encode(issuer);
    format!(
        "otpauth://totp/{issuer}:{}?secret={}&issuer={issuer}&algorithm=SHA1&digits={DIGITS}&period={STEP_SECS}",
        percent_encode(account),
        base32(secret),
    )
}

/// Everything but RFC 3986 unreserved characters, percent-encoded.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || b"-._~".contains(&byte) {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// A new set of recovery codes as shown to the user (`abcd-efgh-ijkl-mnop`, 80 random bits).
pub(crate) fn new_recovery_codes() -> Vec<String> {
    (0..RECOVERY_CODES)
        .map(|_| {
            let mut bytes = [0u8; RECOVERY_LEN * 5 / 8];
            rand::rngs::OsRng.fill_bytes(&mut bytes);
            let plain = base32(&bytes).to_ascii_lowercase();
            plain
                .as_bytes()
                .chunks(4)
                .map(|c| std::str::from_utf8(c).unwrap_or_default())
                .collect::<Vec<_>>()
                .join("-")
        })
        .collect()
}

/// The stored form of a recovery code as typed (dashes, spaces and case ignored), or `None`
/// when it cannot be one. Codes carry 80 random bits, so SHA-256 is enough to store them.
pub(crate) fn recovery_code_hash(input: &str) -> Option<String> {
    let plain: String = input
        .chars()
        .filter(|c| *c != '-' && *c != ' ')
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if plain.len() != RECOVERY_LEN || !plain.bytes().all(|b| BASE32.contains(&b)) {
        return None;
    }
    Some(
        Sha256::digest(plain.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 Appendix B, SHA-1 rows (the last 6 of the 8 digits).
    #[test]
    fn the_rfc_6238_vectors_hold() {
        let secret = b"12345678901234567890";
        for (time, code) in [
            (59, 287_082),
            (1_111_111_109, 81_804),
            (1_111_111_111, 50_471),
            (1_234_567_890, 5_924),
            (2_000_000_000, 279_037),
            (20_000_000_000, 353_130),
        ] {
            assert_eq!(code_at(secret, step_of(time)), code, "t = {time}");
        }
    }

    #[test]
    fn a_code_matches_within_one_step_of_drift_and_only_after_the_last_used_step() {
        let secret = b"12345678901234567890";
        let now = 1_111_111_111;
        let step = step_of(now);
        let code = code_at(secret, step);
        assert_eq!(matching_step(secret, code, now, None), Some(step));
        // The previous and next step's codes are accepted too.
        let before = code_at(secret, step - 1);
        assert_eq!(matching_step(secret, before, now, None), Some(step - 1));
        let after = code_at(secret, step + 1);
        assert_eq!(matching_step(secret, after, now, None), Some(step + 1));
        // Two steps away is not.
        let far = code_at(secret, step - 2);
        assert_eq!(matching_step(secret, far, now, None), None);
        // Once a step is used, neither it nor an earlier one works again.
        assert_eq!(matching_step(secret, code, now, Some(step)), None);
        assert_eq!(matching_step(secret, before, now, Some(step)), None);
        assert_eq!(
            matching_step(secret, after, now, Some(step)),
            Some(step + 1)
        );
    }

    #[test]
    fn codes_are_six_digits_spaces_allowed() {
        assert_eq!(parse_code("012345"), Some(12_345));
        assert_eq!(parse_code("012 345"), Some(12_345));
        for bad in ["", "12345", "1234567", "12a456", "１２３４５６", "-12345"] {
            assert_eq!(parse_code(bad), None, "{bad:?}");
        }
    }

    /// RFC 4648 §10.
    #[test]
    fn base32_matches_rfc_4648() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "MY"),
            ("fo", "MZXQ"),
            ("foo", "MZXW6"),
            ("foob", "MZXW6YQ"),
            ("fooba", "MZXW6YTB"),
            ("foobar", "MZXW6YTBOI"),
        ] {
            assert_eq!(base32(plain.as_bytes()), encoded);
        }
    }

    #[test]
    fn the_otpauth_uri_names_issuer_account_and_parameters() {
        let uri = otpauth_uri("Convoy", "ann@example.org", b"12345678901234567890");
        assert_eq!(
            uri,
            "otpauth://totp/Convoy:ann%40example.org?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ\
             &issuer=Convoy&algorithm=SHA1&digits=6&period=30"
        );
    }

    #[test]
    fn recovery_codes_are_distinct_and_hash_the_same_however_typed() {
        let codes = new_recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        let distinct: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(distinct.len(), RECOVERY_CODES);
        let code = &codes[0];
        assert_eq!(code.len(), 19, "{code}");
        let hash = recovery_code_hash(code).unwrap();
        assert_eq!(
            recovery_code_hash(&code.replace('-', " ").to_uppercase()),
            Some(hash.clone())
        );
        assert_ne!(recovery_code_hash(&codes[1]), Some(hash));
        for bad in [
            "",
            "123456",
            "abcd-efgh-ijkl-mno",
            "abcd-efgh-ijkl-mnop1",
            "abcd-efgh-ijkl-mn0p",
        ] {
            assert_eq!(recovery_code_hash(bad), None, "{bad:?}");
        }
    }
}
